"""`mlsys data …`: look at a batch in S3 or on disk from the shell."""

from __future__ import annotations

from typing import Annotated

import typer

from mlsys.data.s3 import get_bytes
from mlsys.data.sources import SourceError, read_parquet_bytes
from mlsys.data.summary import summarize_batch
from mlsys.settings import Settings

app = typer.Typer(help="Inspect data batches (local files or s3:// objects).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Inspect data batches (local files or s3:// objects)."""


@app.command("show")
def show(
    uri: Annotated[str, typer.Argument(help="A Parquet batch: s3://bucket/key or a local path.")],
    rows: Annotated[int, typer.Option("--rows", "-n", help="How many rows to print.")] = 5,
) -> None:
    """Read a Parquet batch (through boto3 for s3://) and print its shape, counts and head."""
    try:
        if uri.startswith("s3://"):
            data = get_bytes(Settings.load().s3_client(), uri)
        else:
            with open(uri, "rb") as f:
                data = f.read()
        df = read_parquet_bytes(data)
    except (OSError, RuntimeError, SourceError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    summary = summarize_batch(df)
    typer.echo(f"{uri}: {summary.rows} rows, {len(df.columns)} columns ({len(data):,} bytes)")
    typer.echo("columns: " + ", ".join(f"{c}:{t}" for c, t in df.dtypes.astype(str).items()))
    if summary.labels:
        typer.echo("labels:  " + ", ".join(f"{k}={v}" for k, v in sorted(summary.labels.items())))
    for column, title in (("split", "splits: "), ("label_source", "sources:")):
        if column in df.columns:
            counts = df[column].value_counts(dropna=False).sort_index()
            typer.echo(f"{title} " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if summary.files:
        typer.echo("files:   " + ", ".join(f"{k}={v}" for k, v in summary.files.items()))
    with_text = df.head(rows).copy()
    if "text" in with_text.columns:
        with_text["text"] = with_text["text"].str.slice(0, 60)
    typer.echo(with_text.to_string(max_colwidth=60))
