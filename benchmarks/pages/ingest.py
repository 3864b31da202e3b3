"""The summary row for benchmarks/ingest.py (results/ingest.json)."""

from __future__ import annotations

from ._format import Results, fmt, sig, size_label, times


def render_ingest(results: Results) -> str:
    """Summary row: reading CSV files into a normalized batch against ``pandas.read_csv``."""
    layouts = sorted(results.values(), key=lambda r: r["files"])
    rows = " / ".join(dict.fromkeys(size_label(round(r["rows"], -3)) for r in layouts))
    files = " / ".join(f"{r['files']} files" for r in layouts)
    ratios = [r["ratio_mlsys_over_baseline_time"] for r in layouts]
    shown = " / ".join(times(r, 1) for r in ratios)
    verdict = "slower than" if all(r >= 1 for r in ratios) else "the time of"
    seconds = "; ".join(
        f"{sig(r['mlsys_read_source_s'])} s vs {sig(r['baseline_pandas_read_csv_s'])} s"
        for r in layouts
    )
    speed = " / ".join(f"{fmt(r['mlsys_rows_per_s'] / 1e6, 1)}M" for r in layouts)
    return (
        f"| `ingest.py`: read {rows} rows ({files}) into a normalized batch | "
        f"`pandas.read_csv` of the same files | {shown} {verdict} the bare read ({seconds}): "
        f"the price of normalization, dtype enforcement and provenance columns, "
        f"~{speed} rows/s |"
    )
