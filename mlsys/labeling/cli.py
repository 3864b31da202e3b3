"""`mlsys label …`: score label models on a labeled benchmark from the shell."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Weak labeling: label models and their evaluation.", no_args_is_help=True)

METRIC_NAMES = ("accuracy", "f1", "macro_f1")  # mlsys.training.evaluate.METRICS, without torch


@app.callback()
def _group() -> None:
    """Weak labeling: label models and their evaluation."""


@app.command("evaluate")
def evaluate(
    wrench: Annotated[
        Path,
        typer.Option(
            "--wrench",
            help="A WRENCH dataset folder holding train.json, valid.json and test.json "
            "(and label.json naming the classes).",
        ),
    ],
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="What every choice on valid maximizes: accuracy, f1 (the positive class 1's "
            "F1 for two classes, macro F1 for more) or macro_f1.",
        ),
    ] = "accuracy",
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print exactly one JSON object on stdout instead of a table."),
    ] = False,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the fits and of the cross-validation folds.")
    ] = 123,
    end_model: Annotated[
        bool,
        typer.Option(
            "--end-model",
            help="Also train the pipeline's text classifier on the chosen labeler's class "
            "probabilities of train (chosen on valid) and score it on test.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines on stderr.")] = False,
) -> None:
    """Choose the labeler on valid (majority vote, weighted votes, Snorkel LabelModels fitted
    on train; cross-validated over valid) and print test accuracy, F1 and macro F1 of the
    chosen labeler and of majority vote (and of the end model with --end-model). Valid only
    chooses, test only reports; progress goes to stderr."""
    if metric not in METRIC_NAMES:
        typer.secho(
            f"error: unknown metric {metric!r}; choose one of {', '.join(METRIC_NAMES)}",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    from mlsys.labeling.wrench import evaluate_wrench  # Snorkel and torch: only when used

    started = time.perf_counter()

    def progress(line: str) -> None:
        if not quiet:
            typer.echo(f"[{time.perf_counter() - started:7.1f} s] {line}", err=True)

    try:
        report = evaluate_wrench(
            wrench, metric=metric, seed=seed, end_model=end_model, progress=progress
        )
    except (OSError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    typer.echo(f"WRENCH {wrench}: test split (choices made on valid by {metric})")
    typer.echo(f"{'model':<15}{'accuracy':>10}{'f1':>10}{'macro_f1':>10}  chosen")
    for name, scores in report.items():
        if not isinstance(scores, dict):
            continue
        chosen = ", ".join(f"{k}={v}" for k, v in scores.get("config", {}).items())
        typer.echo(
            f"{name:<15}{scores['accuracy']:>10.3f}{scores['f1']:>10.3f}"
            f"{scores['macro_f1']:>10.3f}  {chosen}"
        )
