"""Tasks of the ingest flow: read a source, write the raw batch to S3, track it in MLflow."""

from __future__ import annotations

import warnings

import mlflow.data
import pandas as pd
from mlflow.entities import DatasetInput, InputTag
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlsys.data import read_dataset, write_parquet_bytes
from mlsys.data.catalog import raw_key
from mlsys.data.definition import load_dataset
from mlsys.data.s3 import put_bytes
from mlsys.data.summary import plot_batch_summary, summarize_batch
from mlsys.settings import Settings
from tasks.retry import outage_tolerant
from tasks.tracking import TrackedRun


def resolve_source(source: str | None, dataset: str) -> str:
    """The source to read: as given, else the dataset definition's default source."""
    if source:
        return source
    return load_dataset(dataset).resolved_source()


@task(name="read-source", cache_policy=NO_CACHE)
@outage_tolerant
def read_source_task(source: str, dataset: str, settings: Settings) -> pd.DataFrame:
    """Read ``source`` into a normalized raw batch (all rows kept, quirks included)."""
    logger = get_run_logger()
    definition = load_dataset(dataset)
    client = settings.s3_client() if source.startswith("s3://") else None
    df = read_dataset(
        definition,
        source,
        s3_client=client,
        cache_dir=settings.stack_dir / "cache",
        unknown_labels="keep",  # the raw suite quarantines those rows, naming the values
    )
    for problem in df.attrs.get("unknown_labels", []):
        logger.warning("%s: their rows will fail the raw suite", problem)
    logger.info("read %d rows of %s from %s", len(df), dataset, source)
    return df


@task(name="write-raw-batch", cache_policy=NO_CACHE)
@outage_tolerant
def write_raw_batch(df: pd.DataFrame, settings: Settings, dataset: str, batch: str) -> str:
    """Write the batch as Parquet to s3://<bucket>/raw/<dataset>/<batch>.parquet."""
    uri = settings.s3_uri(raw_key(dataset, batch))
    data = write_parquet_bytes(df)
    put_bytes(settings.s3_client(), uri, data, "application/vnd.apache.parquet")
    get_run_logger().info("wrote %d rows (%d bytes) to %s", len(df), len(data), uri)
    return uri


@task(name="track-ingest", cache_policy=NO_CACHE)
@outage_tolerant
def track_ingest(
    run: TrackedRun, df: pd.DataFrame, uri: str, dataset: str, batch: str, *, rows_in: int
) -> dict[str, int]:
    """Log row counts (in = out + quarantined), the written batch as a dataset input, a
    summary and a chart to MLflow."""
    client = run.client()
    summary = summarize_batch(df)
    metrics = {
        "rows_in": rows_in,
        "rows_out": summary.rows,
        "rows_quarantined": rows_in - summary.rows,
        "rows_labeled": summary.labeled,
        "source_files": len(summary.files),
    }
    for key, value in metrics.items():
        client.log_metric(run.run_id, key, value)
    client.set_tag(run.run_id, "mlsys.raw_batch", uri)
    with warnings.catch_warnings():
        # MLflow hints that integer columns can't hold missing values; the label is
        # nullable Int64 on purpose (unlabeled rows), so the hint does not apply.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        ds = mlflow.data.from_pandas(  # type: ignore[attr-defined]
            df,
            source=uri,
            name=f"{dataset}/{batch}",
            targets="label" if "label" in df.columns and df["label"].notna().any() else None,
        )
        client.log_inputs(
            run.run_id,
            datasets=[
                DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "raw")])
            ],
        )
    client.log_dict(run.run_id, {"uri": uri, **summary.to_dict()}, "ingest/summary.json")
    fig = plot_batch_summary(summary, title=f"{dataset}/{batch}")
    client.log_figure(run.run_id, fig, "ingest/rows_per_file.png")
    return metrics
