"""Tasks of `batch_infer`: find the model, list (and, for a cluster elsewhere, stage) the
input, score partitions, write the manifest."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlsys.data.catalog import staged_input_key, staging_prefix
from mlsys.data.definition import DatasetDefinition
from mlsys.data.s3 import S3Error, S3Uri, delete_prefix, get_bytes, list_keys, put_bytes
from mlsys.inference.batch import ChunkResult, count_chunks, iter_chunks, score_chunks
from mlsys.inference.inputs import InputFile, is_s3, resolve_inputs
from mlsys.memory import bound_streaming_memory
from mlsys.settings import Settings
from mlsys.validation.checkpoint import Mode, ValidationFailed, run_checkpoint
from tasks.retry import outage_tolerant, ride_out, tolerant
from tasks.validate import dataset_suite

MANIFEST = "_manifest.json"
STARTED = "_started.json"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, resolved once so every chunk uses the same one.

    ``inputs`` and ``outputs`` are its signature's ``(column, MLflow type)`` pairs;
    ``classes`` the class names it was logged with (None: a model that answers with class
    indices)."""

    name: str
    version: str
    run_id: str
    uri: str
    inputs: tuple[tuple[str, str], ...]
    training_batch: str | None
    outputs: tuple[tuple[str, str], ...] = ()
    classes: tuple[str, ...] | None = None

    def constants(self) -> dict[str, str]:
        return {"model_name": self.name, "model_version": self.version, "run_id": self.run_id}


@task(name="resolve-model", cache_policy=NO_CACHE)
@outage_tolerant
def resolve_model(
    settings: Settings,
    name: str,
    alias: str,
    version: str | None,
    classes: Sequence[str] | None = None,
) -> ModelRef:
    """The model version ``version`` of ``name``, else the one ``alias`` points at, with
    its signature, class names and the labeled batch it was trained on (for the skew check).

    Raises:
        ValueError: no such model, version or alias; no input signature; or the model was
            logged with class names other than ``classes`` (the dataset's), all named.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = tolerant(MlflowClient(settings.tracking_uri))
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        raise ValueError(f"no registered model {name!r} in {settings.tracking_uri}") from exc
    try:
        mv = (
            client.get_model_version(name, version)
            if version
            else client.get_model_version_by_alias(name, alias)
        )
    except MlflowException as exc:
        if version:
            raise ValueError(f"model {name!r} has no version {version!r}") from exc
        aliases = sorted(registered.aliases) if registered.aliases else []
        raise ValueError(
            f"model {name!r} has no alias {alias!r}; its aliases are {aliases or 'none'}"
        ) from exc
    uri = f"models:/{name}/{mv.version}"
    mlflow.set_tracking_uri(settings.tracking_uri)
    info = mlflow.models.get_model_info(uri)
    signature = info.signature
    if signature is None or signature.inputs is None:
        raise ValueError(f"{uri} has no input signature; batch inference needs one")
    inputs = tuple((str(c.name), str(c.type.name)) for c in signature.inputs.inputs)
    outputs = (
        tuple((str(c.name), str(c.type.name)) for c in signature.outputs.inputs)
        if signature.outputs is not None
        else ()
    )
    logged_classes = (info.metadata or {}).get("class_names")
    model_classes = None if logged_classes is None else tuple(str(c) for c in logged_classes)
    if model_classes is not None and classes is not None and model_classes != tuple(classes):
        raise ValueError(
            f"{uri} predicts classes {list(model_classes)}, but the dataset's classes are "
            f"{list(classes)}; score with a model trained on this dataset"
        )
    run = client.get_run(str(mv.run_id))
    ref = ModelRef(
        name=name,
        version=str(mv.version),
        run_id=str(mv.run_id),
        uri=uri,
        inputs=inputs,
        training_batch=run.data.params.get("labeled_batch") or None,
        outputs=outputs,
        classes=model_classes,
    )
    get_run_logger().info(
        "scoring with %s (%s), inputs %s", uri, f"@{alias}" if not version else "pinned", inputs
    )
    return ref


INPUT_SUFFIXES = (".parquet", ".csv")


@task(name="list-input", cache_policy=NO_CACHE)
@outage_tolerant
def list_input(settings: Settings, source: str) -> list[str]:
    """The input files of ``source``, in scoring order: an s3:// object, or every
    .parquet/.csv under an s3:// prefix (as s3:// URIs, sorted by key); a local file, or
    every .parquet/.csv in a local folder (as paths, sorted by name). Nothing is read.

    Raises:
        ValueError: a local ``source`` that does not exist or holds no input files.
        S3Error: an S3 ``source`` with no input (permanent) or that cannot be listed.
    """
    if is_s3(source):
        uri = S3Uri.parse(source)
        if uri.key.endswith(INPUT_SUFFIXES):
            return [str(uri)]
        prefix = uri.key.rstrip("/") + "/"
        keys = sorted(
            k
            for _, k in list_keys(settings.s3_client(), uri.bucket, prefix)
            if k.endswith(INPUT_SUFFIXES)
        )
        if not keys:
            raise S3Error(f"no .parquet or .csv input at {source}", permanent=True)
        return [f"s3://{uri.bucket}/{key}" for key in keys]
    path = Path(source)
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.suffix.lower() in INPUT_SUFFIXES)
        if not paths:
            raise ValueError(f"no .parquet or .csv files in {path}")
        return [str(p) for p in paths]
    if path.is_file():
        return [str(path)]
    raise ValueError(f"input {source!r} is neither an s3:// URI nor an existing file or folder")


@task(name="stage-input", cache_policy=NO_CACHE)
@outage_tolerant
def stage_input(settings: Settings, inputs: list[str], dataset: str, batch: str) -> list[str]:
    """``inputs`` readable from any host: each local file is put in S3 (streamed, in
    parts) under staging/<dataset>/<batch>/, numbered by its place so the order and so
    the chunks' names stay those of the local input; s3:// inputs are kept as they are."""
    client = settings.s3_client()
    staged = []
    for file, location in enumerate(inputs):
        if is_s3(location):
            staged.append(location)
            continue
        path = Path(location)
        key = staged_input_key(dataset, batch, file, path.name)
        try:
            client.upload_file(str(path), settings.bucket, key)
        except Exception as exc:
            raise S3Error(f"cannot write {settings.s3_uri(key)}: {exc}") from exc
        staged.append(settings.s3_uri(key))
    get_run_logger().info(
        "staged %d local input file(s) under %s",
        sum(not is_s3(x) for x in inputs),
        settings.s3_uri(staging_prefix(dataset, batch)),
    )
    return staged


@task(name="drop-staged-input", cache_policy=NO_CACHE)
@outage_tolerant
def drop_staged_input(settings: Settings, dataset: str, batch: str) -> int:
    """Remove what :func:`stage_input` put in S3 for ``batch``; how many objects."""
    return delete_prefix(settings.s3_client(), settings.bucket, staging_prefix(dataset, batch))


def input_files(settings: Settings, inputs: Sequence[str]) -> list[InputFile]:
    """The files of ``inputs`` (:func:`list_input`'s), S3 objects read in place."""
    return resolve_inputs(inputs, settings.s3_client)


class S3Sink:
    """Parts under an S3 prefix; each put is atomic, so a part is whole or absent."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.settings = settings
        self.client = settings.s3_client()
        self.prefix = prefix.rstrip("/") + "/"

    def uri(self, name: str) -> str:
        return self.settings.s3_uri(self.prefix + name)

    def rows(self, name: str) -> int | None:
        try:
            self.client.head_object(Bucket=self.settings.bucket, Key=self.prefix + name)
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise S3Error(f"cannot look up {self.uri(name)}: {exc}") from exc
        data = get_bytes(self.client, self.uri(name))
        return int(pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows)

    def write(self, name: str, data: bytes) -> None:
        put_bytes(self.client, self.uri(name), data, "application/vnd.apache.parquet")


@functools.lru_cache(maxsize=4)
def _load_model(tracking_uri: str, uri: str) -> Any:
    """One loaded model per process and version (Dask workers score many chunks)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(uri)


def serving_suite(definition: DatasetDefinition) -> dict[str, Any]:
    """The dataset's serving suite, ``datasets/<name>/suites/serving.json``.

    Raises:
        FileNotFoundError: the dataset has none; the message says how to make one.
    """
    return dataset_suite(definition.name, "serving")[0]


def serving_check(suite: Mapping[str, Any], mode: Mode) -> Any:
    """A chunk check with the serving ``suite``: rows failing row rules are quarantined
    (in ``fail`` mode they fail the run); batch-level failures fail the run."""

    def check(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        report = run_checkpoint(frame, suite, mode=mode)
        if not report.ok:
            raise ValidationFailed(report)
        return report.passed, report.quarantined

    return check


@task(name="score-partition", cache_policy=NO_CACHE)
@outage_tolerant
def score_partition(
    settings: Settings,
    ref: ModelRef,
    inputs: list[str],
    *,
    prefix: str,
    quarantine_prefix: str,
    chunk_rows: int,
    id_column: str | None,
    rename: dict[str, str],
    suite: dict[str, Any],
    validation: Mode,
    partition: tuple[int, int] = (0, 1),
) -> list[dict[str, Any]]:
    """Score this partition's chunks of the input with the model, each checked with the
    serving ``suite``; skip chunks done before.

    ``inputs`` are :func:`list_input`'s locations: this task reads its own chunks from
    them (S3 objects in place, with ranged reads), on whichever host it runs, and writes
    its parts to S3; only locations and counts pass through the scheduler."""
    logger = get_run_logger()
    # A worker on another host knows the MLflow server only from these settings.
    settings.export_mlflow_credentials()
    # Before the model and the checks allocate anything, so that freed blocks go back to
    # the system from the start (score_chunks applies it too, for callers outside a task).
    bound_streaming_memory()
    model = _load_model(settings.tracking_uri, ref.uri)

    def progress(result: ChunkResult) -> None:
        verb = "skipped (done before)" if result.skipped else f"scored in {result.seconds:.2f} s"
        logger.info(
            "%s: %d rows in, %d predicted, %d quarantined; %s",
            result.name,
            result.rows_in,
            result.rows_out,
            result.rows_quarantined,
            verb,
        )

    results = score_chunks(
        iter_chunks(input_files(settings, inputs), chunk_rows, rename=rename),
        model.predict,
        S3Sink(settings, prefix),
        inputs=ref.inputs,
        outputs=ref.outputs or None,
        id_column=id_column,
        constants=ref.constants(),
        check=serving_check(suite, validation),
        quarantine=S3Sink(settings, quarantine_prefix),
        partition=partition,
        progress=progress,
    )
    return [r.to_dict() for r in results]


@task(name="claim-output", cache_policy=NO_CACHE)
@outage_tolerant
def claim_output(
    settings: Settings, prefix: str, ref: ModelRef, source: str, chunk_rows: int
) -> bool:
    """Record which model and chunking fill ``prefix``; a re-run must match them (its
    parts are reused), and a prefix finished by another model version is refused.
    Returns whether earlier parts exist (a resumed run)."""
    client = settings.s3_client()
    claim = {"model_uri": ref.uri, "run_id": ref.run_id, "source": source, "chunk_rows": chunk_rows}
    existing = [k for _, k in list_keys(client, settings.bucket, prefix)]
    started = prefix + STARTED
    if started in existing:
        before = json.loads(get_bytes(client, settings.s3_uri(started)))
        if before != claim:
            raise ValueError(
                f"s3://{settings.bucket}/{prefix} holds predictions of {before}, not {claim}; "
                "choose another batch id"
            )
    else:
        put_bytes(client, settings.s3_uri(started), json.dumps(claim).encode(), "application/json")
    return any(k.endswith(".parquet") for k in existing)


@task(name="write-manifest", cache_policy=NO_CACHE)
@outage_tolerant
def write_manifest(
    settings: Settings, prefix: str, ref: ModelRef, source: str, results: list[dict[str, Any]]
) -> tuple[str, dict[str, int]]:
    """The manifest that marks the predictions complete: model, source, counts, parts."""
    counts = {
        "rows_in": sum(r["rows_in"] for r in results),
        "rows_out": sum(r["rows_out"] for r in results),
        "rows_quarantined": sum(r["rows_quarantined"] for r in results),
        "chunks": len(results),
        "chunks_skipped": sum(bool(r["skipped"]) for r in results),
    }
    if counts["rows_in"] != counts["rows_out"] + counts["rows_quarantined"]:
        raise RuntimeError(f"row count mismatch: {counts}")
    manifest = {
        "model": asdict(ref),
        "source": source,
        **counts,
        "parts": sorted(results, key=lambda r: r["name"]),
    }
    uri = settings.s3_uri(prefix + MANIFEST)
    put_bytes(
        settings.s3_client(), uri, json.dumps(manifest, indent=2).encode(), "application/json"
    )
    return uri, counts


def first_chunk(
    settings: Settings, inputs: list[str], chunk_rows: int, rename: dict[str, str]
) -> pd.DataFrame:
    """The input's first chunk: what the serving checkpoint and skew check look at in
    full (Data Docs, skew against the training data) before anything is scored."""
    files = input_files(settings, inputs)
    return ride_out(lambda: next(iter(iter_chunks(files, chunk_rows, rename=rename))).read())


def chunk_count(settings: Settings, inputs: list[str], chunk_rows: int) -> int:
    """How many chunks the input makes (:func:`mlsys.inference.batch.count_chunks`:
    Parquet footers; CSV line counts, streamed)."""
    files = input_files(settings, inputs)
    return ride_out(count_chunks, files, chunk_rows)
