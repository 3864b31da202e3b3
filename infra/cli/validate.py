"""`mlsys validate …`: infer suites and run checkpoints from the shell.

Exit status of ``run``: 0 when the batch passes (in quarantine mode: when the rest of the
batch could go on), 1 when it fails its checkpoint, 2 when the input cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mlsys.data.definition import DatasetDefinition

app = typer.Typer(
    help="Data validation: Great Expectations suites and checkpoints.", no_args_is_help=True
)

SourceOption = Annotated[
    str,
    typer.Option(
        "--source",
        help="A folder of the dataset's files, a file (CSV, TSV, JSON Lines, Parquet), a .zip, "
        "an s3:// object or an https:// URL. Sources are read through the dataset's "
        "definition as `ingest` does; a .parquet batch is read as is.",
    ),
]
DatasetOption = Annotated[
    str,
    typer.Option(
        "--dataset",
        help="Dataset whose definition reads the source and whose suites are the default.",
    ),
]


@app.callback()
def _group() -> None:
    """Data validation: Great Expectations suites and checkpoints."""


def load_frame(source: str, definition: DatasetDefinition) -> Any:
    """Read ``source`` for validation: Parquet as is, anything else through the dataset's
    definition (roles, classes, provenance columns), local or s3://."""
    import pandas as pd

    from mlsys.data import read_dataset, read_parquet_bytes

    client = None
    if source.startswith("s3://"):
        from mlsys.data.s3 import get_bytes
        from mlsys.settings import Settings

        client = Settings.load().s3_client()
        if source.endswith(".parquet"):
            return read_parquet_bytes(get_bytes(client, source))
    elif source.endswith(".parquet") and Path(source).is_file():
        from mlsys.data import SourceError

        try:
            return pd.read_parquet(source, engine="pyarrow")
        except Exception as exc:
            raise SourceError(f"cannot read Parquet file {source}: {exc}") from exc
    return read_dataset(definition, source, s3_client=client)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


@app.command("init")
def init() -> None:
    """Create the GX project's data source, assets, validation definitions and checkpoints
    for every suite in gx/expectations (idempotent: existing ones are kept)."""
    from mlsys.validation.checkpoint import ensure_project, gx_dir

    created = ensure_project()
    typer.echo(f"{gx_dir()}: " + (", ".join(created) if created else "nothing to create"))


@app.command("infer")
def infer(
    source: SourceOption,
    suite: Annotated[str, typer.Option("--suite", help="Name of the suite to write.")],
    dataset: DatasetOption = "youtube-spam",
    id_column: Annotated[
        list[str] | None,
        typer.Option("--id-column", help="A column whose values must be unique (repeatable)."),
    ] = None,
    text_column: Annotated[
        list[str] | None,
        typer.Option("--text-column", help="A free-text column, bounded by length (repeatable)."),
    ] = None,
    max_categories: Annotated[
        int, typer.Option(help="Most distinct values a column may have to get a value set.")
    ] = 20,
    slack: Annotated[
        float, typer.Option(help="Relative widening of inferred bounds and null fractions.")
    ] = 0.1,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Where to write the suite. Default: the dataset's suites/<suite>.json.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing suite file.")
    ] = False,
) -> None:
    """Infer a suite from a reference batch, the way TFDV infers a schema: column set,
    types, null fractions, value sets of low-cardinality columns, bounds from quantiles of
    numeric columns and text lengths, drift thresholds. Review and tighten the JSON, then
    commit it."""
    from mlsys.data import SourceError, load_dataset
    from mlsys.validation.profile import infer_schema
    from mlsys.validation.suites import dump_suite, suite_from_schema

    try:
        definition = load_dataset(dataset)
        target = output or definition.suite_path(suite)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if target.exists() and not force:
        raise _fail(f"{target} exists; pass --force to overwrite it or --output elsewhere")
    try:
        df = load_frame(source, definition)
        texts = text_column if text_column is not None else [c for c in ("text",) if c in df]
        schema = infer_schema(
            df,
            text_columns=texts,
            id_columns=id_column or [],
            max_categories=max_categories,
            slack=slack,
        )
    except (SourceError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    document = suite_from_schema(schema, suite, inferred_from=source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dump_suite(document), encoding="utf-8")
    typer.echo(
        f"wrote suite {suite} ({len(document['expectations'])} expectations, "
        f"{len(df)} rows of {source}) to {target}"
    )


@app.command("run")
def run(
    suite: Annotated[
        str, typer.Option("--suite", help="Suite to check with: raw, training or serving.")
    ],
    source: SourceOption,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="fail: any failed critical expectation fails (exit 1). quarantine: rows "
            "failing row rules are set aside; exit 0 if the rest could go on.",
        ),
    ] = "fail",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print one JSON object: {"rows_in", "rows_passed", "rows_quarantined", '
            '"failed", ...}.',
        ),
    ] = False,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="A batch to measure drift against (the previous one), or the training data "
            "with --skew.",
        ),
    ] = None,
    skew: Annotated[
        bool, typer.Option("--skew", help="Report the comparison as training/serving skew.")
    ] = False,
    suite_file: Annotated[
        Path | None,
        typer.Option(
            "--suite-file",
            help="Run this suite JSON instead of the dataset's suites/<suite>.json.",
        ),
    ] = None,
    docs: Annotated[
        Path | None, typer.Option("--docs", help="Write this run's Data Docs site to this folder.")
    ] = None,
    quarantine_out: Annotated[
        Path | None,
        typer.Option(
            "--quarantine-out", help="Write quarantined rows and reasons to this Parquet file."
        ),
    ] = None,
    dataset: DatasetOption = "youtube-spam",
) -> None:
    """Run a suite's checkpoint on a batch and print the verdict."""
    from mlsys.data import SourceError, load_dataset
    from mlsys.data.s3 import S3Error
    from mlsys.validation.checkpoint import MODES, run_checkpoint
    from mlsys.validation.suites import load_suite

    if mode not in MODES:
        raise _fail(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    try:
        definition = load_dataset(dataset)
        path = suite_file or definition.suite_path(suite)
        document = load_suite(path)
        if document["name"] != suite:
            raise ValueError(f"{path} holds suite {document['name']!r}, not {suite!r}")
        df = load_frame(source, definition)
        ref = load_frame(reference, definition) if reference else None
        report = run_checkpoint(
            df,
            document,
            mode=mode,  # type: ignore[arg-type]
            reference=ref,
            drift_kind="skew" if skew else "drift",
            docs_dir=docs,
        )
    except (SourceError, S3Error, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    if quarantine_out is not None and report.rows_quarantined:
        report.quarantined.to_parquet(quarantine_out, index=False)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), sort_keys=True, default=str))
    else:
        typer.echo(report.summary())
        typer.echo("PASSED" if report.ok else "FAILED")
    if not report.ok:
        raise typer.Exit(1)
