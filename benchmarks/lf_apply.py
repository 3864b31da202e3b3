"""LF application speed: mlsys apply_lfs against Snorkel's PandasLFApplier, YouTube spam LFs.

The baseline is what a Snorkel user would otherwise call, on the same DataFrame and LFs.
Two batches of ``--rows`` rows, both in the platform's raw-batch schema (read_dataset):

- replicated: the 1,956 real comments repeated (each comment about 51 times at 100k
  rows); apply_lfs evaluates each distinct text once, Snorkel memoizes only the
  TextBlob preprocessor on identical rows;
- unique: the same rows with the row number appended to each text, so no two agree.

Before any timing counts, both appliers' matrices must be identical. PandasLFApplier
runs at roughly 1,000 rows/s on unique texts, so on that batch it is timed on the first
``--baseline-rows`` rows only: every unique row costs it about the same, so its rows/s on
a prefix is its rows/s on the whole batch, and the ratio compares rows/s. On the
replicated batch it runs on all rows, because there its speed grows with the number of
repeats (memo hits), which a prefix would understate.

    .venv/bin/python benchmarks/lf_apply.py [--rows 100000] [--baseline-rows 10000]
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


def measure(name: str, df: pd.DataFrame, baseline_rows: int, n_jobs: int | None) -> dict[str, Any]:
    lfs = load_dataset("youtube-spam").lf_set("tutorial")
    base_df = df if name == "replicated" else df.iloc[:baseline_rows]
    clear_caches(lfs)
    expected, base_s = timed(lambda: PandasLFApplier(lfs).apply(base_df, progress_bar=False))
    clear_caches(lfs)
    result, ours_s = timed(lambda: apply_lfs(df, lfs, n_jobs=n_jobs))
    if not np.array_equal(result.matrix[: len(base_df)], expected):
        raise SystemExit(f"{name}: apply_lfs and PandasLFApplier disagree; no timing counts")
    base_rate = len(base_df) / base_s
    ours_rate = len(df) / ours_s
    return {
        "rows": len(df),
        "unique_rows": result.unique_rows,
        "baseline_rows": len(base_df),
        "pandas_lf_applier_s": round(base_s, 3),
        "pandas_lf_applier_rows_per_s": round(base_rate, 1),
        "apply_lfs_s": round(ours_s, 3),
        "apply_lfs_rows_per_s": round(ours_rate, 1),
        "ratio": round(ours_rate / base_rate, 2),
        "matrices_identical": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per batch")
    parser.add_argument(
        "--baseline-rows",
        type=int,
        default=10_000,
        help="rows of the unique batch that PandasLFApplier is timed on (a prefix)",
    )
    parser.add_argument(
        "--n-jobs", type=int, default=None, help="apply_lfs processes (default: one per CPU)"
    )
    args = parser.parse_args()
    if args.rows < 1 or args.baseline_rows < 1:
        parser.error("--rows and --baseline-rows must be >= 1")

    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # Other work on the machine slows the pool first; keep the load with the figures.
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "n_jobs": args.n_jobs,
        "lfs": [lf.name for lf in load_dataset("youtube-spam").lf_set("tutorial")],
    }
    print(f"YouTube spam LFs ({len(figures['lfs'])}), {os.cpu_count()} CPUs")
    for name, df in batches(args.rows).items():
        row = measure(name, df, args.baseline_rows, args.n_jobs)
        figures[name] = row
        print(
            f"{name:>10}: {row['rows']:,} rows ({row['unique_rows']:,} distinct texts); "
            f"PandasLFApplier {row['pandas_lf_applier_rows_per_s']:,.0f} rows/s "
            f"(timed on {row['baseline_rows']:,} rows), apply_lfs "
            f"{row['apply_lfs_rows_per_s']:,.0f} rows/s ({row['apply_lfs_s']:.2f} s): "
            f"{row['ratio']:.1f}x; matrices identical"
        )
    figures["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
