"""Flow `ingest`: a source (CSV folder, Parquet, s3://, https://) -> raw Parquet batch in S3."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from prefect import flow

from mlsys.data.catalog import raw_key, raw_prefix
from tasks.ingest import read_source_task, resolve_source, track_ingest, write_raw_batch
from tasks.tracking import TrackedFlow
from tasks.validate import previous_batch, validate_batch


@flow(name="ingest", log_prints=True)
def ingest(
    source: str | None = None,
    dataset: str = "youtube-spam",
    batch: str | None = None,
    validation: Literal["quarantine", "fail"] = "quarantine",
    accept_schema_update: bool = False,
) -> str:
    """Read a data source, validate it with the `raw` suite, and write the rows that pass
    to s3://<bucket>/raw/<dataset>/<batch>.parquet.

    Rows failing a row rule of the suite go to
    s3://<bucket>/quarantine/raw/<dataset>/<batch>.parquet with their reasons; rows in =
    rows out + rows quarantined. Drift is measured against the previous raw batch.

    Args:
        source: A file or folder in the dataset's format (CSV, TSV, JSON Lines, Parquet),
            local, s3:// or https:// (a .zip of CSVs too). Empty: the dataset
            definition's default source.
        dataset: A dataset defined under datasets/ (its definition gives the format,
            the columns' roles, the classes and the suites).
        batch: Batch id used in the object key. Empty: the current UTC time.
        validation: "quarantine": failing rows are set aside and the rest go on;
            "fail": any failed critical expectation stops the run and lists them all.
        accept_schema_update: Let this batch widen the raw suite (bounds, value sets,
            null fractions) when it drifts within the suite's thresholds; the new suite
            version is stored in s3://<bucket>/schemas/raw/ and linked from MLflow.

    Returns:
        The s3:// URI of the written batch.
    """
    tracked = TrackedFlow("ingest-summary", dataset)
    settings = tracked.settings
    batch = batch or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    resolved = resolve_source(source, dataset)
    params = {
        "source": resolved,
        "dataset": dataset,
        "batch": batch,
        "validation": validation,
        "accept_schema_update": accept_schema_update,
    }
    with tracked.track(params) as run:
        df = read_source_task(resolved, dataset, settings)
        target = settings.s3_uri(raw_key(dataset, batch))
        report = validate_batch(
            run,
            settings,
            df,
            suite="raw",
            mode=validation,
            dataset=dataset,
            batch=batch,
            reference_uri=previous_batch(settings, raw_prefix(dataset), target),
            accept_schema_update=accept_schema_update,
            source=resolved,
        )
        uri = write_raw_batch(report.passed, settings, dataset, batch)
        metrics = track_ingest(run, report.passed, uri, dataset, batch, rows_in=len(df))
        tracked.summarize(
            (
                f"# Ingest {dataset}/{batch}\n\n"
                f"| rows in | rows out | quarantined | labeled | files |\n|---|---|---|---|---|\n"
                f"| {metrics['rows_in']} | {metrics['rows_out']} | {metrics['rows_quarantined']} "
                f"| {metrics['rows_labeled']} | {metrics['source_files']} |\n\n"
                f"Batch: `{uri}`  \nSource: `{resolved}`  \nMLflow run: [{run.run_id}]({run.url})\n"
            ),
            description=f"Rows ingested into {uri}",
        )
    return uri


if __name__ == "__main__":
    ingest()
