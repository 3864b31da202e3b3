"""Tasks of the ingest flow: read a source, write the raw batch to S3, track it in MLflow."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

import mlflow.data
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlsys.data import read_dataset, read_parquet_bytes, write_parquet_bytes
from mlsys.data.catalog import ingest_part_key, quarantine_key, raw_key
from mlsys.data.definition import load_dataset
from mlsys.data.s3 import get_bytes, put_bytes
from mlsys.data.summary import BatchSummary, add_summaries, plot_batch_summary, summarize_batch
from mlsys.inference.batch import parquet_frames
from mlsys.inference.inputs import S3Object
from mlsys.settings import Settings
from mlsys.validation.drift import ReferenceProfile
from mlsys.validation.partitioned import (
    PartitionCheck,
    check_partition,
    drift_columns,
    drift_profiles,
    key_values,
)
from tasks.parts import stream_parts
from tasks.retry import outage_tolerant
from tasks.tracking import TrackedRun
from tasks.validate import PARQUET

HEAD_ROWS = 1000
"""Rows of a batch written in parts that MLflow's dataset entry is made from (schema)."""


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
    run: TrackedRun,
    summary: BatchSummary,
    df: pd.DataFrame,
    uri: str,
    dataset: str,
    batch: str,
    *,
    rows_in: int,
) -> dict[str, int]:
    """Log row counts (in = out + quarantined), the written batch as a dataset input, a
    summary and a chart to MLflow. ``df`` is the batch, or its first rows when it was
    written in parts (the dataset entry's schema and digest are then those rows', its
    profile the batch's counts)."""
    client = run.client()
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
        entity = ds._to_mlflow_entity()
        if len(df) < summary.rows:
            profile = {"num_rows": summary.rows, "num_elements": summary.rows * df.shape[1]}
            entity = Dataset(
                name=entity.name,
                digest=entity.digest,
                source_type=entity.source_type,
                source=entity.source,
                schema=entity.schema,
                profile=json.dumps(profile),
            )
        client.log_inputs(
            run.run_id,
            datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", "raw")])],
        )
    client.log_dict(run.run_id, {"uri": uri, **summary.to_dict()}, "ingest/summary.json")
    fig = plot_batch_summary(summary, title=f"{dataset}/{batch}")
    client.log_figure(run.run_id, fig, "ingest/rows_per_file.png")
    return metrics


# --- a source read and checked file by file on a Dask cluster -----------------------------


@dataclass(frozen=True)
class CheckedPart:
    """One source file read and checked on a worker: where its rows are and its share of
    the validation (counts, hashes; never the rows)."""

    uri: str
    check: PartitionCheck
    unknown_labels: list[str]


PROFILE_ROWS = 100_000
"""Rows of the reference batch decoded at a time while its drift profile is made."""


@task(name="profile-reference", cache_policy=NO_CACHE)
@outage_tolerant
def profile_reference(
    settings: Settings, suite: dict[str, Any], reference_uri: str
) -> list[ReferenceProfile] | None:
    """On a worker: the reference batch's bins and counts for the suite's drift features,
    read from S3 in place a slice of rows at a time and only the columns they need (a
    float per value of a numeric feature is what grows with the batch)."""
    source = S3Object(settings.s3_client(), reference_uri)
    return drift_profiles(parquet_frames(source, drift_columns(suite), PROFILE_ROWS), suite)


@task(name="read-check-part", cache_policy=NO_CACHE)
@outage_tolerant
def read_check_part(
    settings: Settings,
    dataset: str,
    suite: dict[str, Any],
    sources: list[str],
    part: int,
    batch: str,
    profiles: list[ReferenceProfile] | None,
) -> CheckedPart:
    """On a worker: a group of the source's files read in order as the dataset defines
    them, PUT to S3 as part ``part`` of the batch, and checked with the suite (row rules
    per row, the batch's statistics for the merge)."""
    definition = load_dataset(dataset, search=settings.datasets_dir)
    client = settings.s3_client()
    frames = [
        read_dataset(
            definition,
            source,
            s3_client=client if source.startswith("s3://") else None,
            cache_dir=settings.stack_dir / "cache",
            unknown_labels="keep",
        )
        for source in sources
    ]
    unknown = [u for frame in frames for u in frame.attrs.get("unknown_labels", [])]
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    del frames
    uri = settings.s3_uri(ingest_part_key(dataset, batch, part))
    put_bytes(client, uri, write_parquet_bytes(df), PARQUET)
    check = check_partition(df, suite, profiles=profiles)
    get_run_logger().info(
        "part %d: %d rows of %d file(s) from %s checked", part, len(df), len(sources), sources[0]
    )
    return CheckedPart(uri, check, unknown)


@task(name="part-key-values", cache_policy=NO_CACHE)
@outage_tolerant
def part_key_values(settings: Settings, uri: str, column: str, rows: list[int]) -> list[Any]:
    """On a worker: the values of ``column`` at ``rows`` of one part (uniqueness is
    decided on values where their hashes repeat)."""
    return key_values(read_parquet_bytes(get_bytes(settings.s3_client(), uri)), column, rows)


@dataclass(frozen=True)
class WrittenBatch:
    """What ``write-raw-parts`` wrote: the batch (None when it was not to be written), the
    quarantine (None: no row set aside), the batch's summary and its first rows."""

    uri: str | None
    quarantine_uri: str | None
    summary: BatchSummary
    head: pd.DataFrame


@task(name="write-raw-parts", cache_policy=NO_CACHE)
@outage_tolerant
def write_raw_parts(
    settings: Settings,
    dataset: str,
    batch: str,
    parts: list[str],
    drops: list[dict[int, list[str]]],
    *,
    write_passed: bool,
) -> WrittenBatch:
    """On a worker: the parts, in order and one at a time, less their quarantined rows,
    streamed into the raw batch s3://<bucket>/raw/<dataset>/<batch>.parquet (one row group
    per part), and those rows with their reasons into the quarantine object."""
    summaries: list[BatchSummary] = []
    heads: list[pd.DataFrame] = []

    def each(kept: pd.DataFrame) -> None:
        summaries.append(summarize_batch(kept))
        if sum(map(len, heads)) < HEAD_ROWS:
            heads.append(kept.head(HEAD_ROWS - sum(map(len, heads))))

    written = stream_parts(
        settings,
        parts,
        drops,
        target=settings.s3_uri(raw_key(dataset, batch)) if write_passed else None,
        quarantine=settings.s3_uri(quarantine_key("raw", dataset, batch)),
        each=each,
    )
    target, quarantine_uri = written.uri, written.quarantine_uri
    head = pd.concat(heads, ignore_index=True) if heads else pd.DataFrame()
    summary = add_summaries(summaries)
    get_run_logger().info(
        "wrote %d rows to %s, %d set aside", summary.rows, target, written.rows_aside
    )
    return WrittenBatch(target, quarantine_uri, summary, head)
