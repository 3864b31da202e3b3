"""LF application on the Dask cluster (weak_label's partitioned path) against the in-process
applier on the same cores: what distribution costs, and how it scales from one worker to two.

The question (issue 27): is LF application on the cluster at least 0.8x the in-process
applier's rows per second on the same cores, and do 2 workers reach 1.7x one?

- in-process: ``apply_lfs(view, lfs, n_jobs=N)``, what weak_label does for a batch of one
  partition: distinct texts deduplicated, vectorizable LFs on arrays, the rest in a pool of
  N processes.
- cluster: ``flows.weak_label.label_matrix`` with ``partition_rows`` below the batch size,
  the flow's own path: the rows PUT to S3 as partitions, a Dask cluster of N one-thread
  worker processes made for the run (``tasks.cluster.dask_runner``), one
  ``apply-lfs-partition`` task per partition (the LF module loaded on the worker, its rows
  read from S3, ``apply_lfs(n_jobs=1)``, its votes PUT back), the votes gathered and
  checked, the partitions removed. Cluster start and close are included.

Both on the same batch: ``--rows`` distinct generated comments (benchmarks/featurizer.py's
TextGenerator over the YouTube comments and the SemEval sentences), the youtube-spam LF set
``--lf-set``. A private stack (SeaweedFS, MLflow, Prefect; not timed) serves the cluster
path's S3 and Prefect API. Every run's label matrix must equal the first in-process one.
Rounds alternate the sides; the fastest of ``--repeat`` is kept.

    .venv/bin/python benchmarks/lf_cluster.py [--rows 200000] [--partition-rows 25000]
        [--lf-set default] [--repeat 2]

About 10 minutes on a quiet 2-core machine with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _folder in (ROOT, HERE):  # tasks/ and flows/ are not installed; nor are the benchmarks
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from batch_infer import QUIET_ENV  # noqa: E402

RESULTS = HERE / "results" / "lf_cluster.json"
TARGETS = {"cluster_vs_in_process": 0.8, "workers_vs_one": 1.7}  # with 2 workers


def _measure(label: str, fn: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - began
    print(f"  {label:<28} {seconds:7.2f} s", flush=True)
    return seconds, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="distinct generated rows")
    parser.add_argument(
        "--partition-rows", type=int, default=25_000, help="rows per partition on the cluster"
    )
    parser.add_argument("--lf-set", default="default", help="youtube-spam LF set")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the fastest is kept")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes / workers of the parallel runs"
    )
    parser.add_argument("--seed", type=int, default=0, help="the text generator's seed")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    if min(args.rows, args.partition_rows, args.repeat) < 1 or args.workers < 2:
        parser.error("--rows, --partition-rows and --repeat must be positive, --workers >= 2")
    if args.partition_rows >= args.rows:
        parser.error("--partition-rows must be below --rows (else no cluster is used)")

    os.environ.update(QUIET_ENV)
    import numpy as np
    from _stack_flow import private_stack
    from batch_infer_flow import corpus, distinct_texts, input_frame

    from flows.options import LabelOptions
    from flows.weak_label import label_matrix
    from infra.prefect_api import prefect_settings
    from mlsys.data.definition import load_dataset
    from mlsys.labeling import apply_lfs
    from mlsys.labeling.batch import lf_view

    cpus, n = os.cpu_count() or 1, args.workers
    scratch = Path(tempfile.mkdtemp(prefix="mlsys-bench-lf-cluster-"))
    os.environ["PREFECT_HOME"] = str(scratch / "prefect")
    started = time.perf_counter()
    try:
        youtube = load_dataset("youtube-spam")
        lfs = youtube.lf_set(args.lf_set)
        df = input_frame(args.rows, distinct_texts(args.rows, args.seed, corpus()))
        view, fields = lf_view(df, youtube.lf_columns, youtube.id_column)
        print(
            f"{cpus} CPUs; {args.rows:,} distinct rows, {len(lfs)} LFs ({args.lf_set}), "
            f"partitions of {args.partition_rows:,}; load average {os.getloadavg()[0]:.2f}"
        )
        times: dict[str, list[float]] = {}
        expected: Any = None
        with private_stack(scratch / "stack") as settings:
            for key, value in settings.shell_env().items():
                os.environ[key] = value
            with prefect_settings(settings):
                for round_ in range(args.repeat):
                    print(f"round {round_ + 1}", flush=True)
                    for workers in (n, 1):
                        key = f"in_process_{workers}"
                        seconds, result = _measure(
                            f"in-process, {workers} process(es)",
                            lambda w=workers: apply_lfs(
                                view, lfs, fields=fields, n_jobs=w, id_column=youtube.id_column
                            ),
                        )
                        expected = result.matrix if expected is None else expected
                        np.testing.assert_array_equal(result.matrix, expected)
                        times.setdefault(key, []).append(seconds)
                        label = LabelOptions(
                            lf_set=args.lf_set, partition_rows=args.partition_rows, workers=workers
                        )
                        seconds, result = _measure(
                            f"cluster, {workers} worker(s)",
                            lambda lo=label, r=round_, w=workers: label_matrix(
                                settings, df, youtube, f"bench-{r}-{w}", lo
                            ),
                        )
                        np.testing.assert_array_equal(result.matrix, expected)
                        times.setdefault(f"cluster_{workers}", []).append(seconds)
                # Send buffered task-run logs and events while the API is up: at exit they
                # would be retried against a stopped server for minutes.
                from prefect.events.worker import EventsWorker
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)
        best = {key: min(values) for key, values in times.items()}
        rate = {key: round(args.rows / seconds, 1) for key, seconds in best.items()}
        ratios = {
            "cluster_vs_in_process": round(best[f"in_process_{n}"] / best[f"cluster_{n}"], 3),
            "workers_vs_one": round(best["cluster_1"] / best[f"cluster_{n}"], 3),
            "in_process_processes_vs_one": round(best["in_process_1"] / best[f"in_process_{n}"], 3),
        }
        figures = {
            "headline": {
                **ratios,
                "workers": n,
                "targets": {
                    key: {"value": ratios[key], "target": f">= {t}", "met": ratios[key] >= t}
                    for key, t in TARGETS.items()
                },
            },
            "seconds": {key: round(v, 3) for key, v in best.items()},
            "all_seconds": {key: [round(v, 3) for v in vs] for key, vs in times.items()},
            "rows_per_s": rate,
            "rows": args.rows,
            "partition_rows": args.partition_rows,
            "partitions": -(-args.rows // args.partition_rows),
            "lfs": len(lfs),
            "lf_set": args.lf_set,
            "repeat": args.repeat,
            "machine": {"cpus": cpus, "python": platform.python_version()},
            "method": {
                "in_process": "apply_lfs(view, lfs, n_jobs=N): distinct texts once, vectorized "
                "LFs on arrays, row-by-row LFs in a pool of N processes",
                "cluster": "flows.weak_label.label_matrix: partitions PUT to S3, a Dask "
                "cluster of N one-thread workers made for the run, one apply-lfs-partition "
                "task per partition (LF module loaded on the worker, rows read from S3, votes "
                "PUT back), votes gathered; cluster start and close included",
                "verified": "every run's label matrix equals the first in-process one",
                "inputs": "distinct generated comments (benchmarks/featurizer.py TextGenerator)",
            },
            "total_seconds": round(time.perf_counter() - started, 1),
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(
            f"cluster {ratios['cluster_vs_in_process']:.2f}x the in-process applier with {n} "
            f"processes; {n} workers {ratios['workers_vs_one']:.2f}x one; rows/s {rate}; "
            f"written to {args.output}"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
