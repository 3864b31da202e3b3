"""Flow `ingest`: a source (CSV folder, Parquet, s3://, https://) -> raw Parquet batch in S3.
A source of several files may be read and validated file by file on a Dask cluster (the one
at `MLSYS_DASK_ADDRESS`, or one made here): each file's rows go to S3 as a part, each part
is checked where it was read, the checks merge into one pass's verdict, and one task streams
the parts into the batch; only counts and locations pass through the flow."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.futures import wait

from mlsys.data.catalog import ingest_parts_prefix, raw_key, raw_prefix
from mlsys.data.definition import DatasetDefinition
from mlsys.data.s3 import delete_prefix
from mlsys.data.sources import SourceFile, group_files, source_files
from mlsys.data.summary import summarize_batch
from mlsys.settings import Settings
from mlsys.validation.checkpoint import Mode
from mlsys.validation.partitioned import Merge, PartitionedVerdict, unmergeable
from tasks.cluster import dask_runner, default_workers
from tasks.ingest import (
    CheckedPart,
    WrittenBatch,
    part_key_values,
    profile_reference,
    read_check_part,
    read_source_task,
    resolve_source,
    track_ingest,
    write_raw_batch,
    write_raw_parts,
)
from tasks.retry import tolerant
from tasks.tracking import TrackedFlow, TrackedRun
from tasks.validate import active_suite, previous_batch, record_verdict, validate_batch


@flow(name="ingest-parts")
def ingest_parts(
    settings: Settings,
    dataset: str,
    batch: str,
    groups: list[list[str]],
    suite: dict[str, Any],
    reference_uri: str | None,
    mode: Mode,
) -> tuple[PartitionedVerdict, WrittenBatch | None, list[str]]:
    """One `read-check-part` task per group of source files, the checks merged into the
    verdict, and the parts streamed into the batch by `write-raw-parts` when the verdict
    allows it."""
    profiles = profile_reference.submit(settings, suite, reference_uri) if reference_uri else None
    futures = [  # each waits for the reference's profile: Prefect resolves the future
        read_check_part.submit(settings, dataset, suite, group, n, batch, profiles)  # type: ignore[arg-type]
        for n, group in enumerate(groups)
    ]
    wait(futures)  # all done before any error goes on: no task writes a part after clean-up
    parts: list[CheckedPart] = [f.result() for f in futures]
    merge = Merge(suite, [p.check for p in parts])
    asked = {
        key: part_key_values.submit(settings, parts[key[0]].uri, merge.key_column(key[1]), rows)
        for key, rows in merge.repeated_keys().items()
    }
    verdict = merge.verdict(
        mode=mode,
        key_values={key: future.result() for key, future in asked.items()},
        profiles=profiles.result() if profiles is not None else None,
    )
    written = None
    if verdict.ok or verdict.rows_quarantined:
        written = write_raw_parts.submit(
            settings, dataset, batch, [p.uri for p in parts], verdict.drops, write_passed=verdict.ok
        ).result()
    return verdict, written, [u for p in parts for u in p.unknown_labels]


def in_parts(
    files: list[SourceFile],
    definition: DatasetDefinition,
    suite: dict[str, Any],
    *,
    partitioned: bool | None,
    accept_schema_update: bool,
    address: str | None,
) -> bool:
    """Whether to read and validate the source file by file on the cluster: as asked, else
    when a cluster is set (MLSYS_DASK_ADDRESS) and the source has several files. A batch
    that cannot be merged from parts is read in one pass, or refused when parts were asked
    for."""
    wanted = partitioned if partitioned is not None else bool(address) and len(files) > 1
    if not wanted:
        return False
    blockers = []
    if definition.columns.id is None:
        blockers.append(
            f"dataset {definition.name!r} has no id column: generated ids count a row's "
            "identical rows across files"
        )
    if accept_schema_update:
        blockers.append("accept_schema_update widens the suite from the whole batch")
    if odd := unmergeable(suite):
        blockers.append(f"the raw suite's {', '.join(odd)} do not merge from parts")
    if not blockers:
        return True
    if partitioned:
        raise ValueError(f"partitioned=True cannot be met: {'; '.join(blockers)}")
    print(f"reading the source in one pass: {'; '.join(blockers)}")
    return False


def ingest_in_parts(
    run: TrackedRun,
    settings: Settings,
    files: list[SourceFile],
    dataset: str,
    batch: str,
    *,
    suite: tuple[dict[str, Any], str],
    mode: Mode,
    workers: int | None,
    part_mb: float,
) -> tuple[str, dict[str, int]]:
    """The source read and validated in groups of files on the cluster with ``suite`` (the
    raw suite's document and where it came from); the batch's URI and the ingest metrics."""
    document, origin = suite
    address = settings.dask_address
    groups = group_files(files, max(1, round(part_mb * 2**20)))
    count = workers or default_workers(len(groups))
    where = f"the cluster at {address}" if address else f"{count} worker(s) on this machine"
    print(
        f"reading {len(files)} file(s) in {len(groups)} task(s) of about {part_mb:g} MB on {where}"
    )
    reference = previous_batch(
        settings, raw_prefix(dataset), settings.s3_uri(raw_key(dataset, batch))
    )
    try:
        verdict, written, unknown = ingest_parts.with_options(
            task_runner=dask_runner(count, address)
        )(settings, dataset, batch, groups, document, reference, mode)
    finally:
        delete_prefix(
            tolerant(settings.s3_client()), settings.bucket, ingest_parts_prefix(dataset, batch)
        )
    logger = get_run_logger()
    for problem in unknown:
        logger.warning("%s: their rows failed the raw suite", problem)
    record_verdict(run, verdict, origin, written.quarantine_uri if written else None)
    if written is None or written.uri is None:  # record_verdict raised unless it may go on
        raise RuntimeError(f"the raw batch was not written: {verdict.summary()}")
    metrics = track_ingest(
        run, written.summary, written.head, written.uri, dataset, batch, rows_in=verdict.rows_in
    )
    return written.uri, metrics


@flow(name="ingest", log_prints=True)
def ingest(
    source: str | None = None,
    dataset: str = "youtube-spam",
    batch: str | None = None,
    validation: Literal["quarantine", "fail"] = "quarantine",
    accept_schema_update: bool = False,
    partitioned: bool | None = None,
    workers: int | None = None,
    part_mb: float = 64.0,
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
        partitioned: Read and validate the source one task per file on the Dask cluster
            (MLSYS_DASK_ADDRESS, else one made on this machine), the checks merged into
            one verdict. Empty: when MLSYS_DASK_ADDRESS is set and the source (a folder,
            local or s3://.../) has several files. Needs an id column in the dataset and
            a suite whose expectations merge; false: one pass in this process.
        workers: Workers of the cluster made on this machine for a partitioned read.
            Empty: one per CPU, at most one per task.
        part_mb: For a partitioned read, the source's files are grouped in order into
            tasks of about this many MB each (a larger file is a task of its own).

    Returns:
        The s3:// URI of the written batch.
    """
    if not part_mb > 0:
        raise ValueError(f"part_mb must be a positive number of MB, got {part_mb!r}")
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
        client = tolerant(settings.s3_client()) if resolved.startswith("s3://") else None
        files = source_files(tracked.definition, resolved, s3_client=client)
        suite = active_suite(settings, dataset, "raw")
        if in_parts(
            files,
            tracked.definition,
            suite[0],
            partitioned=partitioned,
            accept_schema_update=accept_schema_update,
            address=settings.dask_address,
        ):
            uri, metrics = ingest_in_parts(
                run, settings, files, dataset, batch, suite=suite, mode=validation,
                workers=workers, part_mb=part_mb,
            )  # fmt: skip
            tracked.summarize(
                _summary(dataset, batch, metrics, uri, resolved, run),
                description=f"Rows ingested into {uri}",
            )
            return uri
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
        metrics = track_ingest(
            run, summarize_batch(report.passed), report.passed, uri, dataset, batch, rows_in=len(df)
        )
        tracked.summarize(
            _summary(dataset, batch, metrics, uri, resolved, run),
            description=f"Rows ingested into {uri}",
        )
    return uri


def _summary(
    dataset: str, batch: str, metrics: dict[str, int], uri: str, source: str, run: TrackedRun
) -> str:
    return (
        f"# Ingest {dataset}/{batch}\n\n"
        f"| rows in | rows out | quarantined | labeled | files |\n|---|---|---|---|---|\n"
        f"| {metrics['rows_in']} | {metrics['rows_out']} | {metrics['rows_quarantined']} "
        f"| {metrics['rows_labeled']} | {metrics['source_files']} |\n\n"
        f"Batch: `{uri}`  \nSource: `{source}`  \nMLflow run: [{run.run_id}]({run.url})\n"
    )


if __name__ == "__main__":
    ingest()
