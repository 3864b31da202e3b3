"""`mlsys label lfs NAME`: what a dataset's labeling functions do, in the terminal."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

from mlsys.data.definition import DEFAULT_LF_SET


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
