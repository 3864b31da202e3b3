"""Raw-batch validation speed: the GX checkpoint against the same checks in plain pandas.

The batch is the 1,956 YouTube comments replicated to ``--sizes`` rows, with a replica
suffix on ``comment_id`` so only the three ids the real data repeats (per replica) fail
the uniqueness rule. Both sides run the shipped ``gx/expectations/raw.json`` suite in
quarantine mode: run_checkpoint (scratch GX project, checkpoint run with every failing
row's index, verdict, passed/quarantined split; no Data Docs) and the baseline, each of
the suite's 21 expectations written as one vectorized pandas expression, with the same
split. Before any timing counts, both must quarantine the same rows and count the same
warnings.

Each measurement runs in a fresh process (data built, engine warmed on 1,000 rows, then
timed), so memory figures do not depend on what ran before. Memory is the peak resident
set size (RSS: the kernel's high-water mark, reset just before; sampled every 5 ms where
that is missing) during the timed call minus the RSS just
before it: what the call adds on top of the batch. tracemalloc is not used because the
string columns live in Arrow buffers it does not see.

Also times ``import great_expectations`` against ``import pandas``, each in a fresh
interpreter (the import is paid by every CLI call and flow run that validates).

    .venv/bin/python benchmarks/validate.py [--sizes 10000,100000,1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _measure import peak_rss_during, rss

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "youtube-spam"
RESULTS = Path(__file__).resolve().parent / "results" / "validate.json"
REASON = "quarantine_reason"
WARMUP_ROWS = 1_000


# --- the batch ------------------------------------------------------------------------------------


def batch(rows: int) -> pd.DataFrame:
    """``rows`` rows of the raw YouTube batch, comment ids made unique per replica."""
    from mlsys.data import read_dataset
    from mlsys.data.definition import load_dataset

    comments = read_dataset(load_dataset("youtube-spam"), str(DATA))
    position = np.arange(rows)
    df = comments.iloc[position % len(comments)].reset_index(drop=True)
    replica = pd.Series(position // len(comments)).astype(str).astype("string")
    df["comment_id"] = df["comment_id"] + "-" + replica
    return df


# --- the baseline: the raw suite's checks as plain pandas -----------------------------------------


def _column_map_failures(
    kind: str, values: pd.Series[Any], kwargs: Mapping[str, Any]
) -> pd.Series[bool]:
    """True where a row breaks a column-map expectation; nulls pass every rule but not-null."""
    present = values.notna()
    if kind == "expect_column_values_to_not_be_null":
        return ~present
    if kind == "expect_column_values_to_be_unique":
        return present & values.duplicated(keep=False)
    if kind == "expect_column_values_to_be_in_set":
        return present & ~values.isin(kwargs["value_set"])
    if kind == "expect_column_values_to_be_between":
        bad = pd.Series(False, index=values.index)
        if kwargs.get("min_value") is not None:
            bad |= (values < kwargs["min_value"]).fillna(False)
        if kwargs.get("max_value") is not None:
            bad |= (values > kwargs["max_value"]).fillna(False)
        return present & bad
    if kind == "expect_column_value_lengths_to_be_between":
        lengths = values.str.len()
        outside = (lengths < kwargs["min_value"]) | (lengths > kwargs["max_value"])
        bad_length: pd.Series[bool] = outside.fillna(False).astype(bool)
        return present & bad_length
    if kind in ("expect_column_values_to_match_regex", "expect_column_values_to_not_match_regex"):
        found = values.str.contains(re.compile(kwargs["regex"])).fillna(False).astype(bool)
        return present & (~found if kind.endswith("_to_match_regex") else found)
    raise ValueError(f"the pandas baseline does not implement {kind}")


def pandas_checks(df: pd.DataFrame, suite: Mapping[str, Any]) -> dict[str, Any]:
    """The suite's checks, vectorized, with run_checkpoint's quarantine split and counts."""
    from mlsys.validation.suites import gx_type, is_row_rule

    failed: list[str] = []
    batch_failed = False
    warnings: dict[str, int] = {}
    row_failures: dict[str, pd.Series[bool]] = {}
    for exp in suite["expectations"]:
        kind, kwargs = exp["type"], exp["kwargs"]
        column = kwargs.get("column")
        key = f"{column}: {kind}"
        critical = exp.get("severity", "critical") == "critical"
        if kind == "expect_table_columns_to_match_set":
            ok = set(df.columns) == set(kwargs["column_set"])
        elif column not in df.columns:
            ok = False
        elif kind == "expect_column_values_to_be_in_type_list":
            ok = gx_type(df[column].dtype) in kwargs["type_list"]
        else:
            mask = _column_map_failures(kind, df[column], kwargs)
            count = int(mask.sum())
            ok = count == 0
            if not ok and not critical:
                warnings[f"{key} {kwargs.get('regex', '')}".strip()] = count
            elif not ok and is_row_rule(exp):
                if kind == "expect_column_values_to_be_unique":
                    mask = mask & df[column].duplicated(keep="first")
                row_failures[key] = mask
                failed.append(key)
                continue
        if not ok and critical:
            failed.append(key)
            batch_failed = True
    bad = pd.Series(False, index=df.index)
    if not batch_failed:
        for mask in row_failures.values():
            bad |= mask
    reasons = pd.Series("", index=df.index[bad], dtype=object)
    for key, mask in row_failures.items():
        hit = mask[bad]
        reasons[hit] = reasons[hit] + "; " + key
    quarantined = df[bad].assign(**{REASON: reasons.str[2:].astype("string")})
    return {
        "passed": df[~bad],
        "quarantined": quarantined,
        "failed": failed,
        "batch_failed": batch_failed,
        "warnings": warnings,
    }


def gx_checks(df: pd.DataFrame, suite: Mapping[str, Any]) -> dict[str, Any]:
    from mlsys.validation.checkpoint import run_checkpoint

    report = run_checkpoint(df, suite, mode="quarantine")
    warnings = {
        f"{w.column}: {w.expectation} {w.kwargs.get('regex', '')}".strip(): int(w.count or 0)
        for w in report.warnings
    }
    return {
        "passed": report.passed,
        "quarantined": report.quarantined,
        "failed": [f"{f.column}: {f.expectation}" for f in report.failures],
        "batch_failed": bool(report.batch_failures),
        "warnings": warnings,
    }


ENGINES: dict[str, Callable[[pd.DataFrame, Mapping[str, Any]], dict[str, Any]]] = {
    "pandas": pandas_checks,
    "gx": gx_checks,
}


# --- one measurement, in its own process ----------------------------------------------------------


def worker(engine: str, rows: int, repeat: int) -> dict[str, Any]:
    """Time ``engine`` on ``rows`` rows: best of ``repeat`` runs, peak RSS of the first."""
    from mlsys.validation.checkpoint import load_shipped_suite

    suite = load_shipped_suite("raw")
    run = ENGINES[engine]
    df = batch(rows)
    small = df.head(WARMUP_ROWS)
    run(small, suite)  # imports, GX context and metric code paths
    start = time.perf_counter()
    run(small, suite)
    small_s = time.perf_counter() - start  # about the fixed cost of one call
    times: list[float] = []
    rss_delta = 0
    for i in range(repeat):
        before = rss()
        start = time.perf_counter()
        out, peak = peak_rss_during(lambda: run(df, suite))
        times.append(time.perf_counter() - start)
        if i == 0:
            rss_delta = peak - before
    quarantined = out["quarantined"]
    return {
        "rows": rows,
        "seconds": min(times),
        "all_seconds": times,
        "peak_rss_delta_bytes": rss_delta,
        "rss_before_bytes": before,
        "warm_1000_rows_s": small_s,
        "rows_passed": len(out["passed"]),
        "rows_quarantined": len(quarantined),
        # What both engines must agree on before a timing counts.
        "quarantined_ids": sorted(quarantined["comment_id"].tolist()),
        "failed": sorted(out["failed"]),
        "batch_failed": out["batch_failed"],
        "warnings": dict(sorted(out["warnings"].items())),
    }


def measure(engine: str, rows: int, repeat: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", engine, "--sizes", str(rows)]
    command += ["--repeat", str(repeat)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=_env())
    if done.returncode != 0:
        raise SystemExit(f"{engine} on {rows} rows failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _env() -> dict[str, str]:
    return {**os.environ, "GX_ANALYTICS_ENABLED": "false"}


def import_seconds(module: str, repeat: int) -> float:
    """Best wall time of a fresh interpreter that imports ``module`` and exits."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, env=_env())
        times.append(time.perf_counter() - start)
    return min(times)


# --- the report -----------------------------------------------------------------------------------


def _mib(n: int) -> float:
    return n / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="comma-separated batch sizes in rows (default: 10000,100000,1000000)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument(
        "--import-repeat", type=int, default=5, help="fresh interpreters per import timing"
    )
    parser.add_argument("--worker", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.repeat < 1 or args.import_repeat < 1:
        parser.error("--sizes, --repeat and --import-repeat must be >= 1")

    if args.worker:
        print(json.dumps(worker(args.worker, sizes[0], args.repeat)))
        return

    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pandas": pd.__version__,
            "great_expectations": _version("great_expectations"),
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "suite": "raw",
        "mode": "quarantine",
        "repeat": args.repeat,
        "memory": "peak RSS during the timed call minus RSS before it (psutil, 5 ms sampling), "
        "first run of each measurement, fresh process per engine and size",
        "sizes": {},
    }
    print(f"raw suite, quarantine mode, {os.cpu_count()} CPUs, best of {args.repeat}")
    header = (
        f"{'rows':>10} {'GX s':>8} {'GX rows/s':>11} {'GX +MiB':>8} "
        f"{'pandas s':>9} {'pandas rows/s':>14} {'pandas +MiB':>11} {'GX/pandas':>10} "
        f"{'quarantined':>11}"
    )
    print(header)
    for rows in sizes:
        gx = measure("gx", rows, args.repeat)
        base = measure("pandas", rows, args.repeat)
        for key in ("quarantined_ids", "failed", "batch_failed", "warnings", "rows_passed"):
            if gx[key] != base[key]:
                raise SystemExit(
                    f"{rows} rows: GX and the pandas baseline disagree on {key}; no timing counts"
                    f"\n  GX: {str(gx[key])[:500]}\n  pandas: {str(base[key])[:500]}"
                )
        row = {
            "rows": rows,
            "rows_passed": gx["rows_passed"],
            "rows_quarantined": gx["rows_quarantined"],
            "warnings": gx["warnings"],
            "gx_s": round(gx["seconds"], 4),
            "gx_all_s": [round(t, 4) for t in gx["all_seconds"]],
            "gx_rows_per_s": round(rows / gx["seconds"]),
            "gx_peak_rss_delta_mib": round(_mib(gx["peak_rss_delta_bytes"]), 1),
            "pandas_s": round(base["seconds"], 4),
            "pandas_all_s": [round(t, 4) for t in base["all_seconds"]],
            "pandas_rows_per_s": round(rows / base["seconds"]),
            "pandas_peak_rss_delta_mib": round(_mib(base["peak_rss_delta_bytes"]), 1),
            "gx_process_rss_before_mib": round(_mib(gx["rss_before_bytes"]), 1),
            "gx_warm_1000_rows_s": round(gx["warm_1000_rows_s"], 4),
            "pandas_warm_1000_rows_s": round(base["warm_1000_rows_s"], 4),
            "ratio_gx_over_pandas_time": round(gx["seconds"] / base["seconds"], 2),
            "results_identical": True,
        }
        figures["sizes"][str(rows)] = row
        print(
            f"{rows:>10,} {row['gx_s']:>8.3f} {row['gx_rows_per_s']:>11,} "
            f"{row['gx_peak_rss_delta_mib']:>8.1f} {row['pandas_s']:>9.3f} "
            f"{row['pandas_rows_per_s']:>14,} {row['pandas_peak_rss_delta_mib']:>11.1f} "
            f"{row['ratio_gx_over_pandas_time']:>9.1f}x {row['rows_quarantined']:>11,}"
        )
    print("quarantined rows and warning counts identical in GX and pandas at every size")
    first = figures["sizes"][str(sizes[0])]
    print(
        f"one warm call on {WARMUP_ROWS:,} rows (about the fixed cost): "
        f"GX {first['gx_warm_1000_rows_s']:.3f} s, pandas {first['pandas_warm_1000_rows_s']:.3f} s"
    )

    gx_import = import_seconds("great_expectations", args.import_repeat)
    pandas_import = import_seconds("pandas", args.import_repeat)
    bare = import_seconds("sys", args.import_repeat)
    figures["import"] = {
        "repeat": args.import_repeat,
        "python_startup_s": round(bare, 3),
        "import_great_expectations_s": round(gx_import, 3),
        "import_pandas_s": round(pandas_import, 3),
        "great_expectations_over_pandas_s": round(gx_import - pandas_import, 3),
    }
    print(
        f"fresh-interpreter import, best of {args.import_repeat} (wall, incl. {bare:.3f} s "
        f"startup): great_expectations {gx_import:.2f} s, pandas {pandas_import:.2f} s "
        f"(+{gx_import - pandas_import:.2f} s for GX)"
    )
    figures["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {RESULTS}")


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


if __name__ == "__main__":
    main()
