"""Pipeline stages as cached Prefect tasks, so that running a pipeline again resumes it.

Each stage (a subflow such as ``ingest`` or ``train``) runs inside a Prefect task whose
cache key is a hash of the stage's inputs: its parameters and a fingerprint of the data it
reads (the ETag of an S3 object, or the sizes and times of local files). The task's result
(the stage's output: URIs, a model version) is persisted to the stack's S3 bucket under
``prefect-results/``, Prefect's result storage. A later flow run whose stage has the same
key takes the stored result instead of running the stage again: re-running a pipeline
that failed at ``train`` starts at ``train``.

A stored result is only taken while what it points at still exists (the S3 object, the
model version); otherwise the stage runs again and replaces it. ``refresh=True`` runs
every stage regardless.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

import mlsys
from mlsys.data.s3 import object_etag
from mlsys.settings import Settings
from tasks.retry import tolerant
from tasks.tracking import current_run, stage_metrics

RESULTS_FOLDER = "prefect-results"
"""Folder of the bucket that holds Prefect's persisted stage results."""

CACHE_VERSION = "1"
"""Part of every cache key: bump it when what a stage produces changes meaning."""


RESULTS_BLOCK = "mlsys-results"
"""Name of the ``s3-bucket`` block that flow runs save and use as result storage."""


def result_storage(settings: Settings) -> S3Bucket:
    """Prefect result storage in ``s3://<bucket>/prefect-results/`` on the configured S3
    endpoint (SeaweedFS locally), saved as the block ``s3-bucket/mlsys-results`` (Prefect
    only reads results back through a saved block).

    The block holds the bucket and endpoint, never keys: boto3 takes them from the flow
    run's environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, which the stack
    gives its worker), so no secret is stored on the Prefect server.
    """
    if settings.s3_access_key is not None and settings.s3_secret_key is not None:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", settings.s3_access_key.get_secret_value())
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", settings.s3_secret_key.get_secret_value())
    block = S3Bucket(
        bucket_name=settings.bucket,
        bucket_folder=RESULTS_FOLDER,
        credentials=AwsCredentials(
            region_name=settings.s3_region,
            aws_client_parameters=AwsClientParameters(
                endpoint_url=settings.s3_endpoint, config={"s3": {"addressing_style": "path"}}
            ),
        ),
    )
    block.save(RESULTS_BLOCK, overwrite=True)
    return block


def cache_key(stage: str, inputs: dict[str, Any]) -> str:
    """The cache key of ``stage`` run on ``inputs``: stable across processes and
    machines, different when any input, ``CACHE_VERSION`` or mlsys's version differs."""
    payload = json.dumps(
        {"stage": stage, "inputs": inputs, "cache": CACHE_VERSION, "mlsys": mlsys.__version__},
        sort_keys=True,
        default=str,
    )
    return f"stage-{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


def _stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return cache_key(parameters["stage"], parameters["inputs"])


def path_fingerprint(source: str | None) -> Any:
    """What identifies the content of a local file or folder source: each file's relative
    path, size and modification time. Anything else (a URL, None) is its own fingerprint."""
    if source is None:
        return None
    path = Path(source)
    if not path.exists():
        return source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [
        [str(p.relative_to(path) if p != path else p.name), p.stat().st_size, p.stat().st_mtime_ns]
        for p in files
    ]


def s3_fingerprint(settings: Settings, uri: str) -> dict[str, Any]:
    """The URI and the ETag of its object (None when there is none). Rides out an S3
    outage (``tasks.retry``)."""
    return {"uri": uri, "etag": object_etag(tolerant(settings.s3_client()), uri)}


def s3_object_exists(settings: Settings, uri: str) -> bool:
    """Whether there is an object at ``uri``: a stored stage result pointing at it holds.
    Rides out an S3 outage (``tasks.retry``)."""
    return object_etag(tolerant(settings.s3_client()), uri) is not None


class StageAborted(BaseException):
    """A stage's process was told to exit (``SystemExit``) while the stage ran.

    Raised in place of the ``SystemExit`` so that the pipeline run's crash message names
    the stage: Prefect records every ``SystemExit`` as "Execution was aborted by Python
    system exit call.", naming nothing. A ``BaseException``, like ``SystemExit``, so the
    run still ends CRASHED (an outside cause), not FAILED. Seen when the worker that
    started the run dies: the run's output is a pipe nobody reads any more, and the next
    log line exits the process (rich raises ``SystemExit`` on the broken pipe).
    """


@contextmanager
def naming_stage(stage: str) -> Iterator[None]:
    """Re-raise a ``SystemExit`` of the block as :class:`StageAborted` naming ``stage``."""
    try:
        yield
    except SystemExit as exc:
        raise StageAborted(
            f"the process exited (SystemExit {exc.code!r}) during stage {stage}"
        ) from exc


@task(
    name="stage",
    persist_result=True,
    cache_key_fn=_stage_cache_key,
    task_run_name="stage-{stage}",
)
def run_stage(
    stage: str, inputs: dict[str, Any], call: Callable[..., Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Run one stage (``call(**kwargs)``, a subflow) and return its output with the row the
    pipeline summary shows for it (its MLflow run, row counts), for a later run that reuses
    it. ``inputs`` only makes the cache key."""
    output = call(**kwargs)
    row: dict[str, Any] = {"stage": stage}
    parent = current_run()
    if parent is not None:
        rows = [r for r in stage_metrics(parent) if r["stage"] == stage]
        if rows:
            row = rows[-1]
    return {"output": output, "row": row}


@dataclass
class Stages:
    """Runs a pipeline's stages through ``run_stage``, reusing stored results.

    ``reused`` and ``rows`` record, in order, which stages were reused and each stage's
    summary row (``reused: True`` on reused ones)."""

    settings: Settings
    refresh: bool = False
    reused: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    _storage: S3Bucket | None = field(default=None, repr=False)

    def run(
        self,
        stage: str,
        call: Callable[..., Any],
        *,
        inputs: dict[str, Any],
        still_valid: Callable[[Any], bool] = lambda output: True,
        **kwargs: Any,
    ) -> Any:
        """``call(**kwargs)``, or the stored output of an earlier run with the same
        ``inputs`` while ``still_valid(output)`` holds."""
        if self._storage is None:  # saved once per pipeline run, not once per stage
            self._storage = result_storage(self.settings)
        refresh = self.refresh
        while True:
            with naming_stage(stage):
                state = run_stage.with_options(result_storage=self._storage, refresh_cache=refresh)(
                    stage, inputs, call, kwargs, return_state=True
                )
            result = state.result()
            cached = state.name == "Cached"
            if not cached or still_valid(result["output"]):
                break
            get_run_logger().info(
                "stored result of %s points at something that is gone; running it again", stage
            )
            refresh = True
        row = dict(result["row"], reused=cached)
        if cached:
            self.reused.append(stage)
            get_run_logger().info(
                "%s: reused the result of an earlier run with the same inputs (%s)",
                stage,
                row.get("url", "no MLflow run recorded"),
            )
        self.rows.append(row)
        return result["output"]
