"""LF application speed: mlsys apply_lfs against Snorkel's appliers, YouTube spam LFs.

The headline baseline is the strongest a Snorkel user would otherwise call on the same
DataFrame, LFs and cores: Snorkel's own parallel applier (``PandasParallelLFApplier``,
Dask processes, as many as apply_lfs uses; its start-up is counted, as apply_lfs's pool's
is). The single-process ``PandasLFApplier`` is reported beside it.
Two batches of ``--rows`` rows, both in the platform's raw-batch schema (read_dataset):

- replicated: the 1,956 real comments repeated (each comment about 51 times at 100k
  rows); apply_lfs evaluates each distinct text once, Snorkel memoizes only the
  TextBlob preprocessor on identical rows;
- unique: the same rows with the row number appended to each text, so no two agree.

Before any timing counts, every applier's matrix must be identical to apply_lfs's.
Snorkel's appliers run at roughly 1,500 rows/s on unique texts, so ``--baseline-rows``
can time them on a prefix of that batch to save time (every unique row costs them about
the same; the ratio compares rows/s). The default times them on all of it: on a prefix
the parallel applier's start-up is spread over fewer rows and its rate understated (on
10,000 rows it ran at 1,084 rows/s, on 100,000 at 1,446). On the replicated batch they
always run on all rows, because there their speed grows with the number of repeats
(memo hits), which a prefix would understate.

    .venv/bin/python benchmarks/lf_apply.py [--rows 100000] [--baseline-rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from snorkel.labeling import PandasLFApplier
from snorkel.labeling.apply.dask import PandasParallelLFApplier

from mlsys.data import read_dataset
from mlsys.data.definition import load_dataset
from mlsys.labeling import LabelingFunction, apply_lfs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "youtube-spam"
RESULTS = Path(__file__).resolve().parent / "results" / "lf_apply.json"


def batches(rows: int) -> dict[str, pd.DataFrame]:
    comments = read_dataset(load_dataset("youtube-spam"), str(DATA))
    replicated = comments.iloc[np.arange(rows) % len(comments)].reset_index(drop=True)
    unique = replicated.copy()
    texts = pd.Series([f"{text} {i}" for i, text in enumerate(unique["text"])])
    unique["text"] = texts.astype(replicated["text"].dtype)
    return {"replicated": replicated, "unique": unique}


def clear_caches(lfs: list[LabelingFunction]) -> None:
    """Empty memoized preprocessors so no run profits from the one before."""
    for lf in lfs:
        for pre in lf._pre:
            pre.reset_cache()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(name: str, df: pd.DataFrame, baseline_rows: int, jobs: int) -> dict[str, Any]:
    lfs = load_dataset("youtube-spam").lf_set("tutorial")
    base_df = df if name == "replicated" else df.iloc[:baseline_rows]
    clear_caches(lfs)
    single, single_s = timed(lambda: PandasLFApplier(lfs).apply(base_df, progress_bar=False))
    clear_caches(lfs)
    parallel, parallel_s = timed(
        # fault_tolerant: Dask infers the output's type by calling the LFs on a made-up
        # row holding None, on which any LF that reads text fails; an LF failing on a real
        # row would then vote ABSTAIN, which the equality check below would catch.
        lambda: PandasParallelLFApplier(lfs).apply(
            base_df, n_parallel=jobs, scheduler="processes", fault_tolerant=True
        )
    )
    clear_caches(lfs)
    result, ours_s = timed(lambda: apply_lfs(df, lfs, n_jobs=jobs))
    for applier, matrix in (("PandasLFApplier", single), ("PandasParallelLFApplier", parallel)):
        if not np.array_equal(result.matrix[: len(base_df)], matrix):
            raise SystemExit(f"{name}: apply_lfs and {applier} disagree; no timing counts")
    single_rate = len(base_df) / single_s
    parallel_rate = len(base_df) / parallel_s
    ours_rate = len(df) / ours_s
    return {
        "rows": len(df),
        "unique_rows": result.unique_rows,
        "baseline_rows": len(base_df),
        "processes": jobs,
        "parallel_lf_applier_s": round(parallel_s, 3),
        "parallel_lf_applier_rows_per_s": round(parallel_rate, 1),
        "pandas_lf_applier_s": round(single_s, 3),
        "pandas_lf_applier_rows_per_s": round(single_rate, 1),
        "apply_lfs_s": round(ours_s, 3),
        "apply_lfs_rows_per_s": round(ours_rate, 1),
        "ratio": round(ours_rate / parallel_rate, 2),
        "ratio_single": round(ours_rate / single_rate, 2),
        "matrices_identical": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per batch")
    parser.add_argument(
        "--baseline-rows",
        type=int,
        default=100_000,
        help="rows of the unique batch that Snorkel's appliers are timed on (a prefix when "
        "fewer than --rows)",
    )
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="processes of apply_lfs and of Snorkel's parallel applier (default: one per "
        "CPU, at least 2, the parallel applier's minimum)",
    )
    args = parser.parse_args()
    if args.rows < 1 or args.baseline_rows < 1:
        parser.error("--rows and --baseline-rows must be >= 1")
    if args.n_jobs is not None and args.n_jobs < 2:
        parser.error(
            f"--n-jobs must be >= 2 (Snorkel's parallel applier's minimum), got {args.n_jobs}"
        )
    jobs = args.n_jobs or max(2, os.cpu_count() or 1)

    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # Other work on the machine slows the pool first; keep the load with the figures.
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "n_jobs": jobs,
        "lfs": [lf.name for lf in load_dataset("youtube-spam").lf_set("tutorial")],
    }
    print(f"YouTube spam LFs ({len(figures['lfs'])}), {os.cpu_count()} CPUs")
    for name, df in batches(args.rows).items():
        row = measure(name, df, args.baseline_rows, jobs)
        figures[name] = row
        print(
            f"{name:>10}: {row['rows']:,} rows ({row['unique_rows']:,} distinct texts), "
            f"{jobs} processes: apply_lfs {row['apply_lfs_rows_per_s']:,.0f} rows/s "
            f"({row['apply_lfs_s']:.2f} s) vs PandasParallelLFApplier "
            f"{row['parallel_lf_applier_rows_per_s']:,.0f} rows/s: {row['ratio']:.2f}x "
            f"(PandasLFApplier, 1 process: {row['pandas_lf_applier_rows_per_s']:,.0f} rows/s, "
            f"{row['ratio_single']:.2f}x; Snorkel timed on {row['baseline_rows']:,} rows); "
            "matrices identical"
        )
    figures["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
