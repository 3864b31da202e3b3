"""Scale: a generated batch of distinct YouTube-style comments through ingest (with its
validation), LF application (weak_label) and batch_infer on this machine's cluster: rows per
second per stage, the peak RSS of every process, and each stage's serial share, from which
the speed-up on N workers is projected (Amdahl).

The question (issue 27): do 10M comments go through the stages with no process above
1.5 GB peak RSS, and how much of each stage is serial?

- source: ``--rows`` rows as CSV files of ``--rows-per-file`` rows in the youtube-spam
  layout (COMMENT_ID, AUTHOR, DATE, CONTENT, CLASS), written before any stage (not timed):
  the dataset's gold file (Youtube05-Shakira.csv, its real labeled rows; the gold policy
  is by file) and generated files, ids ``gen-<row>`` unique, CLASS blank (unlabeled),
  authors and dates cycled from the real comments, texts from benchmarks/featurizer.py's
  TextGenerator, each text distinct across the whole batch (64-bit hashes of every text
  kept; a repeat is drawn again).
- a private stack (SeaweedFS, MLflow, Prefect; up before any stage, not timed), and a
  seeded random classifier registered there (benchmarks/batch_infer.py).
- each stage is its real flow, called in a fresh process with the stack's environment,
  timed from that process's start to the flow's return (interpreter, imports included):
  ``ingest``: ``flows.ingest.ingest(source=FOLDER, partitioned=True, workers=W,
  part_mb=1e-6)``, one
  read-check-part task per file on a Dask cluster (read, PUT, the raw suite's checks),
  the checks merged into one verdict, the parts streamed into the raw batch;
  ``label``: ``flows.weak_label.weak_label(raw_batch=URI, label=LabelOptions(
  partition_rows=P, workers=W), partitioned=True)``, three passes of a task per range of
  P rows (raw suite; LF votes; labeled rows and the training suite), the batch never in
  one process; ``infer``: ``flows.batch_infer.batch_infer(source=URI,
  inference=InferOptions(chunk_rows=C, workers=W))``.
- peak RSS: this process samples the stage's process tree (the flow's process and each
  Dask worker) and the stack's services every 0.2 s, keeping per pid the largest of its
  RSS and the kernel's high-water mark (VmHWM).
- serial share: from the Prefect API's task runs of the flow run and its subflows (start
  and end times as the server recorded them). Parallel work is the partition tasks'
  (read-check-part and part-key-values; check-raw-range, range-key-values, vote-range,
  label-range and part-key-values; score-partition) summed
  durations; serial time is the stage's wall time less the span in which a partition task
  ran, split into scheduler (a subflow's time with no task running: the Dask cluster's
  start and close, submission), label model (tune-label-model), serial tasks on the
  cluster (the writers streaming parts, profile-reference) and driver (the rest: process start,
  imports, the flow's own reading, checks, merging, tracking). ``s = serial / (serial +
  work)``; the speed-up on N workers is projected as ``1 / (s + (1 - s) / N)``: a
  projection, not a measurement.

    .venv/bin/python benchmarks/scale.py [--rows 10000000] [--rows-per-file 100000]
        [--workers 2] [--stages ingest,label,infer] [--out benchmarks/results/scale.json]

Small check: ``--rows 20000 --rows-per-file 5000`` (a few minutes).

Why one module: it is one script run by path, and its parts pass one spec between
processes: the source writer, the stage runner (this file again with ``--worker``, one
fresh process per stage) and the measurement reading that process tree and the Prefect API.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _folder in (ROOT, HERE):  # tasks/ and flows/ are not installed; nor are the benchmarks
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from batch_infer import QUIET_ENV  # noqa: E402

RESULTS = HERE / "results" / "scale.json"
DATA = ROOT.parent / "shared" / "data"
DATASET = "youtube-spam"
GOLD_FILE = "Youtube05-Shakira.csv"
STAGES = ("ingest", "label", "infer")
LIMIT_BYTES = 1_500_000_000  # 1.5 GB (decimal), per process
PROJECTED_WORKERS = (2, 4, 8, 16)
PARALLEL_TASKS = {
    "ingest": ("read-check-part", "part-key-values"),
    "label": (
        "apply-lfs-partition",
        "check-raw-range",
        "range-key-values",
        "vote-range",
        "label-range",
        "part-key-values",
    ),
    "infer": ("score-partition",),
}
LABEL_MODEL_TASKS = ("tune-label-model",)
SERIAL_CLUSTER_TASKS = (
    "write-raw-parts",
    "profile-reference",
    "write-labeled-parts",
    "write-aside-parts",
)
"""Tasks that run alone on the cluster (one writer streaming the parts, one profile)."""
TABLE = "stage seconds rows/s serial sched lm clust driver work peakMB x2 x4 x8 x16"
VALIDATION_TASKS = (
    "read-check-part",
    "part-key-values",
    "record-verdict",
    "validate-batch",
    "check-raw-range",
    "range-key-values",
    "label-range",
)


# --- pure helpers -----------------------------------------------------------------------------


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def amdahl(serial_share: float, workers: int) -> float:
    """Amdahl's speed-up on ``workers`` workers of a job whose serial share is given."""
    return 1.0 / (serial_share + (1.0 - serial_share) / workers)


def serial_breakdown(
    wall_s: float,
    tasks: Sequence[dict[str, Any]],
    subflows: Sequence[dict[str, Any]],
    parallel: Sequence[str],
) -> dict[str, Any]:
    """A stage's wall time split into parallel work and its serial parts.

    ``tasks``: the task runs (``name``, ``start``, ``end`` in seconds, ``flow_run``) of the
    flow run and its subflows; ``subflows``: the subflow runs (``id``, ``start``, ``end``);
    ``parallel``: the names of the partition tasks."""
    part = [(t["start"], t["end"]) for t in tasks if t["name"] in parallel]
    work = sum(end - start for start, end in part)
    span = union_seconds(part)
    serial = max(wall_s - span, 0.0)
    scheduler = 0.0
    for sub in subflows:
        inside = [(t["start"], t["end"]) for t in tasks if t["flow_run"] == sub["id"]]
        scheduler += max(sub["end"] - sub["start"] - union_seconds(inside), 0.0)
    label_model = sum(t["end"] - t["start"] for t in tasks if t["name"] in LABEL_MODEL_TASKS)
    on_cluster = sum(t["end"] - t["start"] for t in tasks if t["name"] in SERIAL_CLUSTER_TASKS)
    share = serial / (serial + work) if serial + work > 0 else 1.0
    return {
        "wall_s": round(wall_s, 3),
        "partition_tasks": len(part),
        "partition_work_s": round(work, 3),
        "partition_span_s": round(span, 3),
        "parallelism_in_span": round(work / span, 3) if span > 0 else None,
        "serial_s": round(serial, 3),
        "serial_parts_s": {
            "scheduler": round(scheduler, 3),
            "label_model": round(label_model, 3),
            "serial_tasks_on_cluster": round(on_cluster, 3),
            "driver": round(max(serial - scheduler - label_model - on_cluster, 0.0), 3),
        },
        "serial_share": round(share, 4),
        "projected_speedup": {str(n): round(amdahl(share, n), 2) for n in PROJECTED_WORKERS},
    }


def task_totals(tasks: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task name: how many runs, their summed seconds and the longest."""
    out: dict[str, dict[str, Any]] = {}
    for t in sorted(tasks, key=lambda t: t["start"]):
        entry = out.setdefault(t["name"], {"runs": 0, "seconds": 0.0, "longest_s": 0.0})
        entry["runs"] += 1
        entry["seconds"] += t["end"] - t["start"]
        entry["longest_s"] = max(entry["longest_s"], t["end"] - t["start"])
    return {
        k: {**v, "seconds": round(v["seconds"], 3), "longest_s": round(v["longest_s"], 3)}
        for k, v in out.items()
    }


def role(command: str, is_flow: bool, flow_command: str = "") -> str:
    """What a sampled process is, from its command line."""
    if is_flow:
        return "flow process"
    if command == flow_command:
        return "forked from the flow process"
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    if "spawn_main" in command or "forkserver" in command:
        return "dask worker"
    words = command.split()
    return " ".join(Path(w).name for w in words[:3]) if words else "?"


# --- the source (this process, not timed) -----------------------------------------------------


def distinct_batches(generator: Any, counts: Sequence[int], seed: int) -> Iterator[list[str]]:
    """Texts for each count, every text distinct across all of them: each text's 64-bit
    hash is kept, and a text seen before (in an earlier count, or earlier in this one) is
    drawn again with another seed. The hashes of earlier counts are one sorted array,
    merged once per count, so that a redraw costs a binary search, not a sort."""
    import numpy as np

    seen = np.empty(0, dtype=np.int64)
    for index, n in enumerate(counts):
        out: list[str] = []
        mine: set[int] = set()
        attempt = 0
        while len(out) < n:
            fresh = generator.texts(n - len(out), seed=(seed * 1_000_000 + index) * 1000 + attempt)
            hashes = np.fromiter((hash(t) for t in fresh), dtype=np.int64, count=len(fresh))
            at = np.minimum(np.searchsorted(seen, hashes), max(len(seen) - 1, 0))
            earlier = seen[at] == hashes if len(seen) else np.zeros(len(fresh), dtype=bool)
            for text, value, old in zip(fresh, hashes.tolist(), earlier.tolist(), strict=True):
                if not old and value not in mine:
                    mine.add(value)
                    out.append(text)
            attempt += 1
        seen = np.union1d(seen, np.fromiter(mine, dtype=np.int64, count=len(mine)))
        yield out


def write_source(folder: Path, rows: int, rows_per_file: int, seed: int) -> dict[str, Any]:
    """The CSV source in ``folder``: the gold file, then generated files; what was written."""
    import pandas as pd
    from batch_infer_flow import corpus
    from featurizer import TextGenerator

    folder.mkdir(parents=True)
    real = pd.concat(
        [pd.read_csv(p, dtype=str) for p in sorted((DATA / DATASET).glob("*.csv"))],
        ignore_index=True,
    )
    gold = DATA / DATASET / GOLD_FILE
    shutil.copy(gold, folder / GOLD_FILE)
    gold_rows = len(pd.read_csv(gold, dtype=str))
    generated = rows - gold_rows
    if generated < 1:
        raise ValueError(f"--rows must exceed the gold file's {gold_rows} rows")
    counts = [min(rows_per_file, generated - s) for s in range(0, generated, rows_per_file)]
    generator = TextGenerator(corpus())
    began, row, words = time.perf_counter(), 0, 0
    for index, texts in enumerate(distinct_batches(generator, counts, seed)):
        at = [(row + i) % len(real) for i in range(len(texts))]
        frame = pd.DataFrame(
            {
                "COMMENT_ID": [f"gen-{row + i:09d}" for i in range(len(texts))],
                "AUTHOR": real["AUTHOR"].to_numpy()[at],
                "DATE": real["DATE"].to_numpy()[at],
                "CONTENT": texts,
                "CLASS": [""] * len(texts),
            }
        )
        frame.to_csv(folder / f"generated-{index:05d}.csv", index=False)
        words += sum(len(t.split()) for t in texts)
        row += len(texts)
    return {
        "files": len(counts) + 1,
        "gold_file": GOLD_FILE,
        "gold_rows": gold_rows,
        "generated_rows": generated,
        "generated_files": len(counts),
        "texts_distinct": "every generated text distinct across the batch (hash-checked)",
        "mean_words": round(words / generated, 2),
        "bytes": sum(p.stat().st_size for p in folder.iterdir()),
        "generated_s": round(time.perf_counter() - began, 1),
    }


# --- a stage, in a fresh process --------------------------------------------------------------


def _seconds(stamp: Any) -> float:
    return float(stamp.timestamp())


def _interval(run: Any, **fields: str) -> dict[str, Any]:
    return {**fields, "start": _seconds(run.start_time), "end": _seconds(run.end_time)}


def prefect_runs(flow_run_id: Any, expected: int = 0, wait_s: float = 60) -> dict[str, Any]:
    """The flow run's and its subflows' task runs as the Prefect API recorded them (their
    states arrive as events: waited for until every run has ended, up to ``wait_s``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            main = client.read_flow_run(flow_run_id)
            subs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
                )
            )
            ids = [main.id, *(s.id for s in subs)]
            runs: list[Any] = []
            while True:
                page = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                    limit=200,
                    offset=len(runs),
                )
                runs += page
                if len(page) < 200:
                    break
            placeholders = {s.parent_task_run_id for s in subs}
            tasks = [r for r in runs if r.id not in placeholders]
            ended = all(r.start_time and r.end_time for r in tasks) and len(tasks) >= expected
            if ended or time.monotonic() > deadline:
                break
            time.sleep(1)
    return {
        "flow": {"start": _seconds(main.start_time), "end": _seconds(main.end_time)},
        "subflows": [_interval(s, id=str(s.id), name=s.name) for s in subs if s.end_time],
        "tasks": [  # a task run's name is its task's, a dash and a suffix
            _interval(r, name=r.name.rsplit("-", 1)[0], flow_run=str(r.flow_run_id))
            for r in tasks
            if r.start_time and r.end_time
        ],
        "unfinished_tasks": sum(1 for r in tasks if not (r.start_time and r.end_time)),
    }


def run_stage(spec: dict[str, Any]) -> dict[str, Any]:
    """In the fresh process: the stage's flow on the stack named by the environment."""
    from _measure import _high_water_mark
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from flows.options import InferOptions, LabelOptions
    from infra.config import StackSettings
    from infra.prefect_api import prefect_settings

    imported = time.time()
    settings = StackSettings.load()
    stage, workers = spec["stage"], spec["workers"]
    with prefect_settings(settings):
        if stage == "ingest":
            from flows.ingest import ingest

            state = ingest(
                source=spec["source"], dataset=DATASET, batch=spec["batch"], partitioned=True,
                workers=workers, part_mb=1e-6, return_state=True,  # a task per file
            )  # fmt: skip
        elif stage == "label":
            from flows.weak_label import weak_label

            label = LabelOptions(partition_rows=spec["partition_rows"], workers=workers)
            state = weak_label(
                raw_batch=spec["source"], dataset=DATASET, label=label, partitioned=True,
                return_state=True,
            )  # fmt: skip
        else:
            from batch_infer import ALIAS, MODEL_NAME

            from flows.batch_infer import batch_infer

            state = batch_infer(
                source=spec["source"], dataset=DATASET, batch=spec["batch"],
                model_name=MODEL_NAME, alias=ALIAS,
                inference=InferOptions(chunk_rows=spec["chunk_rows"], workers=workers),
                return_state=True,
            )  # fmt: skip
        uri = state.result()
        done = time.time()
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        runs = prefect_runs(state.state_details.flow_run_id, expected=spec.get("tasks", 0))
    return {
        "uri": uri,
        "imported": imported,
        "flow_returned": done,
        "flow_process_hwm_bytes": _high_water_mark(),
        **runs,
    }


# --- this process: measuring a stage ----------------------------------------------------------


def measure(stage: str, spec: dict[str, Any], env: dict[str, str], services: list[int]) -> dict:
    """``stage`` in a fresh process, timed from its start to the flow's return; the peak
    RSS of its process tree and of the stack's services sampled meanwhile."""
    from _measure import ProcessTreePeaks

    command = [sys.executable, __file__, "--worker", "--spec", json.dumps({**spec, "stage": stage})]
    load = os.getloadavg()[0]
    child: list[int] = []
    peaks = ProcessTreePeaks(lambda: child + services, interval_s=0.2)
    with peaks:
        started_wall, started = time.time(), time.monotonic()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        child.append(proc.pid)
        out, err = proc.communicate()
        process_s = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{err[-6000:]}")
    lines = [line for line in out.splitlines() if line.startswith('{"uri"')]
    result: dict[str, Any] = json.loads(lines[-1])
    # Timed to the flow's return: the Prefect API queries after it are this benchmark's.
    seconds = result["flow_returned"] - started_wall
    processes, flow_command = [], peaks.seen.get(proc.pid, {}).get("command", "")
    for entry in peaks.seen.values():
        in_stage = entry["pid"] == proc.pid or proc.pid in entry["ancestors"]
        peak = entry["peak_rss_bytes"]
        if entry["pid"] == proc.pid:
            peak = max(peak, result.get("flow_process_hwm_bytes") or 0)
        processes.append({
            "pid": entry["pid"],
            "of": "stage" if in_stage else "stack service",
            "role": role(entry["command"], entry["pid"] == proc.pid, flow_command),
            "command": entry["command"],
            "peak_rss_bytes": peak,
            "samples": entry["samples"],
        })  # fmt: skip
    breakdown = serial_breakdown(
        seconds, result["tasks"], result["subflows"], PARALLEL_TASKS[stage]
    )
    stage_peaks = [p["peak_rss_bytes"] for p in processes if p["of"] == "stage"]
    return {
        "uri": result["uri"],
        "seconds": round(seconds, 3),
        "rows_per_s": round(spec["rows"] / seconds, 1),
        "process_s": round(process_s, 3),
        "start_and_imports_s": round(result["imported"] - started_wall, 3),
        "flow_run_s": round(result["flow"]["end"] - result["flow"]["start"], 3),
        "load_average_before": round(load, 2),
        **breakdown,
        "tasks": task_totals(result["tasks"]),
        "unfinished_tasks_in_api": result["unfinished_tasks"],
        "subflows": [
            {"name": s["name"], "seconds": round(s["end"] - s["start"], 3)}
            for s in result["subflows"]
        ],
        "peak_rss_max_stage_bytes": max(stage_peaks),
        "processes": sorted(processes, key=lambda p: (p["of"], -p["peak_rss_bytes"])),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {m: version(m) for m in ("prefect", "distributed", "pyarrow", "pandas", "mlflow")}


def _print_table(stages: dict[str, Any]) -> None:
    print(" ".join(f"{h:>8}" for h in TABLE.split()))
    for name, s in stages.items():
        parts, proj = s["serial_parts_s"], s["projected_speedup"]
        row = [s["seconds"], s["rows_per_s"], s["serial_share"], *parts.values()]
        row += [s["partition_work_s"], s["peak_rss_max_stage_bytes"] / 1e6, *proj.values()]
        print(f"{name:>8} " + " ".join(f"{v:>8.4g}" for v in row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=10_000_000, help="rows of the batch, the gold file's included"
    )
    parser.add_argument(
        "--rows-per-file", type=int, default=100_000, help="rows per generated CSV file"
    )
    parser.add_argument("--workers", type=int, default=2, help="Dask workers of each stage")
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="comma-separated, of ingest,label,infer; ingest is needed (the others read the "
        "batch it writes)",
    )
    parser.add_argument(
        "--partition-rows", type=int, default=50_000, help="weak_label's rows per partition"
    )
    parser.add_argument("--chunk-rows", type=int, default=50_000, help="batch_infer's chunk rows")
    parser.add_argument("--seed", type=int, default=0, help="the text generator's seed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_stage(json.loads(args.spec))))
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not stages or set(stages) - set(STAGES) or "ingest" not in stages:
        parser.error("--stages takes ingest,label,infer and must include ingest")
    if min(args.rows, args.rows_per_file, args.workers, args.partition_rows) < 1:
        parser.error("--rows, --rows-per-file, --workers and --partition-rows must be positive")

    os.environ.update(QUIET_ENV)
    import psutil
    from _stack_flow import private_stack
    from batch_infer import register_model

    from infra.stack import status

    scratch = Path(tempfile.mkdtemp(prefix="mlsys-bench-scale-"))
    started = time.perf_counter()
    stack = contextlib.ExitStack()
    try:
        source = write_source(scratch / "source", args.rows, args.rows_per_file, args.seed)
        print(
            f"{os.cpu_count()} CPUs; {args.rows:,} rows in {source['files']} CSV files "
            f"({source['bytes'] / 1e6:,.0f} MB) written in {source['generated_s']:.0f} s",
            flush=True,
        )
        began = time.perf_counter()
        settings = stack.enter_context(private_stack(scratch / "stack"))
        model = register_model(settings.tracking_uri, scratch)
        env = {
            **os.environ,
            **settings.shell_env(),
            **QUIET_ENV,
            "PREFECT_HOME": str(scratch / "prefect"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        }
        services = [s.pid for s in status(settings) if s.pid]
        print(f"private stack up, model registered in {time.perf_counter() - began:.0f} s")
        batch = f"scale-{args.rows}"
        base = {"rows": args.rows, "workers": args.workers, "batch": batch}
        figures: dict[str, Any] = {}
        files = source["files"]
        ingest = measure(
            "ingest", {**base, "source": str(scratch / "source"), "tasks": files}, env, services
        )
        figures["ingest"] = ingest
        print(f"ingest: {ingest['seconds']:.1f} s -> {ingest['uri']}", flush=True)
        raw = ingest["uri"]
        if "label" in stages:
            spec = {**base, "source": raw, "partition_rows": args.partition_rows}
            figures["label"] = measure("label", spec, env, services)
            print(f"label: {figures['label']['seconds']:.1f} s", flush=True)
        if "infer" in stages:
            spec = {**base, "source": raw, "chunk_rows": args.chunk_rows}
            figures["infer"] = measure("infer", spec, env, services)
            print(f"infer: {figures['infer']['seconds']:.1f} s", flush=True)
    finally:
        with contextlib.suppress(Exception):
            stack.close()
        shutil.rmtree(scratch, ignore_errors=True)

    validation = {
        f"{stage}/{name}": totals
        for stage, s in figures.items()
        for name, totals in s["tasks"].items()
        if name in VALIDATION_TASKS
    }
    over = [
        {"stage": stage, "role": p["role"], "peak_rss_bytes": p["peak_rss_bytes"]}
        for stage, s in figures.items()
        for p in s["processes"]
        if p["of"] == "stage" and p["peak_rss_bytes"] > LIMIT_BYTES
    ]
    services_over = sorted(
        {p["command"] for s in figures.values() for p in s["processes"]
         if p["of"] == "stack service" and p["peak_rss_bytes"] > LIMIT_BYTES}
    )  # fmt: skip
    memory = psutil.virtual_memory().total
    results = {
        "rows": args.rows,
        "headline": {
            "rows": args.rows,
            "stages": stages,
            "target": "no stage process above 1.5 GB (1.5e9 bytes) peak RSS, at 10,000,000 rows",
            "peak_rss_max_bytes": max(s["peak_rss_max_stage_bytes"] for s in figures.values()),
            "processes_over_limit": over,
            "met_at_these_rows": not over,
            "met": not over and args.rows >= 10_000_000 and set(stages) == set(STAGES),
            "stack_services_over_limit": services_over,
        },
        "stages": figures,
        "validation_tasks": validation,
        "source": source,
        "options": {
            "rows_per_file": args.rows_per_file,
            "workers": args.workers,
            "partition_rows": args.partition_rows,
            "chunk_rows": args.chunk_rows,
            "seed": args.seed,
        },
        "model": {k: model[k] for k in ("name", "version", "n_features", "weights")},
        "machine": {
            "cpus": os.cpu_count(),
            "memory_bytes": memory,
            "python": platform.python_version(),
            "platform": platform.platform(),
            **_versions(),
        },
        "method": {
            "timed": "each stage's flow in a fresh process, from the process's start to the "
            "flow's return (process_s: to its exit, after this benchmark's API queries)",
            "peak_rss": "per pid, the largest of RSS and VmHWM read every 0.2 s from this "
            "process (the flow's process also reports its own VmHWM at exit)",
            "serial_share": "from the Prefect API's task runs of the flow run and its "
            "subflows: serial = wall - span of the partition tasks; share = serial / "
            "(serial + partition tasks' summed seconds)",
            "projection": "Amdahl: 1 / (s + (1 - s) / N), a projection, not measured",
            "parallel_tasks": {k: list(v) for k, v in PARALLEL_TASKS.items()},
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    _print_table(figures)
    head = results["headline"]
    print(
        f"largest stage process peak {head['peak_rss_max_bytes'] / 1e6:,.0f} MB; 1.5 GB limit "
        f"{'met' if head['met_at_these_rows'] else 'NOT met'} at {args.rows:,} rows"
        + ("" if head["met"] else " (the target is for 10,000,000 rows through every stage)")
        + f"; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
