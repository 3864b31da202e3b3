"""Flow `batch_infer`: a registered model scores a Parquet/CSV input of a dataset in streaming
chunks, predictions written as Parquet parts to S3, resumable, checked with the dataset's
serving suite; in this process, on a Dask cluster it makes on this machine, or on the Dask
cluster at `MLSYS_DASK_ADDRESS` (the same tasks in each case)."""

from __future__ import annotations

import time
from pathlib import PurePosixPath
from typing import Any, Literal

from prefect import flow

from flows.options import InferOptions
from mlsys.data.catalog import predictions_prefix, quarantine_prefix, raw_prefix
from mlsys.data.s3 import latest_key
from mlsys.data.sources import normalized_names
from mlsys.inference.inputs import is_s3
from mlsys.settings import Settings
from tasks.batch_infer import (
    ModelRef,
    chunk_count,
    claim_output,
    drop_staged_input,
    first_chunk,
    list_input,
    resolve_model,
    score_partition,
    serving_suite,
    stage_input,
    write_manifest,
)
from tasks.cluster import cluster_threads, dask_runner, default_workers
from tasks.retry import tolerant
from tasks.tracking import TrackedFlow
from tasks.validate import validate_batch


@flow(name="score-partitions")
def score_partitions(
    settings: Settings,
    ref: ModelRef,
    inputs: list[str],
    workers: int,
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """One `score-partition` task per worker, each taking every `workers`-th chunk and
    reading it from ``inputs`` itself; only locations and counts pass through Dask."""
    futures = [
        score_partition.submit(settings, ref, inputs, partition=(i, workers), **options)
        for i in range(workers)
    ]
    return [row for future in futures for row in future.result()]


@flow(name="batch_infer", log_prints=True)
def batch_infer(
    source: str | None = None,
    dataset: str = "youtube-spam",
    batch: str | None = None,
    model_name: str | None = None,
    alias: str = "champion",
    model_version: str | None = None,
    inference: InferOptions = InferOptions(),  # noqa: B008 - a default the Prefect UI form shows
    id_column: str | None = None,
    validation: Literal["quarantine", "fail"] = "quarantine",
) -> str:
    """Score an input of a dataset with a registered model; write predictions to
    s3://<bucket>/predictions/<dataset>/<batch>/part-*.parquet and a _manifest.json.

    The first chunk is checked with the dataset's `serving` suite and its text lengths
    compared with the model's training data (skew; MLflow metrics, Data Docs); then every
    chunk is checked, its failing rows quarantined to quarantine/serving/<dataset>/<batch>/,
    and the rest scored. Each chunk becomes one part, so a re-run with the same batch id
    skips the chunks already written. The manifest is written last: without it the
    predictions are incomplete. Rows in = rows out + rows quarantined.

    Each part holds, per scored row: the id column; `label`, the predicted class's name;
    `probability`, its probability; one `proba_<class>` column per class; and the
    model's name, version and run id.

    Args:
        source: A Parquet or CSV file or folder, or an s3:// object or prefix. Empty: the
            newest raw batch under raw/<dataset>/.
        dataset: Name of a defined dataset (datasets/<name>/dataset.yaml). It gives the
            id column, the default model name, the serving suite, the prefix of
            predictions/ and the column mapping of inputs in its source layout (e.g. raw
            CSVs: CONTENT -> text).
        batch: Id of the predictions. Empty: the input's file name without extension.
        model_name: Registered model to score with. Empty: the dataset's model
            (its definition's model_name, else "<dataset>-classifier").
        alias: Alias of the version to use (ignored when model_version is given).
        model_version: A version number to pin instead of the alias.
        inference: `chunk_rows`, the rows read, checked and scored at a time (bounds
            memory); `workers`, the partitions scored in parallel, each by one task that
            reads its own chunks: on the Dask cluster at MLSYS_DASK_ADDRESS when that is
            set (a local input is first put in S3 under staging/), else on a Dask cluster
            on this machine when > 1; empty: one per CPU (per worker thread of the given
            cluster), at most one per chunk (so, without a cluster, a one-chunk input
            runs in this process).
        id_column: Input column copied into the predictions to join them back. Empty:
            the dataset's id column.
        validation: "quarantine": rows failing the serving suite are set aside; "fail":
            any failing row stops the run.

    Returns:
        The s3:// URI of the manifest.

    Raises:
        ValueError: an unknown dataset (the defined ones are listed), a model, version
            or alias that does not exist, a model trained on other classes, or a tls://
            MLSYS_DASK_ADDRESS
            without Dask's TLS configuration.
        FileNotFoundError: the dataset has no serving suite (the message says how to
            infer one).
        RuntimeError: the scheduler at MLSYS_DASK_ADDRESS cannot be reached.
    """
    tracked = TrackedFlow("batch-infer-summary", dataset)
    settings = tracked.settings
    chunk_rows, workers = inference.chunk_rows, inference.workers
    definition = tracked.definition
    model_name = model_name or definition.registered_model_name
    id_column = id_column or definition.id_column
    suite = serving_suite(definition)
    source = source or latest_key(
        tolerant(settings.s3_client()), settings.bucket, raw_prefix(dataset)
    )
    batch = batch or PurePosixPath(source.rstrip("/")).stem
    rename = normalized_names(definition)
    prefix = predictions_prefix(dataset, batch)
    params = {
        "source": source,
        "dataset": dataset,
        "batch": batch,
        "model_name": model_name,
        "alias": alias,
        "model_version": model_version,
        **inference.params(),
        "id_column": id_column,
        "validation": validation,
    }
    threads = cluster_threads(settings.dask_address) if settings.dask_address else None
    ref = resolve_model(settings, model_name, alias, model_version, definition.classes)
    with tracked.track(params) as run:
        client = run.client()
        client.set_tag(run.run_id, "mlsys.model_uri", ref.uri)
        inputs = list_input(settings, source)
        validate_batch(
            run,
            settings,
            first_chunk(settings, inputs, chunk_rows, rename),
            suite="serving",
            mode=validation,
            dataset=dataset,
            batch=batch,
            reference_uri=ref.training_batch,
            drift_kind="skew",
            write_quarantine=False,
        )
        chunks = chunk_count(settings, inputs, chunk_rows)
        workers = workers or default_workers(chunks, threads)
        where = f"the cluster at {settings.dask_address}" if threads is not None else "this machine"
        print(f"{chunks} chunks of up to {chunk_rows} rows; {workers} worker(s) on {where}")
        client.log_param(run.run_id, "workers_used", workers)
        resumed = claim_output(settings, prefix, ref, source, chunk_rows)
        # Workers on other hosts cannot read this machine's files: those go to S3 first.
        staged = threads is not None and not all(is_s3(x) for x in inputs)
        if staged:
            inputs = stage_input(settings, inputs, dataset, batch)
        options: dict[str, Any] = {
            "prefix": prefix,
            "quarantine_prefix": quarantine_prefix("serving", dataset, batch),
            "chunk_rows": chunk_rows,
            "id_column": id_column,
            "rename": rename,
            "suite": suite,
            "validation": validation,
        }
        began = time.perf_counter()
        if workers == 1 and threads is None:
            results = score_partition(settings, ref, inputs, **options)
        else:
            results = score_partitions.with_options(
                task_runner=dask_runner(workers, settings.dask_address)
            )(settings, ref, inputs, workers, options)
        seconds = time.perf_counter() - began
        manifest, counts = write_manifest(settings, prefix, ref, source, results)
        if staged:
            drop_staged_input(settings, dataset, batch)
        scored = counts["rows_in"] - sum(r["rows_in"] for r in results if r["skipped"])
        metrics = {**counts, "seconds": seconds, "rows_per_second": scored / max(seconds, 1e-9)}
        for key, value in metrics.items():
            client.log_metric(run.run_id, key, float(value))
        client.set_tag(run.run_id, "mlsys.predictions", settings.s3_uri(prefix))
        tracked.summarize(
            (
                f"# Batch inference {dataset}/{batch}\n\n"
                f"| rows in | predicted | quarantined | chunks | skipped (done before) | rows/s |\n"
                f"|---|---|---|---|---|---|\n"
                f"| {counts['rows_in']} | {counts['rows_out']} | {counts['rows_quarantined']} "
                f"| {counts['chunks']} | {counts['chunks_skipped']} "
                f"| {metrics['rows_per_second']:,.0f} |\n\n"
                f"Model: `{ref.uri}` (run {ref.run_id})  \nInput: `{source}`  \n"
                f"Predictions: `{settings.s3_uri(prefix)}`  \nManifest: `{manifest}`  \n"
                f"Resumed: {'yes' if resumed else 'no'}  \nMLflow run: [{run.run_id}]({run.url})\n"
            ),
            description=f"Predictions of {ref.uri} for {source}",
        )
    return manifest


if __name__ == "__main__":
    batch_infer()
