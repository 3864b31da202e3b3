"""Batch scoring with the registered spam model: mlsys's streaming scorer against one pyfunc call.

Setup, once, in this process: a local MLflow registry without a server (SQLite tracking
store and a file artifact folder in a scratch directory; ``--tracking-uri`` uses an
existing server instead), the pipeline's default text classifier (flow ``train``: a linear
model over 2**15 hashed word 1-2-gram and character 1-4-gram features) logged with
``log_text_classifier`` as registered model ``bench-spam``, and
the alias ``champion`` set on that version. The weights are random (seeded), not trained:
the cost of scoring is featurizing the text and one forward pass through a network of fixed
shape, which does not depend on what the weights are.

The input is the 1,956 YouTube comments (read_dataset) replicated to ``--sizes`` rows, a
replica suffix on ``comment_id`` (unique but for the three ids the source itself repeats,
per replica), written as one Parquet file with row groups of
``--chunk-rows`` rows. Every configuration scores that same file:

- baseline: ``mlflow.pyfunc.load_model("models:/bench-spam@champion")``, then timed:
  ``pd.read_parquet(path)`` and ``model.predict(df[["text"]])`` on the whole DataFrame (it
  writes nothing; its predictions are saved after the timing, for the comparison below);
- stream 1w checked: ``score_chunks(iter_chunks([path], chunk_rows), model.predict,
  FolderSink(...), check=serving_check(suite, "quarantine"), quarantine=FolderSink(...))``
  as the batch_infer flow calls it (the youtube-spam dataset's serving suite through GX on
  every chunk, one prediction part written per chunk), timed from the first chunk read to
  the last part written;
- stream 1w unchecked: the same with ``check=None``, to show what the validation costs;
- stream 2w checked: two processes (multiprocessing, spawn), each loading the model and
  scoring ``partition=(i, 2)`` of the chunks; the time is from the moment both start (they
  load and warm up first, then meet at a barrier) until the last one finishes.

Each measurement runs in fresh processes: model loaded from the registry, one warm-up call
of the predict function (and of the check, where used) on the first 1,000 rows, then
timed. Runs are repeated ``--repeat`` times, in rounds of all four configurations (fresh
processes each time; best time kept), except sizes of ``--once-from`` rows and more, which
run once to keep the whole benchmark within about 20 minutes. The table's ``load`` is the
highest 1-minute load average seen before any of a configuration's runs: other work on the
machine slows every figure. Inputs of one chunk (10k rows at the default 50k-row chunks)
give the second worker nothing to do. Torch threads: one-worker runs keep torch's default
(reported); each of the two workers is set to ``--threads-per-worker`` (default 1) so that
two processes do not oversubscribe the CPUs.

Streaming processes start with ``mlsys.memory.STREAMING_ENV`` in their environment
(Arrow's C++ memory pool as the system allocator), as the flow's Dask workers and its
deployment do; the baseline's process keeps Arrow's default (mimalloc).

Memory is the peak resident set size (the kernel's high-water mark, reset just before;
psutil sampling every 5 ms where that is missing) during the timed part minus the RSS just
before it (before the Parquet read for the baseline, before the first chunk for the
streaming scorer); for two workers, the sum of both processes' deltas. The absolute peak
(model, libraries and all) is kept as well. Streaming workers first apply
``mlsys.memory.bound_streaming_memory()``, as the flow's scoring task does; the baseline
keeps the allocators' defaults, as a user calling ``predict`` would.

Before any timing counts, each streaming run's outputs are checked: rows in = rows
predicted + rows quarantined (from the results and from the parts on disk), and its
predictions, matched to the input's rows on ``comment_id`` and occurrence, have the
baseline's labels and probabilities (allclose) at every size.

Also measured: registry load latency, the wall time from ``mlflow.pyfunc.load_model(uri)``
to the first prediction on one row in a fresh process (mlflow and pandas already
imported), best of ``--latency-repeat`` processes, for ``models:/bench-spam@champion`` and
``models:/bench-spam/<version>``; and a profile of one checked single-worker run at
``--profile-rows`` rows with every stage timed (Parquet read, GX check, cast to the
signature, MLflow's input handling, hashing featurizer, dense matrix, network, Parquet
encode and write), to say where the time goes.

Targets (from the spec): streaming throughput >= the whole-DataFrame pyfunc baseline, and
the streaming scorer's peak RSS flat within 20% from 100k to 1M rows where the baseline's
grows.

Why one module: the script is both the parent that compares the configurations and each
measured process (``measure`` runs this file again with ``--worker``), so what a worker does
and how its figures are read stay side by side; this docstring, the method, is about 75
lines of the length.

    .venv/bin/python benchmarks/batch_infer.py [--sizes 10000,100000,1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _measure import peak_rss_during, rss

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tasks/ is not installed; the flow imports it from the root
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "youtube-spam"
RESULTS = Path(__file__).resolve().parent / "results" / "batch_infer.json"
MODEL_NAME = "bench-spam"
ALIAS = "champion"
WARMUP_ROWS = 1_000
CONFIGS = ("baseline", "stream_1w_checked", "stream_1w_unchecked", "stream_2w_checked")
LABELS = {
    "baseline": "pyfunc whole DataFrame",
    "stream_1w_checked": "stream 1 worker, checked",
    "stream_1w_unchecked": "stream 1 worker, no check",
    "stream_2w_checked": "stream 2 workers, checked",
}
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


# --- memory -----------------------------------------------------------------------------------


# --- setup: registry and input (parent process) -----------------------------------------------


def register_model(tracking_uri: str, scratch: Path) -> dict[str, Any]:
    """Log the seeded random classifier, register it as ``bench-spam`` and alias it."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from mlsys.data import load_dataset, read_dataset
    from mlsys.models.pyfunc import log_text_classifier
    from mlsys.models.text import build_text_classifier, pipeline_featurizer

    client = MlflowClient(tracking_uri)
    name = "bench-batch-infer"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    elif tracking_uri.startswith("sqlite:"):
        artifacts = (scratch / "mlartifacts").resolve()
        experiment_id = client.create_experiment(name, artifact_location=artifacts.as_uri())
    else:
        experiment_id = client.create_experiment(name)
    run_id = client.create_run(experiment_id).info.run_id
    torch.manual_seed(0)
    featurizer, hidden = pipeline_featurizer(), []
    n_features = featurizer.n_features
    model = build_text_classifier(n_features=n_features, hidden=hidden)
    texts = read_dataset(load_dataset("youtube-spam"), str(DATA))["text"].head(5).tolist()
    info = log_text_classifier(
        model,
        featurizer,
        run_id=run_id,
        tracking_uri=tracking_uri,
        registered_model_name=MODEL_NAME,
        input_example_texts=texts,
    )
    client.set_terminated(run_id)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL_NAME, ALIAS, version)
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    return {
        "tracking_uri": tracking_uri,
        "name": MODEL_NAME,
        "version": version,
        "run_id": run_id,
        "alias_uri": f"models:/{MODEL_NAME}@{ALIAS}",
        "version_uri": f"models:/{MODEL_NAME}/{version}",
        "n_features": n_features,
        "hidden": hidden,
        "char_ngrams": list(featurizer.char_ngram_range or []),
        "weights": "random, torch.manual_seed(0) (untrained: scoring cost does not depend on them)",
    }


def write_input(rows: int, path: Path, row_group_rows: int) -> None:
    """``rows`` rows of the YouTube comments, ids unique per replica, as one Parquet file."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlsys.data import load_dataset, read_dataset

    comments = read_dataset(load_dataset("youtube-spam"), str(DATA))
    position = np.arange(rows)
    df = comments.iloc[position % len(comments)].reset_index(drop=True)
    replica = pd.Series(position // len(comments)).astype(str).astype("string")
    df["comment_id"] = df["comment_id"] + "-" + replica
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path, row_group_size=row_group_rows)


# --- measurements, each in its own process ----------------------------------------------------


def _load(uri: str) -> Any:
    import mlflow

    return mlflow.pyfunc.load_model(uri)


def _serving_check() -> Any:
    """The chunk check of the batch_infer flow: the dataset's serving suite, quarantining."""
    from mlsys.data.definition import load_dataset
    from tasks.batch_infer import serving_check, serving_suite

    return serving_check(serving_suite(load_dataset("youtube-spam")), "quarantine")


def _warmup_frame(path: Path) -> Any:
    from mlsys.inference.batch import iter_chunks

    return next(iter(iter_chunks([path], WARMUP_ROWS))).read()


def run_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Read the whole file and score it with one pyfunc call."""
    import pandas as pd
    import torch

    model = _load(spec["model_uri"])
    model.predict(_warmup_frame(Path(spec["input"]))[["text"]])
    timings: dict[str, float] = {}

    def run() -> Any:
        start = time.perf_counter()
        df = pd.read_parquet(spec["input"])
        timings["read_s"] = time.perf_counter() - start
        out = model.predict(df[["text"]])
        timings["seconds"] = time.perf_counter() - start
        timings["predict_s"] = timings["seconds"] - timings["read_s"]
        return df["comment_id"], out

    before = rss()
    (ids, out), peak = peak_rss_during(run)
    if spec.get("save"):
        out.assign(comment_id=ids.to_numpy()).to_parquet(spec["save"], index=False)
    return {
        **timings,
        "rows_in": len(ids),
        "rows_out": len(out),
        "rows_quarantined": 0,
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "peak_rss_delta_bytes": peak - before,
        "torch_threads": torch.get_num_threads(),
    }


def _score(spec: dict[str, Any], partition: tuple[int, int], barrier: Any = None) -> dict[str, Any]:
    """Load the model, warm up, then stream-score this partition of the input."""
    import torch

    from mlsys.inference.batch import FolderSink, iter_chunks, score_chunks
    from mlsys.memory import bound_streaming_memory

    bound_streaming_memory()  # as the flow's scoring task does, before loading anything
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    model = _load(spec["model_uri"])
    path = Path(spec["input"])
    warm = _warmup_frame(path)
    check = _serving_check() if spec["checked"] else None
    if check is not None:
        check(warm)
    model.predict(warm[["text"]].astype(str).astype(object))
    out = Path(spec["out"])
    sink, quarantine = FolderSink(out / "predictions"), FolderSink(out / "quarantine")
    if barrier is not None:
        barrier.wait()
    clock: dict[str, float] = {}

    def run() -> Any:
        clock["start"] = time.monotonic()
        results = score_chunks(
            iter_chunks([path], spec["chunk_rows"]),
            model.predict,
            sink,
            inputs=[("text", "string")],
            id_column="comment_id",
            constants=spec["constants"],
            check=check,
            quarantine=quarantine,
            partition=partition,
        )
        clock["end"] = time.monotonic()
        return results

    before = rss()
    results, peak = peak_rss_during(run)
    return {
        "seconds": clock["end"] - clock["start"],
        "start": clock["start"],
        "end": clock["end"],
        "chunks": len(results),
        "rows_in": sum(r.rows_in for r in results),
        "rows_out": sum(r.rows_out for r in results),
        "rows_quarantined": sum(r.rows_quarantined for r in results),
        "chunks_skipped": sum(r.skipped for r in results),
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "peak_rss_delta_bytes": peak - before,
        "torch_threads": torch.get_num_threads(),
    }


def run_stream(spec: dict[str, Any]) -> dict[str, Any]:
    return _score(spec, (0, 1))


def _partition_worker(spec: dict[str, Any], index: int, barrier: Any, queue: Any) -> None:
    """One of the two spawned workers: its partition's figures, or its traceback."""
    os.environ.update(QUIET_ENV)
    try:
        queue.put((index, _score(spec, (index, 2), barrier)))
    except BaseException:
        barrier.abort()
        queue.put((index, {"error": traceback.format_exc()}))


def run_stream_parallel(spec: dict[str, Any], workers: int = 2) -> dict[str, Any]:
    """``workers`` spawned processes, one partition each; wall time from the common start."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    began = time.monotonic()
    procs = [
        ctx.Process(target=_partition_worker, args=(spec, i, barrier, queue))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    parts = dict(queue.get() for _ in procs)
    for proc in procs:
        proc.join()
    failed = [p["error"] for p in parts.values() if "error" in p]
    if failed:
        raise RuntimeError("a worker failed:\n" + "\n".join(failed))
    each = [parts[i] for i in range(workers)]
    start, end = min(p["start"] for p in each), max(p["end"] for p in each)
    return {
        "seconds": end - start,
        "seconds_with_process_start_and_model_load": end - began,
        "chunks": sum(p["chunks"] for p in each),
        "rows_in": sum(p["rows_in"] for p in each),
        "rows_out": sum(p["rows_out"] for p in each),
        "rows_quarantined": sum(p["rows_quarantined"] for p in each),
        "chunks_skipped": sum(p["chunks_skipped"] for p in each),
        "peak_rss_delta_bytes": sum(p["peak_rss_delta_bytes"] for p in each),
        "peak_rss_bytes": sum(p["peak_rss_bytes"] for p in each),
        "workers": [
            {k: v for k, v in p.items() if k not in ("start", "end")} | {"index": i}
            for i, p in enumerate(each)
        ],
        "torch_threads": each[0]["torch_threads"],
    }


def run_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds from ``load_model(uri)`` to the first prediction on one row."""
    import mlflow
    import pandas as pd

    one = pd.DataFrame({"text": ["check out my channel for free gift cards"]})
    start = time.perf_counter()
    model = mlflow.pyfunc.load_model(spec["model_uri"])
    loaded = time.perf_counter()
    model.predict(one)
    end = time.perf_counter()
    return {"seconds": end - start, "load_s": loaded - start, "first_predict_s": end - loaded}


def _timed(stages: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)  # keeps inspect.signature, which MLflow reads off predict
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[name] += time.perf_counter() - start

    return wrapper


def run_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """One checked single-worker run with every stage of a chunk's path timed."""
    import mlsys.inference.batch as batch
    import mlsys.models.text as text_module

    stages: dict[str, float] = defaultdict(float)
    model = _load(spec["model_uri"])
    path = Path(spec["input"])
    warm = _warmup_frame(path)
    check = _serving_check()
    check(warm)
    model.predict(warm[["text"]].astype(str).astype(object))
    python_model = model.unwrap_python_model()
    featurizer, network = python_model.featurizer, python_model.network
    python_model.predict = _timed(stages, "python_model_predict", python_model.predict)
    # A frozen dataclass: instance attributes go in through object.__setattr__.
    object.__setattr__(featurizer, "_hash_rows", _timed(stages, "hash", featurizer._hash_rows))
    # The network runs as an embedding bag over the sparse rows, then its other layers.
    sparse_call = text_module._SparseInput.__call__
    text_module._SparseInput.__call__ = _timed(stages, "network", sparse_call)  # type: ignore[method-assign]
    network.forward = _timed(stages, "network", network.forward)
    batch.cast_to_signature = _timed(stages, "cast", batch.cast_to_signature)
    batch._parquet = _timed(stages, "parquet_encode", batch._parquet)
    out = Path(spec["out"])
    sink, quarantine = batch.FolderSink(out / "predictions"), batch.FolderSink(out / "quarantine")
    for folder_sink in (sink, quarantine):
        folder_sink.write = _timed(stages, "file_write", folder_sink.write)  # type: ignore[method-assign]
        folder_sink.rows = _timed(stages, "part_lookup", folder_sink.rows)  # type: ignore[method-assign]

    # Chunks are planned from the footer as they are iterated and decoded when read.
    batch.Chunk.read = _timed(stages, "parquet_read", batch.Chunk.read)  # type: ignore[method-assign]

    def chunks() -> Iterator[batch.Chunk]:
        source = batch.iter_chunks([path], spec["chunk_rows"])
        while True:
            start = time.perf_counter()
            try:
                chunk = next(source)
            except StopIteration:
                return
            finally:
                stages["parquet_read"] += time.perf_counter() - start
            yield chunk

    start = time.perf_counter()
    results = batch.score_chunks(
        chunks(),
        _timed(stages, "pyfunc_predict", model.predict),
        sink,
        inputs=[("text", "string")],
        id_column="comment_id",
        constants=spec["constants"],
        check=_timed(stages, "gx_check", check),
        quarantine=quarantine,
    )
    total = time.perf_counter() - start
    rows = sum(r.rows_in for r in results)
    s = dict(stages)
    top = ("parquet_read", "part_lookup", "gx_check", "cast", "pyfunc_predict")
    breakdown = {
        "parquet_read": s["parquet_read"],
        "gx_check (serving suite)": s["gx_check"],
        "cast_to_signature": s["cast"],
        "mlflow input handling (pyfunc predict minus the model's)": s["pyfunc_predict"]
        - s["python_model_predict"],
        "featurizer: hashing n-grams": s["hash"],
        "network forward (sparse input layer)": s["network"],
        "predict_texts rest (text checks, softmax, frame)": s["python_model_predict"]
        - s["hash"]
        - s["network"],
        "parquet encode (predictions)": s["parquet_encode"],
        "file write": s["file_write"],
        "part lookup (resume check)": s["part_lookup"],
        "other (score_chunks bookkeeping, concat)": total
        - sum(s[k] for k in top)
        - s["parquet_encode"]
        - s["file_write"],
    }
    return {
        "rows": rows,
        "seconds": total,
        "stages_s": {k: round(v, 3) for k, v in breakdown.items()},
        "stages_share": {k: round(v / total, 3) for k, v in breakdown.items()},
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "baseline": run_baseline,
    "stream": run_stream,
    "stream_parallel": run_stream_parallel,
    "latency": run_latency,
    "profile": run_profile,
}


def measure(kind: str, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run worker ``kind`` in a fresh interpreter; its figures, plus the load around it."""
    load = os.getloadavg()[0]
    command = [sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {spec.get('rows', '')} failed:\n{done.stderr[-6000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average_1min_before"] = round(load, 2)
    return result


# --- output checks ----------------------------------------------------------------------------


def verify(result: dict[str, Any], rows: int, out: Path, expected: Path) -> dict[str, Any]:
    """Rows in = out + quarantined (results and parts on disk); predictions as the baseline's."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    if result["rows_in"] != rows or result["chunks_skipped"]:
        raise SystemExit(f"{rows} rows: scored {result['rows_in']} rows, skipped chunks: {result}")
    if result["rows_in"] != result["rows_out"] + result["rows_quarantined"]:
        raise SystemExit(f"{rows} rows: rows in != out + quarantined: {result}")
    parts = sorted((out / "predictions").glob("part-*.parquet"))
    held = sorted((out / "quarantine").glob("part-*.parquet"))
    on_disk_out = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    on_disk_held = sum(pq.ParquetFile(p).metadata.num_rows for p in held)
    if (on_disk_out, on_disk_held) != (result["rows_out"], result["rows_quarantined"]):
        raise SystemExit(f"{rows} rows: parts on disk hold {on_disk_out} + {on_disk_held} rows")
    got = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    want = pd.read_parquet(expected)
    # The source repeats a few comment ids, so rows are matched on (id, occurrence): both
    # sides keep the input's order.
    for frame in (got, want):
        frame["occurrence"] = frame.groupby("comment_id").cumcount()
    key = ["comment_id", "occurrence"]
    merged = want.merge(got, on=key, how="inner", suffixes=("_base", ""))
    if len(merged) != result["rows_out"]:
        raise SystemExit(f"{rows} rows: predictions do not match the input's rows one to one")
    if not (merged["label_base"] == merged["label"]).all():
        raise SystemExit(f"{rows} rows: labels differ from the baseline's")
    for column in ("probability", "proba_0", "proba_1"):
        if not np.allclose(merged[f"{column}_base"], merged[column], rtol=1e-6, atol=1e-7):
            raise SystemExit(f"{rows} rows: {column} differs from the baseline's")
    if set(got.columns) != {
        "occurrence",
        "comment_id",
        "label",
        "probability",
        "proba_0",
        "proba_1",
        "model_name",
        "model_version",
        "run_id",
    }:
        raise SystemExit(f"unexpected prediction columns {list(got.columns)}")
    return {
        "parts": len(parts),
        "quarantine_parts": len(held),
        "rows_compared_with_baseline": len(merged),
        "labels_equal": True,
        "probabilities_allclose": True,
    }


# --- the report -------------------------------------------------------------------------------


def _mib(n: float) -> float:
    return n / 2**20


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="comma-separated input sizes in rows (default: 10000,100000,1000000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="fresh-process runs per configuration and size, best time kept (default: 3)",
    )
    parser.add_argument(
        "--once-from",
        type=int,
        default=1_000_000,
        help="sizes of at least this many rows run once, whatever --repeat says "
        "(default: 1000000; a 1M-row run takes minutes)",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=50_000,
        help="rows per chunk of the streaming scorer and per Parquet row group (default: 50000)",
    )
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="torch threads in each process of the two-worker run (default: 1)",
    )
    parser.add_argument(
        "--latency-repeat",
        type=int,
        default=3,
        help="fresh processes per registry load-latency timing, best kept (default: 3)",
    )
    parser.add_argument(
        "--profile-rows",
        type=int,
        default=100_000,
        help="rows of the stage-by-stage profile of one checked run; 0 skips it (default: 100000)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="register the model on this MLflow server instead of a scratch SQLite registry",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help=f"where the JSON figures go (default: {RESULTS.relative_to(ROOT)})",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    counts = (args.repeat, args.chunk_rows, args.threads_per_worker, args.latency_repeat)
    if not sizes or min(sizes) < 1 or min(counts) < 1 or args.profile_rows < 0:
        parser.error("sizes, --repeat, --chunk-rows, --threads-per-worker and --latency-repeat")

    os.environ.update(QUIET_ENV)
    import pandas as pd
    import pyarrow as pa
    import torch

    from mlsys.memory import STREAMING_ENV

    scratch = Path(tempfile.mkdtemp(prefix="mlsys-bench-batch-infer-"))
    env = {**os.environ, "PREFECT_HOME": str(scratch / "prefect")}
    try:
        tracking_uri = args.tracking_uri or f"sqlite:///{scratch.resolve()}/mlflow.db"
        env["MLFLOW_TRACKING_URI"] = tracking_uri
        # Streaming processes start as the flow's do (its Dask workers, its deployment);
        # the baseline keeps Arrow's default pool, as a user calling predict would.
        stream_env = env | STREAMING_ENV
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        load_start = os.getloadavg()
        started = time.perf_counter()
        model = register_model(tracking_uri, scratch)
        figures: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "mlflow": _version("mlflow"),
                "pandas": pd.__version__,
                "pyarrow": pa.__version__,
                "great_expectations": _version("great_expectations"),
                "torch_threads_default": torch.get_num_threads(),
                # Other work on the machine slows every figure; keep the load with them.
                "load_average_at_start": [round(x, 2) for x in load_start],
            },
            "model": model,
            "method": {
                "chunk_rows": args.chunk_rows,
                "parquet_row_group_rows": args.chunk_rows,
                "repeat": args.repeat,
                "runs_once_from_rows": args.once_from,
                "torch_threads": {
                    "one_worker_runs": f"torch default ({torch.get_num_threads()})",
                    "two_worker_runs": f"{args.threads_per_worker} per worker process",
                },
                "timed": {
                    "baseline": "pd.read_parquet + model.predict(df[['text']]); writes nothing",
                    "streaming": "score_chunks(iter_chunks(...)) from the first read to the "
                    "last part written (FolderSink on local disk)",
                    "stream_2w_checked": "from the common start of both workers (after model "
                    "load and warm-up, at a barrier) until the last finishes",
                },
                "memory": "peak RSS during the timed part minus RSS just before it "
                "(kernel high-water mark VmHWM, reset before); two workers: sum of both processes",
                "check": "serving_check(suite, 'quarantine') from tasks.batch_infer "
                "(youtube-spam serving suite, GX)",
            },
            "sizes": {},
        }
        constants = {"model_name": MODEL_NAME, "model_version": model["version"]}
        constants["run_id"] = model["run_id"]
        print(
            f"registered {model['version_uri']} (@{ALIAS}) in {tracking_uri}; "
            f"{os.cpu_count()} CPUs, load average {load_start[0]:.2f}; torch threads: "
            f"{torch.get_num_threads()} (1 worker), {args.threads_per_worker} per process "
            "(2 workers)"
        )
        header = (
            f"{'rows':>10} {'configuration':<27} {'s':>8} {'rows/s':>8} {'x base':>7} "
            f"{'+MiB':>7} {'peak MiB':>9} {'runs':>4} {'load':>5}"
        )
        print(header)
        for rows in sizes:
            path = scratch / f"input-{rows}.parquet"
            write_input(rows, path, args.chunk_rows)
            repeat = 1 if rows >= args.once_from else args.repeat
            expected = scratch / f"baseline-{rows}.parquet"
            entry: dict[str, Any] = {"rows": rows, "runs": repeat}
            # Rounds of every configuration, so that load from other work on the machine
            # falls on all of them alike rather than on whichever ran during it.
            runs: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
            for i in range(repeat):
                for config in CONFIGS:
                    spec: dict[str, Any] = {
                        "rows": rows,
                        "input": str(path),
                        "model_uri": model["alias_uri"],
                        "chunk_rows": args.chunk_rows,
                        "constants": constants,
                    }
                    if config == "baseline":
                        spec["save"] = str(expected) if i == 0 else None
                        runs[config].append(measure("baseline", spec, env))
                        continue
                    out = scratch / f"out-{config}-{rows}-{i}"
                    spec |= {"out": str(out), "checked": config.endswith("_checked")}
                    if config == "stream_2w_checked":
                        spec["threads"] = args.threads_per_worker
                        result = measure("stream_parallel", spec, stream_env)
                    else:
                        result = measure("stream", spec, stream_env)
                    result["verified"] = verify(result, rows, out, expected)
                    shutil.rmtree(out)
                    runs[config].append(result)
            for config in CONFIGS:
                entry[config] = _summarize(runs[config], rows)
            path.unlink()
            base = entry["baseline"]
            for config in CONFIGS:
                row = entry[config]
                row["throughput_vs_baseline"] = round(row["rows_per_s"] / base["rows_per_s"], 3)
                print(
                    f"{rows:>10,} {LABELS[config]:<27} {row['seconds']:>8.2f} "
                    f"{row['rows_per_s']:>8,.0f} {row['throughput_vs_baseline']:>6.2f}x "
                    f"{row['peak_rss_delta_mib']:>7.1f} {row['peak_rss_mib']:>9.1f} "
                    f"{len(row['all_seconds']):>4} {max(row['load_average_1min_before']):>5.2f}"
                )
            figures["sizes"][str(rows)] = entry
        print(
            "every streaming run: rows in = predicted + quarantined, and labels and "
            "probabilities equal the baseline's (allclose), at every size"
        )
        figures["targets"] = targets(figures["sizes"], sizes)

        latency: dict[str, dict[str, Any]] = {}
        for label, uri in (("alias", model["alias_uri"]), ("version", model["version_uri"])):
            timings = [
                measure("latency", {"model_uri": uri}, env) for _ in range(args.latency_repeat)
            ]
            best = min(timings, key=lambda r: r["seconds"])
            latency[label] = {
                "uri": uri,
                "seconds": round(best["seconds"], 3),
                "load_s": round(best["load_s"], 3),
                "first_predict_s": round(best["first_predict_s"], 3),
                "all_seconds": [round(r["seconds"], 3) for r in timings],
            }
        figures["registry_load_latency"] = latency
        print(
            f"registry load to first prediction (1 row, fresh process, best of "
            f"{args.latency_repeat}): "
            + "; ".join(
                f"{v['uri']} {v['seconds']:.2f} s (load {v['load_s']:.2f} s, "
                f"predict {v['first_predict_s']:.3f} s)"
                for v in latency.values()
            )
        )

        if args.profile_rows:
            path = scratch / f"input-{args.profile_rows}.parquet"
            write_input(args.profile_rows, path, args.chunk_rows)
            spec = {
                "input": str(path),
                "model_uri": model["alias_uri"],
                "chunk_rows": args.chunk_rows,
                "constants": constants,
                "out": str(scratch / "out-profile"),
            }
            profile = measure("profile", spec, stream_env)
            figures["profile_stream_1w_checked"] = profile
            print(
                f"where a checked 1-worker run spends its time ({profile['rows']:,} rows, "
                f"{profile['seconds']:.2f} s, stages timed, so a little slower):"
            )
            for stage, seconds in profile["stages_s"].items():
                share = profile["stages_share"][stage]
                print(f"  {stage:<58} {seconds:>7.2f} s {share:>6.1%}")

        figures["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        figures["total_seconds"] = round(time.perf_counter() - started, 1)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(
            f"load average at end {figures['machine']['load_average_at_end'][0]:.2f}; "
            f"total {figures['total_seconds']:.0f} s; figures written to {args.output}"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _summarize(runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    """Best time of the runs; the largest memory figures (they barely vary between runs)."""
    best = min(runs, key=lambda r: r["seconds"])
    summary: dict[str, Any] = {
        "seconds": round(best["seconds"], 3),
        "all_seconds": [round(r["seconds"], 3) for r in runs],
        "rows_per_s": round(rows / best["seconds"], 1),
        "peak_rss_delta_mib": round(_mib(max(r["peak_rss_delta_bytes"] for r in runs)), 1),
        "peak_rss_mib": round(_mib(max(r["peak_rss_bytes"] for r in runs)), 1),
        "all_peak_rss_delta_mib": [round(_mib(r["peak_rss_delta_bytes"]), 1) for r in runs],
        "rows_in": best["rows_in"],
        "rows_out": best["rows_out"],
        "rows_quarantined": best["rows_quarantined"],
        "torch_threads": best["torch_threads"],
        "load_average_1min_before": [r["load_average_1min_before"] for r in runs],
    }
    for key in ("read_s", "predict_s", "chunks", "seconds_with_process_start_and_model_load"):
        if key in best:
            summary[key] = round(best[key], 3) if isinstance(best[key], float) else best[key]
    if "rss_before_bytes" in best:
        summary["rss_before_mib"] = round(_mib(best["rss_before_bytes"]), 1)
    if "workers" in best:
        summary["workers"] = [
            {
                "index": w["index"],
                "seconds": round(w["seconds"], 3),
                "chunks": w["chunks"],
                "rows_in": w["rows_in"],
                "peak_rss_delta_mib": round(_mib(w["peak_rss_delta_bytes"]), 1),
                "peak_rss_mib": round(_mib(w["peak_rss_bytes"]), 1),
            }
            for w in best["workers"]
        ]
    if "verified" in best:
        summary["verified"] = best["verified"]
    return summary


def targets(results: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """Throughput >= baseline at every size; streaming RSS flat (<= 1.2x) from 100k to 1M."""
    out: dict[str, Any] = {"throughput_at_least_baseline": {}, "rss_growth_100k_to_1m": {}}
    print("targets (spec): streaming rows/s >= baseline; peak RSS +20% at most from 100k to 1M")
    for config in CONFIGS[1:]:
        ratios = {str(n): results[str(n)][config]["throughput_vs_baseline"] for n in sizes}
        met = all(r >= 1.0 for r in ratios.values())
        out["throughput_at_least_baseline"][config] = {"ratios": ratios, "met": met}
        shown = ", ".join(f"{int(n):,}: {r:.2f}x" for n, r in ratios.items())
        print(f"  throughput {LABELS[config]:<27} {shown} -> {'met' if met else 'NOT met'}")
    if {100_000, 1_000_000} <= set(sizes):
        for config in CONFIGS:
            small = results["100000"][config]["peak_rss_delta_mib"]
            large = results["1000000"][config]["peak_rss_delta_mib"]
            growth = large / small if small > 0 else float("inf")
            row: dict[str, Any] = {
                "mib_100k": small,
                "mib_1m": large,
                "growth": round(growth, 2),
            }
            if config != "baseline":
                row["flat_within_20_percent"] = growth <= 1.2
                verdict = "met" if growth <= 1.2 else "NOT met"
            else:
                row["grows"] = growth > 1.2
                verdict = "grows, as expected" if growth > 1.2 else "does not grow"
            out["rss_growth_100k_to_1m"][config] = row
            print(
                f"  peak RSS {LABELS[config]:<29} {small:>7.1f} -> {large:>7.1f} MiB "
                f"({growth:.2f}x) -> {verdict}"
            )
    else:
        print("  RSS growth target needs sizes 100000 and 1000000")
    return out


if __name__ == "__main__":
    main()
