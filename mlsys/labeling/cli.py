"""`mlsys label …`: score label models on a labeled benchmark from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Weak labeling: label models and their evaluation.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Weak labeling: label models and their evaluation."""


@app.command("evaluate")
def evaluate(
    wrench: Annotated[
        Path,
        typer.Option(
            "--wrench",
            help="A WRENCH dataset folder holding train.json, valid.json and test.json.",
        ),
    ],
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print exactly one JSON object instead of a table."),
    ] = False,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the label model and end model fits.")
    ] = 123,
    end_model: Annotated[
        bool,
        typer.Option(
            "--end-model",
            help="Also train the pipeline's text classifier on the label model's labels of "
            "train (chosen on valid from a 12-point grid) and score it on test.",
        ),
    ] = False,
) -> None:
    """Fit the label model on train (tuned on valid) and print test accuracy and F1 of the
    label model and of majority vote (and of the end model with --end-model)."""
    from mlsys.labeling.wrench import evaluate_wrench  # Snorkel and torch: only when used

    try:
        report = evaluate_wrench(wrench, seed=seed, end_model=end_model)
    except (OSError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    typer.echo(f"WRENCH {wrench}: test split")
    typer.echo(f"{'model':<15}{'accuracy':>10}{'f1':>10}")
    for name, scores in report.items():
        typer.echo(f"{name:<15}{scores['accuracy']:>10.3f}{scores['f1']:>10.3f}")
