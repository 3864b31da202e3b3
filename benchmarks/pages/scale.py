"""The summary row and section for benchmarks/scale.py (results/scale.json)."""

from __future__ import annotations

from ._format import Results, commas, fmt, pct, size_label

TARGET_ROWS = 10_000_000
NAMES = {
    "ingest": "ingest (with validation)",
    "label": "weak_label (in parts)",
    "infer": "batch_infer",
}


def _mb(size_bytes: float) -> str:
    return f"{commas(size_bytes / 1e6)} MB"


def _measured_at(results: Results) -> str:
    rows = results["rows"]
    if rows >= TARGET_ROWS:
        return f"measured at {commas(rows)} rows"
    return (
        f"measured at {commas(rows)} rows; the {size_label(TARGET_ROWS)}-row run was not made "
        "on this machine"
    )


def scale_row(results: Results) -> str:
    """Summary row: the stages at scale, peak RSS per process against the 1.5 GB target."""
    head, stages = results["headline"], results["stages"]
    rates = "; ".join(
        f"{NAMES[name]} {commas(s['rows_per_s'])} rows/s (serial {pct(s['serial_share'])}%)"
        for name, s in stages.items()
    )
    verdict = "met" if head["met_at_these_rows"] else "NOT met"
    return (
        f"| `scale.py`: {size_label(results['rows'])} generated distinct comments through "
        f"{', '.join(NAMES[s] for s in stages)} on a Dask cluster of "
        f"{results['options']['workers']} workers "
        f"| the 1.5 GB peak-RSS target per process | largest process "
        f"{_mb(head['peak_rss_max_bytes'])}: 1.5 GB limit {verdict} at "
        f"{_measured_at(results).removeprefix('measured at ')}; {rates} |"
    )


def render_scale(results: Results) -> str:
    """Section: rows/s, peak RSS and serial share per stage, and the Amdahl projection."""
    head, stages = results["headline"], results["stages"]
    workers = results["options"]["workers"]
    lines = [
        f"Scale (`benchmarks/scale.py`; see [scale](scale.md)), {_measured_at(results)}:\n"
        f"{commas(results['rows'])} rows in {results['source']['files']} CSV files (the gold "
        "file and generated distinct\ncomments) through each stage's flow in a fresh process, "
        f"on a Dask cluster of {workers}\none-thread workers made for the stage. Seconds run "
        "from the process's start to the flow's\nreturn; peak RSS is per process (RSS and the "
        "kernel's high-water mark, sampled every\n0.2 s); the serial share comes from the task "
        "runs the Prefect API recorded (serial = wall\nless the span of the partition tasks).",
        "",
        "| stage | seconds | rows/s | largest process | serial share | scheduler | driver "
        "| label model | serial tasks on the cluster | partition work |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in stages.items():
        parts = s["serial_parts_s"]
        largest = max((p for p in s["processes"] if p["of"] == "stage"), key=_peak)
        lines.append(
            f"| {NAMES[name]} | {fmt(s['seconds'], 1)} | {commas(s['rows_per_s'])} "
            f"| {_mb(largest['peak_rss_bytes'])} ({largest['role']}) "
            f"| {pct(s['serial_share'])}% | {fmt(parts['scheduler'], 1)} s "
            f"| {fmt(parts['driver'], 1)} s | {fmt(parts['label_model'], 1)} s "
            f"| {fmt(parts['serial_tasks_on_cluster'], 1)} s "
            f"| {fmt(s['partition_work_s'], 1)} s in {s['partition_tasks']} tasks |"
        )
    counts = sorted({n for s in stages.values() for n in s["projected_speedup"]}, key=int)
    lines += [
        "",
        "Projected speed-up over one worker (Amdahl, `1 / (s + (1 - s) / N)` from the serial "
        "share\nabove): a projection, not a measurement.",
        "",
        "| stage | " + " | ".join(f"N = {n}" for n in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for name, s in stages.items():
        projected = s["projected_speedup"]
        lines.append(
            f"| {NAMES[name]} | " + " | ".join(f"{fmt(projected[n])}x" for n in counts) + " |"
        )
    over = head["processes_over_limit"]
    lines += [
        "",
        f"Peak RSS: the largest stage process was {_mb(head['peak_rss_max_bytes'])};\n"
        + (
            "none was above 1.5 GB"
            if not over
            else "above 1.5 GB: "
            + ", ".join(f"{o['stage']} {o['role']} {_mb(o['peak_rss_bytes'])}" for o in over)
        )
        + f" at {commas(results['rows'])} rows.\n"
        + (
            "The target (10M rows, no process above 1.5 GB) is met."
            if head["met"]
            else "The target is for 10M rows: it is not shown met by this run."
        ),
        "",
        "The stack's services (not stage processes; the largest peak over the stages): "
        + ", ".join(f"{role} {_mb(peak)}" for role, peak in _service_peaks(stages))
        + ".",
    ]
    return "\n".join(lines)


SERVICES = (  # what a stack service's role starts with, and its name on the page
    ("weed", "SeaweedFS"),
    ("python mlflow server", "MLflow server"),
    ("python -m uvicorn", "MLflow's app process (uvicorn)"),
    ("python -m infra.prefect_server", "Prefect server"),
    ("python prefect worker", "Prefect worker"),
)


def _service_peaks(stages: Results) -> list[tuple[str, int]]:
    """Each stack service's largest peak RSS over the stages, largest first."""
    peaks: dict[str, int] = {}
    for stage in stages.values():
        for process in stage["processes"]:
            if process["of"] == "stack service":
                role = process["role"]
                name = next((n for start, n in SERVICES if role.startswith(start)), role)
                peaks[name] = max(peaks.get(name, 0), _peak(process))
    return sorted(peaks.items(), key=lambda item: -item[1])


def _peak(process: Results) -> int:
    return int(process["peak_rss_bytes"])
