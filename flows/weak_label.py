"""Flow `weak_label`: a raw batch in S3 -> labeled Parquet batch in S3, tracked in MLflow.
The LFs run in this process for a batch of one partition, else one task per row partition on
a Dask cluster made on this machine, or on the cluster at `MLSYS_DASK_ADDRESS` (always)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Any, Literal

import pandas as pd
from prefect import flow
from prefect.futures import wait

from flows.options import LabelOptions
from flows.weak_label_parts import LabelOutcome, parts_refused, weak_label_parts
from mlsys.data.catalog import label_parts_prefix, labeled_key, labeled_prefix, quarantine_key
from mlsys.data.definition import DatasetDefinition
from mlsys.data.s3 import S3Uri, delete_prefix
from mlsys.labeling import LFApplyResult, evaluate_labelers, split_counts
from mlsys.labeling.analysis import plot_weights
from mlsys.settings import Settings
from mlsys.validation.checkpoint import Mode
from tasks.cluster import cluster_threads, dask_runner, default_workers
from tasks.retry import tolerant
from tasks.tracking import TrackedFlow, TrackedRun
from tasks.validate import active_suite, previous_batch, validate_batch
from tasks.weak_label import (
    analyze_lfs,
    apply_labeling_functions,
    apply_lfs_partition,
    drop_lf_partitions,
    find_raw_batch,
    gather_lf_votes,
    label_counts,
    label_metrics,
    load_raw_batch,
    merge_gold_and_weak,
    split_batch,
    split_votes,
    stage_lf_partitions,
    summary_markdown,
    track_weak_label,
    tune_label_model,
    write_batch,
)
from tasks.weak_label_parts import plan_ranges


@flow(name="apply-lfs-partitions")
def apply_lfs_partitions(
    settings: Settings, dataset: str, lf_set: str, errors: str, partitions: list[str]
) -> list[dict[str, Any]]:
    """One `apply-lfs-partition` task per row partition, each reading its rows from S3 and
    writing its votes there; only locations and counts pass through Dask."""
    futures = [
        apply_lfs_partition.submit(settings, dataset, lf_set, errors, uri) for uri in partitions
    ]
    wait(futures)  # all done before any error goes on: no votes written after the clean-up
    return [future.result() for future in futures]


def label_matrix(
    settings: Settings,
    df: pd.DataFrame,
    definition: DatasetDefinition,
    batch: str,
    label: LabelOptions,
) -> LFApplyResult:
    """The LF set's votes on every row of ``df``: in this process when the batch is one
    partition and no cluster is set, else per row partition on the Dask cluster (the one
    at MLSYS_DASK_ADDRESS, or one made here with a worker per CPU, at most one per
    partition; ``label.workers`` caps them). Both give PandasLFApplier's label matrix."""
    partitions = math.ceil(len(df) / label.partition_rows)
    address = settings.dask_address
    if partitions <= 1 and not address:
        return apply_labeling_functions(df, definition, label.lf_set, label.lf_errors, label.n_jobs)
    threads = cluster_threads(address) if address else None
    workers = (
        min(label.workers, partitions) if label.workers else default_workers(partitions, threads)
    )
    began = time.perf_counter()
    uris = stage_lf_partitions(settings, df, definition, batch, label.partition_rows)
    where = f"the cluster at {address}" if address else f"{workers} worker(s) on this machine"
    print(f"LFs over {len(uris)} partitions of up to {label.partition_rows} rows on {where}")
    try:
        parts = apply_lfs_partitions.with_options(task_runner=dask_runner(workers, address))(
            settings, definition.name, label.lf_set, label.lf_errors, uris
        )
    except BaseException:
        drop_lf_partitions(settings, definition.name, batch)  # a failed run leaves none
        raise
    return gather_lf_votes(
        settings, parts, len(df), definition.name, batch, time.perf_counter() - began
    )


@flow(name="weak_label", log_prints=True)
def weak_label(
    raw_batch: str | None = None,
    dataset: str = "youtube-spam",
    batch: str | None = None,
    label: LabelOptions = LabelOptions(),  # noqa: B008 - a default the Prefect UI form shows
    validation: Literal["quarantine", "fail"] = "quarantine",
    accept_schema_update: bool = False,
    partitioned: bool = False,
) -> str:
    """Label a raw batch with labeling functions and a label model; merge gold labels in.

    Writes s3://<bucket>/labeled/<dataset>/<batch>.parquet: every row with its split
    (train/dev/test, from the dataset's gold policy), weak label, class probabilities,
    confidence, final label, label_source (gold | weak | none) and training weight. The
    raw batch is checked with the dataset's `raw` suite and the labeled batch with its
    `training` suite (drift against the previous labeled batch); failing rows go to
    s3://<bucket>/quarantine/<raw|training>/<dataset>/<batch>.parquet with their reasons,
    rows the LFs cannot read to quarantine/weak_label/...; rows in = out + quarantined.

    Args:
        raw_batch: s3:// URI of a raw batch written by `ingest`. Empty: the newest
            batch under raw/<dataset>/.
        dataset: A dataset defined under datasets/: its LF module, classes, metric, gold
            policy and suites.
        batch: Id of the labeled batch. Empty: the raw batch's id.
        label: The LF set (`default` unless told), how weak labels are weighted, the
            label model's seed, what an LF that fails does, and the processes applying
            row-by-row LFs.
        validation: "quarantine": rows failing a suite's row rules are set aside and the
            rest go on; "fail": any failed critical expectation stops the run.
        accept_schema_update: Let this batch widen the training suite when it drifts
            within the suite's thresholds (new version in s3://<bucket>/schemas/training/).
        partitioned: Label the batch range by range on the Dask cluster (the one at
            MLSYS_DASK_ADDRESS, or one made here), so that no process holds it whole: one
            task per `label.partition_rows` rows reads its range from S3 in place, the
            suites' checks merge into one pass's verdicts, and the driver fits the
            labelers from the gold rows and the train rows' votes (a seeded sample of 200k
            beyond that). Same labels, splits, checks and metrics as one pass; rows keep
            the raw batch's order. Refused with `accept_schema_update`, or a suite whose
            expectations do not merge from parts.

    Returns:
        The s3:// URI of the labeled batch.
    """
    tracked = TrackedFlow("weak-label-summary", dataset)
    settings, definition = tracked.settings, tracked.definition
    definition.lf_set(label.lf_set)  # an unknown set or a bad LF fails here, before any work
    raw_uri = find_raw_batch(settings, dataset, raw_batch)
    batch = batch or PurePosixPath(S3Uri.parse(raw_uri).key).stem
    params = {
        "raw_batch": raw_uri,
        "dataset": dataset,
        "batch": batch,
        **label.params(),
        "classes": list(definition.classes),
        "metric": definition.metric,
        "gold_policy": definition.gold.by,
        "validation": validation,
        "accept_schema_update": accept_schema_update,
        "partitioned": partitioned,
    }
    if partitioned and (
        refused := parts_refused(
            {name: active_suite(settings, dataset, name)[0] for name in ("raw", "training")},
            accept_schema_update,
        )
    ):
        raise ValueError(f"partitioned=True cannot be met: {'; '.join(refused)}")
    with tracked.track(params) as run:
        if partitioned:
            outcome = label_in_parts(run, settings, dataset, raw_uri, batch, label, validation)
        else:
            outcome = label_in_one_pass(
                run, settings, definition, raw_uri, batch, label, validation, accept_schema_update
            )
        track_weak_label(
            run,
            metrics=outcome.metrics,
            tuning=outcome.tuning,
            weight_model=outcome.weights,
            counts=outcome.counts,
            uris=outcome.uris,
        )
        run.client().log_figure(
            run.run_id, plot_weights(outcome.sample, outcome.weights), "weak_label/weights.png"
        )
        tracked.summarize(
            summary_markdown(
                definition=definition,
                metrics=outcome.metrics,
                tuning=outcome.tuning,
                uris=outcome.uris,
                run=run,
            ),
            description=f"Weak labeling of {raw_uri}",
        )
        print(f"weight model: {asdict(outcome.weights)}")
    return outcome.uris["labeled_batch"]


def label_in_parts(
    run: TrackedRun,
    settings: Settings,
    dataset: str,
    raw_uri: str,
    batch: str,
    label: LabelOptions,
    validation: Mode,
) -> LabelOutcome:
    """The raw batch labeled range by range on the cluster (flows/weak_label_parts.py);
    what the ranges left in S3 removed, whatever happens."""
    address = settings.dask_address
    ranges = plan_ranges(settings, raw_uri, label.partition_rows)
    threads = cluster_threads(address) if address else None
    workers = label.workers or default_workers(len(ranges), threads)
    where = f"the cluster at {address}" if address else f"{workers} worker(s) on this machine"
    print(f"labeling in {len(ranges)} ranges of up to {label.partition_rows} rows on {where}")
    target = settings.s3_uri(labeled_key(dataset, batch))
    try:
        return weak_label_parts.with_options(task_runner=dask_runner(workers, address))(
            run,
            settings,
            dataset,
            raw_uri,
            ranges,
            batch,
            label,
            validation,
            previous_batch(settings, labeled_prefix(dataset), target),
        )
    finally:
        delete_prefix(
            tolerant(settings.s3_client()), settings.bucket, label_parts_prefix(dataset, batch)
        )


def label_in_one_pass(
    run: TrackedRun,
    settings: Settings,
    definition: DatasetDefinition,
    raw_uri: str,
    batch: str,
    label: LabelOptions,
    validation: Mode,
    accept_schema_update: bool,
) -> LabelOutcome:
    """The raw batch read into the flow's process and labeled as a whole (its LFs on the
    cluster when it has several partitions or one is set)."""
    dataset = definition.name
    raw = load_raw_batch(settings, raw_uri)
    checked = validate_batch(
        run, settings, raw, suite="raw", mode=validation, dataset=dataset, batch=batch
    )
    df, quarantined = split_batch(checked.passed, definition)
    result = label_matrix(settings, df, definition, batch, label)
    L_train, L_dev, y_dev = split_votes(result, df)
    analyze_lfs(run, L_train, result.lf_names, L_dev, y_dev)
    tuning = tune_label_model(L_train, L_dev, y_dev, definition, label.seed)
    merged = merge_gold_and_weak(df, result, tuning, label.weighting)
    target = settings.s3_uri(labeled_key(dataset, batch))
    training = validate_batch(
        run,
        settings,
        merged.frame,
        suite="training",
        mode=validation,
        dataset=dataset,
        batch=batch,
        reference_uri=previous_batch(settings, labeled_prefix(dataset), target),
        accept_schema_update=accept_schema_update,
        source=raw_uri,
    )
    labeled = training.passed
    rows_quarantined = checked.rows_quarantined + len(quarantined) + training.rows_quarantined
    if len(labeled) + rows_quarantined != len(raw):
        raise RuntimeError(
            f"row count mismatch: {len(raw)} in, {len(labeled)} labeled + "
            f"{rows_quarantined} quarantined"
        )
    uris = {
        "raw_batch": raw_uri,
        "labeled_batch": write_batch(settings, labeled, labeled_key(dataset, batch)),
    }
    if len(quarantined):
        uris["quarantine_batch"] = write_batch(
            settings, quarantined, quarantine_key("weak_label", dataset, batch)
        )
    metrics = label_metrics(
        rows_in=len(raw),
        rows_out=len(labeled),
        quarantined=rows_quarantined,
        counts=split_counts(df),
        lfs=result,
        sources=merged.counts,
        evaluation=evaluate_labelers(tuning, result.matrix, df),
    )
    return LabelOutcome(
        uris=uris,
        metrics=metrics,
        tuning=tuning,
        weights=merged.weight_model,
        counts=label_counts(merged.frame),
        sample=merged.frame,
    )


if __name__ == "__main__":
    weak_label()
