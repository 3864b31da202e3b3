"""The summary row and section for benchmarks/spill_limit.py (results/spill_limit.json)."""

from __future__ import annotations

from ._format import Results, fmt, mib, sci, times


def _gb(size_bytes: float) -> str:
    return f"{size_bytes / 1e9:.1f} GB"


def spill_limit_row(results: Results) -> str:
    """Summary row: Spill inside a memory cgroup, against plain training."""
    runs, limit = results["runs"], results["limit_bytes"]
    spilled, plain_in = runs["spill, in the limit"], runs["plain, in the limit"]
    ratio = results["spill_step_over_plain_unlimited"]
    model = results["model"]
    plain_outcome = "trains" if plain_in["trained"] else "is killed by the kernel"
    spill_outcome = (
        f"**trains** it (cgroup peak {mib(spilled['cgroup_peak_bytes'])} MiB, page cache included)"
        if spilled["trained"]
        else "is killed too"
    )
    step = f"; step {times(ratio)} plain training without a limit" if ratio else ""
    difference = results["equal"]["max_abs_parameter_difference"]
    equal = "exactly" if difference == 0 else f"within {sci(difference)}"
    return (
        f"| `spill_limit.py`: {model['depth']} x Linear {model['width']} "
        f"({model['parameters'] / 1e6:.0f}M parameters, {_gb(results['training_state_bytes'])} "
        f"of training state with Adam, {fmt(results['state_over_limit'], 1)}x the limit) in a "
        f"{mib(limit)} MiB memory cgroup, Spill(disk) under {mib(results['budget_bytes'])} MiB "
        f"| plain `fit` in the same cgroup, and without a limit | plain {plain_outcome}; Spill "
        f"{spill_outcome}{step}; parameters equal plain training's {equal} "
        f"({results['equal']['depth']}-block model); target "
        f"{'met' if results['met'] else 'not met'} |"
    )


def render_spill_limit(results: Results) -> str:
    """Section: what trains inside a container's memory limit."""
    runs, limit = results["runs"], results["limit_bytes"]
    lines = [
        f"Spill inside a memory limit (`benchmarks/spill_limit.py`; each run in a memory "
        f"cgroup of its own\nwith a {mib(limit)} MiB limit and no swap, the page cache its "
        "files use charged to it, as\na container's limit does; peak is the cgroup's high-water "
        "mark; step times leave out\nthe first step):",
        "",
        "| run | trained | cgroup peak | median step | every step |",
        "|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        peak = f"{mib(run['cgroup_peak_bytes'])} MiB" if "cgroup_peak_bytes" in run else "no limit"
        step = run.get("median_step_seconds")
        outcome = "yes" if run["trained"] else (
            "no: killed by the kernel" if run.get("oom_kills") else "no"
        )  # fmt: skip
        steps = ", ".join(fmt(t, 1) for t in run.get("step_seconds", []))
        lines.append(
            f"| {name} | {outcome} | {peak} | {f'{fmt(step)} s' if step is not None else ''} "
            f"| {f'{steps} s' if steps else ''} |"
        )
    spilled = runs["spill, in the limit"]["step_seconds"]
    if len(spilled) > 2 and spilled[-1] > 2 * spilled[1]:
        lines += [
            "",
            f"Spill trains inside the limit, but its steps there grow from "
            f"{fmt(spilled[1], 0)} s to {fmt(spilled[-1], 0)} s, where without a limit\nthey "
            "stay within a small factor of plain training's (above). Not explained yet: the "
            "page\ncache of the shard files, charged to the cgroup and reclaimed under the "
            "limit, is the first\nsuspect.",
        ]
    return "\n".join(lines)
