"""Flow `ingest`: a source (CSV folder, Parquet, s3://, https://) -> raw Parquet batch in S3."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from mlsys.settings import Settings
from tasks.ingest import read_source_task, resolve_source, track_ingest, write_raw_batch
from tasks.tracking import flow_run_tracking


@flow(name="ingest", log_prints=True)
def ingest(
    source: str | None = None,
    dataset: str = "youtube-spam",
    batch: str | None = None,
) -> str:
    """Read a data source into a normalized raw batch at s3://<bucket>/raw/<dataset>/<batch>.parquet.

    Args:
        source: A folder of CSV files, a local or s3:// Parquet or CSV file, or an
            https:// URL (a .zip of CSVs, a .csv or a .parquet). Empty: the YouTube
            Spam Collection in ../shared/data, else its public archive.
        dataset: Dataset name; fixes the expected columns (known: youtube-spam).
        batch: Batch id used in the object key. Empty: the current UTC time.

    Returns:
        The s3:// URI of the written batch.
    """
    settings = Settings.load()
    batch = batch or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    resolved = resolve_source(source, dataset)
    params = {"source": resolved, "dataset": dataset, "batch": batch}
    with flow_run_tracking(settings, params=params) as run:
        df = read_source_task(resolved, dataset, settings)
        uri = write_raw_batch(df, settings, dataset, batch)
        metrics = track_ingest(run, df, uri, dataset, batch)
        create_markdown_artifact(
            key="ingest-summary",
            markdown=(
                f"# Ingest {dataset}/{batch}\n\n"
                f"| rows in | rows out | labeled | files |\n|---|---|---|---|\n"
                f"| {metrics['rows_in']} | {metrics['rows_out']} | {metrics['rows_labeled']} "
                f"| {metrics['source_files']} |\n\n"
                f"Batch: `{uri}`  \nSource: `{resolved}`  \nMLflow run: [{run.run_id}]({run.url})\n"
            ),
            description=f"Rows ingested into {uri}",
        )
    return uri


if __name__ == "__main__":
    ingest()
