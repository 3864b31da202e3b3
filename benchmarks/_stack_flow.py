"""The batch_infer flow run for real, for benchmarks/batch_infer_flow.py: a private stack
(SeaweedFS, MLflow, Prefect server and worker on free ports, in the scratch folder), the
input put in its S3 bucket, and the ``batch_infer`` flow called in a fresh process with the
stack's environment, as a user's script or a deployment's process would: the Prefect API
records the flow and task runs, the flow opens its MLflow run, checks the first chunk with
the serving suite (Data Docs, skew), claims the output, scores every chunk on the Dask
cluster it starts, PUTs the parts to S3 and writes the manifest.

The stack's start is not timed (a deployment keeps it running between runs); the flow's
process is, from its start to its exit. Its parts are then fetched from S3 into the layout
``batch_infer.verify`` checks, so the run is held to the same equalities as the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batch_infer import ALIAS, MODEL_NAME

DATASET = "youtube-spam"


@contextmanager
def private_stack(folder: Path) -> Iterator[Any]:
    """A stack of its own in ``folder`` on free ports, up until the block ends (then down),
    with its MLflow credential in this process's environment."""
    from infra.config import private_stack_settings
    from infra.stack import down, up

    settings = private_stack_settings(folder)
    try:
        settings = up(settings, timeout_s=240, say=lambda line: None)
        settings.export_mlflow_credentials()
        yield settings
    finally:
        down(settings, say=lambda line: None)


def put_input(settings: Any, path: Path, batch: str) -> str:
    """``path`` uploaded as the raw batch ``batch`` of the dataset; its s3:// URI."""
    from mlsys.data.catalog import raw_key

    key = raw_key(DATASET, batch)
    settings.s3_client().upload_file(str(path), settings.bucket, key)
    return str(settings.s3_uri(key))


def run_flow_run(spec: dict[str, Any]) -> dict[str, Any]:
    """In the fresh process: the ``batch_infer`` flow on the stack named by the
    environment, then its manifest's counts (read back from S3)."""
    from flows.batch_infer import batch_infer
    from flows.options import InferOptions
    from infra.config import StackSettings
    from infra.prefect_api import prefect_settings
    from mlsys.data.s3 import get_bytes

    marks = {"imported": time.monotonic()}
    settings = StackSettings.load()
    with prefect_settings(settings):
        manifest_uri = batch_infer(
            source=spec["source"],
            dataset=DATASET,
            batch=spec["batch"],
            model_name=MODEL_NAME,
            alias=ALIAS,
            inference=InferOptions(chunk_rows=spec["chunk_rows"], workers=spec["workers"] or None),
        )
    marks["done"] = time.monotonic()
    manifest = json.loads(get_bytes(settings.s3_client(), manifest_uri))
    counts = ("rows_in", "rows_out", "rows_quarantined", "chunks", "chunks_skipped")
    return {
        "marks": marks,
        "manifest": manifest_uri,
        **{key: manifest[key] for key in counts},
        "steady_s": None,  # not separable from outside the flow: see the flow path's
    }


def fetch_parts(settings: Any, batch: str, out: Path) -> None:
    """The run's prediction and quarantine parts, from S3 into ``out/predictions`` and
    ``out/quarantine`` (the layout ``batch_infer.verify`` reads)."""
    from mlsys.data.catalog import predictions_prefix, quarantine_prefix
    from mlsys.data.s3 import list_keys

    s3 = settings.s3_client()
    for folder, prefix in (
        ("predictions", predictions_prefix(DATASET, batch)),
        ("quarantine", quarantine_prefix("serving", DATASET, batch)),
    ):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for _, key in list_keys(s3, settings.bucket, prefix, suffix=".parquet"):
            name = key.rsplit("/", 1)[-1]
            if name.startswith("part-"):
                s3.download_file(settings.bucket, key, str(out / folder / name))
