"""Ingest read speed: mlsys read_dataset against plain pandas.read_csv on the same files.

The baseline is what a user would otherwise write (read every CSV, concatenate); mlsys
adds column checks, label parsing, string dtypes and provenance on top, so the ratio
shows what that normalization costs. Also times the Parquet encoding of the batch.

    .venv/bin/python benchmarks/ingest.py [--rows 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mlsys.data import read_dataset, write_parquet_bytes
from mlsys.data.definition import load_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "youtube-spam"
RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"


def replicate(target_rows: int, folder: Path, layout: str) -> int:
    """Fill ``folder`` with about ``target_rows`` rows of the YouTube CSVs.

    ``small``: many copies of the original files (~400 rows each);
    ``large``: one big file per video (the copies concatenated).
    """
    files = sorted(DATA.glob("*.csv"))
    per_copy = sum(len(pd.read_csv(f)) for f in files)
    copies = max(1, round(target_rows / per_copy))
    for f in files:
        if layout == "small":
            for i in range(copies):
                shutil.copy(f, folder / f"{i:04d}-{f.name}")
        else:
            header, _, body = f.read_bytes().partition(b"\n")
            body = body if body.endswith(b"\n") else body + b"\n"
            (folder / f.name).write_bytes(header + b"\n" + body * copies)
    return copies * per_copy


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows to read (approx.)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    args = parser.parse_args()

    report: dict[str, dict[str, float | int]] = {}
    for layout in ("large", "small"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            rows = replicate(args.rows, folder, layout)
            files = sorted(folder.glob("*.csv"))

            def baseline(files: list[Path] = files) -> pd.DataFrame:
                return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)

            def mlsys_read(folder: Path = folder) -> pd.DataFrame:
                return read_dataset(load_dataset("youtube-spam"), str(folder))

            df = mlsys_read()
            assert len(df) == rows == len(baseline()), "row counts differ"
            t_base = best_of(args.repeat, baseline)
            t_mlsys = best_of(args.repeat, mlsys_read)
            t_parquet = best_of(args.repeat, lambda df=df: write_parquet_bytes(df))
        report[layout] = {
            "rows": rows,
            "files": len(files),
            "baseline_pandas_read_csv_s": round(t_base, 4),
            "mlsys_read_source_s": round(t_mlsys, 4),
            "mlsys_rows_per_s": round(rows / t_mlsys),
            "ratio_mlsys_over_baseline_time": round(t_mlsys / t_base, 3),
            "parquet_encode_s": round(t_parquet, 4),
        }
        print(f"{layout}: {rows} rows in {len(files)} CSV files (best of {args.repeat})")
        print(f"  baseline pandas.read_csv + concat : {t_base:.3f} s")
        print(
            f"  mlsys read_dataset (normalized)   : {t_mlsys:.3f} s  ({rows / t_mlsys:,.0f} rows/s)"
        )
        print(f"  ratio mlsys / baseline time       : {t_mlsys / t_base:.2f}x")
        print(f"  Parquet encode of the batch       : {t_parquet:.3f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
