"""`mlsys label …`: check a dataset's labeling functions and score label models from the shell."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from mlsys.data.definition import DEFAULT_LF_SET

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
    lfs: Annotated[
        Path | None,
        typer.Option(
            "--lfs",
            help="A Python file defining LF_SETS (as a dataset's LF module does) whose set "
            "--lf-set holds the folder's LFs in the order of its weak labels: each split's "
            "votes are checked against what the LFs vote on its rows.",
        ),
    ] = None,
    lf_set: Annotated[
        str, typer.Option("--lf-set", help="The set of the --lfs file to check with.")
    ] = DEFAULT_LF_SET,
    revote: Annotated[
        bool,
        typer.Option(
            "--revote",
            help="With --lfs: choose and score on the LFs' own votes instead of the files'.",
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
    if revote and lfs is None:
        typer.secho("error: --revote needs --lfs", fg="red", err=True)
        raise typer.Exit(2)
    # Snorkel and torch: only when used.
    from mlsys.labeling.wrench import evaluate_wrench, load_lf_file

    started = time.perf_counter()

    def progress(line: str) -> None:
        if not quiet:
            typer.echo(f"[{time.perf_counter() - started:7.1f} s] {line}", err=True)

    try:
        functions = None if lfs is None else load_lf_file(lfs, lf_set)
        report = evaluate_wrench(
            wrench,
            metric=metric,
            seed=seed,
            end_model=end_model,
            lfs=functions,
            revote=revote,
            progress=progress,
        )
    except (OSError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    for split, check in report.get("votes", {}).items():
        if isinstance(check, dict) and check["rows_matching"] < 1.0:
            worst = min(check["lfs_differing"].items(), key=lambda item: item[1])
            typer.secho(
                f"warning: in {split}, the file's votes differ from the LFs' on "
                f"{1 - check['rows_matching']:.1%} of {check['rows']} rows (LF {worst[0]!r} "
                f"matches on {worst[1]:.1%}); scores on {split} measure the file's votes"
                + ("" if revote else " (--revote scores the LFs' own)"),
                fg="yellow",
                err=True,
            )
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    typer.echo(f"WRENCH {wrench}: test split (choices made on valid by {metric})")
    typer.echo(f"{'model':<15}{'accuracy':>10}{'f1':>10}{'macro_f1':>10}  chosen")
    for name, scores in report.items():
        if not isinstance(scores, dict) or "accuracy" not in scores:
            continue  # the metric's name, the votes check
        chosen = ", ".join(f"{k}={v}" for k, v in scores.get("config", {}).items())
        typer.echo(
            f"{name:<15}{scores['accuracy']:>10.3f}{scores['f1']:>10.3f}"
            f"{scores['macro_f1']:>10.3f}  {chosen}"
        )


@app.command("lfs")
def lfs(
    dataset: Annotated[str, typer.Argument(help="A defined dataset (`mlsys dataset list`).")],
    lf_set: Annotated[
        str, typer.Option("--lf-set", help="The LF set of the dataset's LF module to apply.")
    ] = DEFAULT_LF_SET,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Data to apply them to. Default: the dataset's source."),
    ] = None,
    n_jobs: Annotated[
        int | None,
        typer.Option("--n-jobs", min=1, help="Processes for row-by-row LFs. Default: one per CPU."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print exactly one JSON object instead of a table.")
    ] = False,
) -> None:
    """Apply a dataset's LF set to its data and print each LF's polarity (classes it
    votes), coverage, overlaps and conflicts on the train rows and its accuracy on the gold
    dev rows, so LFs can be written and checked without running a flow."""
    from mlsys.data import SourceError, read_dataset
    from mlsys.data.definition import DatasetError, load_dataset
    from mlsys.labeling.report import lf_report

    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if not as_json and (done == total or now - last[0] > 1.0):
            last[0] = now
            print(f"\rapplying LFs: {done}/{total} distinct rows", end="", file=sys.stderr)

    try:
        definition = load_dataset(dataset)
        df = read_dataset(definition, source)
        report = lf_report(definition, df, lf_set=lf_set, n_jobs=n_jobs, progress=progress)
    except (DatasetError, SourceError, ValueError, OSError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    if not as_json:
        print(file=sys.stderr)
    if as_json:
        table = report.summary.reset_index()
        typer.echo(
            json.dumps(
                {
                    "dataset": report.dataset,
                    "lf_set": report.lf_set,
                    "rows": report.rows,
                    "coverage_train": report.coverage_train,
                    "majority_vote_dev_accuracy_covered": report.majority_vote_dev,
                    "lfs": json.loads(table.to_json(orient="records")),
                }
            )
        )
        return
    rows = ", ".join(f"{k} {v}" for k, v in report.rows.items())
    typer.echo(f"{report.dataset}, LF set {report.lf_set!r} ({len(report.summary)} LFs): {rows}")
    typer.echo(report.table())
    mv = "-" if report.majority_vote_dev is None else f"{report.majority_vote_dev:.3f}"
    typer.echo(
        f"coverage on train {report.coverage_train:.3f}; majority vote on covered dev rows: "
        f"accuracy {mv}; applied in {report.seconds:.1f} s"
    )
