"""The summary rows for benchmarks/lf_apply.py (results/lf_apply.json)."""

from __future__ import annotations

from ._format import Results, commas, fmt, size_label, times


def render_lf_apply(results: Results) -> str:
    """Summary rows: applying the YouTube LFs against Snorkel's parallel applier (the
    same processes), with its single-process ``PandasLFApplier`` beside it."""
    rows = []
    machine = results["machine"]
    start, end = machine["load_average_1min_at_start"], machine["load_average_1min_at_end"]
    busy = max(start, end) >= machine["cpus"]
    load = (
        f"; the machine was busy (1-minute load average {fmt(start, 1)} at the start, "
        f"{fmt(end, 1)} at the end), which slows every applier"
        if busy
        else ""
    )
    for name, what in (
        ("replicated", "comments, replicated ({distinct} distinct)"),
        ("unique", "unique comments (row number appended)"),
    ):
        run = results[name]
        checked = "matrices checked identical" if run["matrices_identical"] else "NOT identical"
        label = what.format(distinct=commas(run["unique_rows"]))
        rows.append(
            f"| `lf_apply.py`: YouTube LFs over {size_label(run['rows'])} {label} "
            f"| Snorkel `PandasParallelLFApplier`, {run['processes']} processes, same LFs and "
            f"rows, {checked} | **{times(run['ratio'], 2)}** "
            f"({commas(run['apply_lfs_rows_per_s'])} vs "
            f"{commas(run['parallel_lf_applier_rows_per_s'])} rows/s; against the "
            f"single-process `PandasLFApplier` {times(run['ratio_single'], 1)}){load} |"
        )
    return "\n".join(rows)
