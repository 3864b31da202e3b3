"""The summary row and section for benchmarks/spill.py (results/spill.json, fused Adam, and
results/spill_adam_default.json, torch's default Adam)."""

from __future__ import annotations

import statistics

from ._format import (
    MIB,
    Results,
    adam,
    bold,
    commas,
    cpus,
    fmt,
    mib,
    pct,
    span,
    target_value,
    thousands,
    times,
    word,
)

# The configuration this project recommends for Spill on a CPU (bold in the table).
SPILL_RECOMMENDED = "disk-thp"


_SPILL_ORDER = [
    "plain",
    "plain-thp",
    "disk",
    "disk-thp",
    "disk-sync",
    "disk-heap",
    "host",
    "disk-eager",
]
_SPILL_LABELS = {
    "plain-thp": "plain, huge pages",
    "disk": "Spill(disk), prefetch",
    "disk-thp": "Spill(disk), prefetch, huge pages",
    "disk-sync": "Spill(disk), no prefetch",
    "disk-heap": "Spill(disk), glibc heap kept",
    "host": "Spill(host), prefetch",
    "disk-eager": "Spill(disk), model built on the CPU first",
}


def _spill_runs(results: Results) -> list[tuple[str, Results]]:
    runs = results["runs"]
    order = [k for k in _SPILL_ORDER if k in runs] + [k for k in runs if k not in _SPILL_ORDER]
    return [(k, runs[k]) for k in order]


def _spill_label(key: str, run: Results, results: Results) -> str:
    if key == "plain":
        return f"plain, {results['threads']} threads"
    return _SPILL_LABELS.get(key) or str(run.get("label", key))


def _thp(results: Results) -> str:
    env: dict[str, str] = next((r["env"] for r in results["runs"].values() if r.get("env")), {})
    return ", ".join(f"`{k}={v}`" for k, v in env.items())


def _run_medians(run: Results) -> list[float]:
    """Each round's median step (its first, warm-up step left out), as spill.py takes them."""
    return [statistics.median(r["step_seconds"][1:]) for r in run["runs"]]


def spill_row(fused: Results, default: Results) -> str:
    runs, other = fused["runs"], default["runs"]
    rec = runs[SPILL_RECOMMENDED]
    over_thp = rec["step_seconds_median"] / runs["plain-thp"]["step_seconds_median"]
    model = fused["model"]
    return (
        f"| `spill.py`: MLP of {fmt(model['parameters'] / 1e6, 1)}M parameters "
        f"({fmt(model['parameter_and_adam_state_bytes'] / 1e9)} GB with Adam state), Spill(disk)"
        f" under a {mib(fused['budget_bytes'])} MiB budget, batch {fused['batch_size']}, "
        f"{fused['threads']} threads, {adam(fused)} | plain `fit` on the same model and "
        f"optimizer | peak RSS **{mib(rec['peak_minus_warm_bytes'])} MiB** above the warm "
        f"runtime (plain: {mib(runs['plain']['peak_minus_warm_bytes'])} MiB); step "
        f"**{times(rec['step_vs_plain'])}** plain with huge pages ({_thp(fused)}; "
        f"{times(over_thp)} against plain also given them), {times(runs['disk']['step_vs_plain'])}"
        f" without; {adam(default)} {times(other['disk-thp']['step_vs_plain'])} / "
        f"{times(other['disk']['step_vs_plain'])}; see below |"
    )


def _spill_table(results: Results, shards: bool) -> list[str]:
    budget = results["budget_bytes"]
    header = f"| run, {adam(results)} | step s | vs plain | best run vs plain | peak RSS above warm"
    header += " | shards" if shards else ""
    header += " | page faults / step |"
    lines = [header, "|---|---|---|---|---|" + ("---|" if shards else "") + "---|"]
    plans_seen: set[tuple[int, ...]] = set()
    first_spill = True
    fused = results["adam"] == "fused"
    for key, run in _spill_runs(results):
        rec = fused and key == SPILL_RECOMMENDED
        peak = f"{mib(run['peak_minus_warm_bytes'])} MiB"
        if run["strategy"] == "spill" and first_spill and shards:
            peak += f" (budget {mib(budget)})"
            first_spill = False
        cells = [
            fmt(run["step_seconds_median"]),
            bold(times(run["step_vs_plain"]), rec),
            bold(times(run["best_run_step_vs_plain"]), rec),
            bold(peak, rec),
        ]
        if shards:
            plan = run.get("plan") or {}
            layers = tuple(plan.get("layers_per_shard", ()))
            if not plan:
                cells.append("–")
            elif layers in plans_seen:
                cells.append(str(plan["shards"]))
            else:
                plans_seen.add(layers)
                per = span(layers, str)
                cells.append(f"{plan['shards']} of {per} layers")
        cells.append(thousands(run["step_minor_faults_median"]))
        lines.append(f"| {_spill_label(key, run, results)} | " + " | ".join(cells) + " |")
    return lines


def render_spill(fused: Results, default: Results) -> str:
    """Section: Spill under a memory budget against plain ``fit``, with fused and default Adam
    (spill.json and spill_adam_default.json)."""
    runs, other = fused["runs"], default["runs"]
    model = fused["model"]
    overhead = [
        r["runtime_overhead_bytes"] / MIB for res in (fused, default) for r in res["runs"].values()
    ]
    overhead_text = span(overhead, lambda v: fmt(v, 0))
    steps = fused["steps_per_epoch"] * fused["epochs"]
    lines = [
        f"Spilling (`benchmarks/spill.py --rounds {fused['rounds']}`; {model['depth']} × Linear "
        f"{model['width']} + ReLU, batch {fused['batch_size']}, {fused['threads']}",
        f"threads; medians over {fused['rounds']} interleaved rounds of {steps} steps after a "
        "warm-up; RSS sampled and read from",
        "the kernel's high-water mark; the runtime's own memory, Python + torch + the data, is",
        f"{overhead_text} MiB above a cold interpreter and is subtracted; minor page faults per "
        "step from `getrusage`).",
        "Every run uses the same Adam: `Adam(fused=True)` (`--adam fused`, the",
        "default, `benchmarks/results/spill.json`), then torch's default Adam (`--adam default`,",
        '`benchmarks/results/spill_adam_default.json`). "Huge pages" runs start with',
        f"{_thp(fused)}, the others without:",
        "",
        *_spill_table(fused, shards=True),
        "",
        *_spill_table(default, shards=False),
    ]

    budget = fused["budget_bytes"]
    targets = {**{f"default {k}": v for k, v in default["targets"].items()}, **fused["targets"]}
    memory = [v for k, v in targets.items() if k.endswith("_peak_minus_warm_within_budget")]
    holds = "holds" if all(t["met"] for t in memory) else "does not hold"
    within = span((t["value"] / MIB for t in memory), lambda v: fmt(v, 0))
    under = "under" if all(t["met"] for t in memory) else "against"
    state = model["parameter_and_adam_state_bytes"]
    text = (
        f"The memory target {holds} in every Spill(disk) run: "
        f"{fmt(state / 1e9)} GB of parameters and Adam state\n({times(state / budget, 1)} the "
        f"budget) train with the process {within} MiB above its warm runtime, {under} the\n"
        f"{mib(budget)} MiB budget (stated overhead: the {overhead_text} MiB runtime)."
    )
    if "disk-eager" in runs:
        text += (
            " Building the model on the CPU first\n(instead of the meta device) costs its full "
            f"copy once, {mib(runs['disk-eager']['peak_minus_warm_bytes'])} MiB."
        )
    lines += ["", text]

    rec, plain, plain_thp = runs[SPILL_RECOMMENDED], runs["plain"], runs["plain-thp"]
    step_target = fused["targets"]["disk_prefetch_huge_pages_step_vs_plain"]
    best_target = fused["targets"]["disk_prefetch_huge_pages_best_run_step_vs_plain"]
    limit = target_value(step_target["target"])
    met = step_target["met"] and best_target["met"]
    median, best = times(rec["step_vs_plain"]), times(rec["best_run_step_vs_plain"])
    ratio = f"{median} plain training as\nit runs by default " + (
        "(median and best run)" if median == best else f"(median; best run {best})"
    )
    over_thp = rec["step_seconds_median"] / plain_thp["step_seconds_median"]
    thp_gain = plain_thp["step_vs_plain"]
    faster = f"{pct(1 - thp_gain)} % faster" if thp_gain < 1 else f"{pct(thp_gain - 1)} % slower"
    margin = (
        "It is not met with a margin: against plain\ntraining also given huge pages, which was "
        f"{faster} in this run, it is {times(over_thp)}"
        if over_thp > limit
        else "It holds against plain training also given huge pages, which was "
        f"{faster} in this run: {times(over_thp)}"
    )
    disk, d_disk, d_thp = runs["disk"], other["disk"], other["disk-thp"]
    plain_runs = span(_run_medians(other["plain"]), fmt)
    swing = span((d_disk["best_run_step_vs_plain"], d_thp["best_run_step_vs_plain"]), unit="x")
    lines += [
        "",
        f"The step-time target (≤ {times(limit, 1)} plain with prefetch) is "
        f"{'met' if met else 'not met'} by the configuration this\nproject recommends for Spill"
        f" on a CPU, fused Adam and huge pages: {ratio}. {margin}; without\nhuge pages Spill "
        f"sits at {times(disk['step_vs_plain'])} (best run "
        f"{times(disk['best_run_step_vs_plain'])}); with torch's default Adam, "
        f"{times(d_disk['step_vs_plain'])}, or "
        f"{times(d_thp['step_vs_plain'])}\nwith huge pages, where run-to-run noise on this host "
        f"(plain's runs: {plain_runs} s) makes the\nbest-run ratio swing ({swing}).",
    ]

    heap = runs["disk-heap"]
    fault_drop = disk["step_minor_faults_median"] / d_disk["step_minor_faults_median"]
    halve = "halve" if 0.4 <= fault_drop <= 0.6 else "fall"
    spill_gain = 1 - disk["step_seconds_median"] / d_disk["step_seconds_median"]
    plain_gain = 1 - plain["step_seconds_median"] / other["plain"]["step_seconds_median"]
    thp_default = other["plain-thp"]["step_vs_plain"]

    def effect(ratio: float) -> str:
        return "gained from it" if ratio < 1 else "lost"

    lines += [
        "",
        "What costs Spill time is fresh memory. Keeping RSS inside the budget means giving every",
        "freed large block back to the system at once (glibc otherwise keeps them in a heap",
        f"that grows to {mib(heap['peak_minus_warm_bytes'])} MiB here, from fragmentation), so "
        "every block a step allocates is",
        "faulted in again, a page at a time. On this virtual machine a fresh page costs far more",
        "than memory already mapped. Two things cut those faults:",
        "",
        "- **Fused Adam.** torch's default Adam on the CPU is a loop of tensor operations that",
        "  allocates scratch tensors the size of each parameter every step; `Adam(fused=True)`",
        f"  updates each parameter in one kernel with none. Spill's faults per step {halve} "
        f"({thousands(d_disk['step_minor_faults_median'])} →",
        f"  {thousands(disk['step_minor_faults_median'])}) and its step goes from "
        f"{fmt(d_disk['step_seconds_median'])} to {fmt(disk['step_seconds_median'])} s; plain "
        f"gains {'less' if plain_gain < spill_gain else 'more'} "
        f"({fmt(other['plain']['step_seconds_median'])} → {fmt(plain['step_seconds_median'])} s),"
        " as it",
        "  reuses its heap. Parameters equal plain training's with it too "
        "(`tests/unit/test_spill.py`).",
        f"- **Huge pages.** With {_thp(fused)} in the environment when the process",
        "  starts, torch aligns its large blocks and advises them for transparent huge",
        "  pages, which a kernel in `madvise` mode (this one) then faults in a huge page at a",
        f"  time: {thousands(disk['step_minor_faults_median'])} → "
        f"{thousands(rec['step_minor_faults_median'])} faults, "
        f"{fmt(disk['step_seconds_median'])} → {fmt(rec['step_seconds_median'])} s. torch reads "
        "the setting at its first allocation, so Spill",
        '  can\'t set it: with `offload="disk"` it logs, once, that the setting would help when '
        "the",
        "  kernel is in `madvise` mode and the variable isn't set "
        "(`mlsys.memory.huge_pages_hint`).",
        f"  Plain training {effect(thp_gain)} with fused Adam ({times(thp_gain)}) and "
        f"{effect(thp_default)} with the default Adam",
        f"  ({times(thp_default)})"
        + (", so it is not set for every process." if max(thp_gain, thp_default) > 1 else "."),
    ]

    sync = runs["disk-sync"]
    moves = disk["plan"]["shards"] / sync["plan"]["shards"]
    moves_text = {2.0: "twice", 3.0: "three times"}.get(moves, times(moves, 1))
    if disk["step_seconds_median"] >= sync["step_seconds_median"]:
        prefetch = "gains nothing"
    else:
        prefetch = f"saves {pct(1 - disk['step_seconds_median'] / sync['step_seconds_median'])} %"
    largest = fused["largest_layer"]
    lines += [
        "",
        f"With the heap kept (few faults, RSS unbounded) Spill runs {times(heap['step_vs_plain'])}"
        " plain, near the host tier's",
        f"{times(runs['host']['step_vs_plain'])}, which is what recomputing each shard's forward "
        f"costs. Prefetching {prefetch}",
        f"on this machine over loading in turn ({fmt(disk['step_seconds_median'])} against "
        f"{fmt(sync['step_seconds_median'])} s): it needs smaller shards,",
        f"{disk['plan']['shards']} instead of {sync['plan']['shards']}, so {moves_text} the shard "
        f"moves, and its I/O thread shares the {word(cpus(fused))} cores with",
        "compute; which of the two eats the overlap was not measured apart. The largest model",
        f"trainable under {mib(budget)} MiB is set by its largest layer: a "
        f"{commas(largest['width'])}-wide Linear",
        f"({fmt(largest['parameters'] / 1e6, 1)}M parameters, {commas(largest['footprint_bytes'])}"
        f" bytes of footprint with Adam and batch {fused['batch_size']}).",
    ]
    return "\n".join(lines)
