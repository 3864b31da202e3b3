"""The summary row and section for benchmarks/sharp.py (results/sharp.json)."""

from __future__ import annotations

from ._format import Results, adam, bold, cpus, fmt, mib, pct, plural, span, times, word


def _sharp_grids(results: Results) -> list[tuple[Results, Results]]:
    ratios = {r["name"]: r for r in results["ratios"]}
    return [(grid, ratios[grid["name"]]) for grid in results["sharp"]]


def sharp_row(results: Results) -> str:
    config = results["config"]
    grids = _sharp_grids(results)
    two = grids[0][0]["two_workers"]["workers"]
    one = grids[0][0]["one_worker"]["workers"]
    groups = []
    for i, steps in enumerate(config["steps"]):
        at = [(g, r) for g, r in grids if g["steps_per_model"] == steps]
        shown = " / ".join(
            bold(times(r["speedup_2_over_1_workers"]), r["speedup_met"]) for _, r in at
        )
        models = " / ".join(str(g["models"]) for g, _ in at)
        where = f"{models} models, {steps} steps" if i == 0 else f"{steps} steps"
        groups.append(f"{shown} ({where})")
    ones = span((r["makespan_over_lower_bound_1_worker"] for _, r in grids), lambda v: fmt(v, 3))
    twos = span((r["makespan_over_lower_bound_2_workers"] for _, r in grids), lambda v: fmt(v, 3))
    all_met = all(r["lower_bound_met"] for _, r in grids)
    models = " and ".join(str(m) for m in config["models"])
    steps_text = " and ".join(str(s) for s in config["steps"])

    def over(key: str) -> str:
        shown_groups = []
        for i, steps in enumerate(config["steps"]):
            at = [(g, r) for g, r in grids if g["steps_per_model"] == steps]
            shown = " / ".join(bold(times(r[key])) for _, r in at)
            models_at = " / ".join(str(g["models"]) for g, _ in at)
            shown_groups.append(
                f"{shown} ({models_at} models, {steps} steps)"
                if i == 0
                else f"{shown} ({steps} steps)"
            )
        return ", ".join(shown_groups)

    plain_text = over("speedup_2_workers_over_plain") + " plain `fit`"
    if max(r["speedup_2_workers_over_plain"] for _, r in grids) < 1:
        plain_text += (
            " (slower: these models fit in memory, where plain training uses both threads on "
            "one model at a time; SHARP is for models that do not fit, where plain training "
            "cannot run)"
        )
    has_spill = all("speedup_2_workers_over_spill" in r for _, r in grids)
    spill_text = (
        over("speedup_2_workers_over_spill") + " Spill one model after another, same budget"
        if has_spill
        else "against Spill one model after another: not measured in this run"
    )
    return (
        f"| `sharp.py`: {models} deep MLPs ({config['depth']} × Linear {config['width']}, every "
        f"other model narrower, {adam(config)}), {steps_text} steps each, shards under "
        f"{mib(config['budget'])} MiB, `train_many` on {plural(two, 'worker')} | one model after "
        "another with both threads: plain `fit` (models that fit in memory) and Spill under "
        "the same budget (models that do not); and `train_many` on "
        f"{plural(one, 'worker')} | {plain_text}; {spill_text}; "
        f"{plural(two, 'worker')} / {plural(one, 'worker')}: {', '.join(groups)}; makespan / "
        f"lower bound {ones} ({plural(one, 'worker')}), {bold(twos, all_met)} "
        f"({plural(two, 'worker')}); see below |"
    )


def render_sharp(results: Results) -> str:
    """Section: SHARP's ``train_many`` on 2 workers against 1 and against plain ``fit``."""
    config = results["config"]
    grids = _sharp_grids(results)
    one = grids[0][0]["one_worker"]["workers"]
    runs = [
        run
        for g, _ in grids
        for run in [*g["one_worker_rounds"], *g["two_workers_rounds"]]
    ]  # fmt: skip
    shards = sorted({n for run in runs for n in run["shards_per_model"]})
    setup = span((run["setup_seconds"] for run in runs), lambda v: fmt(v, 0))
    steps = " and for ".join(str(s) for s in config["steps"])
    folder = (
        "shard files in shared memory"
        if config["folder"] is None
        else f"shard files in `{config['folder']}`"
    )
    lines = [
        f"SHARP (`benchmarks/sharp.py`; medians of {config['rounds']} interleaved rounds; each "
        f"model trained for {steps}",
        f"steps of batch {config['batch']} with {adam(config)} (`--adam {config['adam']}`, the "
        "default, as in",
        f"`spill.py`), cut into {' or '.join(str(n) for n in shards)} shards by a "
        f"{mib(config['budget'])} MiB budget; {folder};",
        "makespan from the first unit's start to the last one's end, starting the worker processes",
        f"({setup} s: each imports torch) reported apart; the lower bound is the best any "
        "schedule of",
        "the run's measured unit times could do: max(longest model's chain, all work / devices)):",
        "",
        f"| models | steps each | workers | makespan s | steps/s | vs {plural(one, 'worker')} | "
        "device busy | "
        "lower bound s | makespan / bound | LRTF simulated s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for grid, ratio in grids:
        for key in ("one_worker", "two_workers"):
            run = grid[key]
            two = key == "two_workers"
            speed = ratio["speedup_2_over_1_workers"] if two else 1.0
            bound = run["makespan_over_lower_bound"]
            lines.append(
                f"| {grid['models']} | {grid['steps_per_model']} | {run['workers']} | "
                f"{fmt(run['makespan_seconds'])} | {fmt(run['steps_per_second'])} | "
                f"{bold(times(speed), two)} | {pct(run['device_busy_share'])} % | "
                f"{fmt(run['lower_bound_seconds'])} | {bold(fmt(bound, 3), two)} | "
                f"{fmt(run['simulated_lrtf_seconds'])} |"
            )
    rounds = []
    for i, (grid, _) in enumerate(grids):
        per = [
            fmt(b["steps_per_second"] / a["steps_per_second"])
            for a, b in zip(grid["one_worker_rounds"], grid["two_workers_rounds"], strict=True)
        ]
        where = (
            f"{grid['models']} models, {grid['steps_per_model']} steps"
            if i == 0
            else f"{grid['models']}, {grid['steps_per_model']}"
        )
        rounds.append(f"{' / '.join(per)}x ({where})")
    two_workers = grids[0][0]["two_workers"]["workers"]
    one_worker = grids[0][0]["one_worker"]["workers"]
    lines += [
        "",
        f"Round by round, {plural(two_workers, 'worker')} over {one_worker}: "
        + ",\n".join(", ".join(rounds[i : i + 2]) for i in range(0, len(rounds), 2))
        + ".",
    ]
    plain = [p["median"]["steps_per_second"] for p in results["sequential_plain"]]
    over_plain = [r["speedup_2_workers_over_plain"] for _, r in grids]
    n_cpus = cpus(results)
    text = (
        f"Plain `fit` of the same models one after another with both threads: "
        f"{span(plain, lambda v: fmt(v, 1))} steps/s, so\nSHARP on "
        f"{plural(two_workers, 'worker')} reaches {span(over_plain, unit='x')} of it."
    )
    if max(over_plain) < 1:
        text += (
            f" On a {n_cpus}-core machine with models that fit in\nmemory, intra-op threading is "
            "the better use of the cores: SHARP's recomputed forwards and its\nshard moves are "
            "the price of training models that don't fit, and pay off with several devices."
        )
    lines += ["", text]
    targets = results["targets"]
    speedups = [r["speedup_2_over_1_workers"] for _, r in grids]
    worst = max(
        max(r["makespan_over_lower_bound_1_worker"], r["makespan_over_lower_bound_2_workers"])
        for _, r in grids
    )
    speed_met = "" if all(r["speedup_met"] for _, r in grids) else ", not met everywhere"
    bound_met = "" if all(r["lower_bound_met"] for _, r in grids) else ", not met everywhere"
    models = " and ".join(str(m) for m in config["models"])
    compute = [
        g["two_workers"]["compute_seconds"] / g["one_worker"]["compute_seconds"] for g, _ in grids
    ]
    lines += [
        "",
        f"Against the targets: {plural(two_workers, 'worker')} reach "
        f"{span(speedups, unit='x')} the throughput of {plural(one_worker, 'worker')} for "
        f"{models}\nmodels (target "
        f"{times(targets['speedup_2_over_1'], 1)}{speed_met}), and every makespan is within "
        f"{pct(worst - 1, 1)} % of the lower bound (target\n"
        f"{pct(targets['makespan_over_lower_bound'] - 1)} %{bound_met}). How the gap to "
        f"{two_workers}x was found and closed: in the {two_workers}-worker runs, the\n"
        "units' wall time exceeded their threads' CPU time, measured per unit with "
        f"`time.thread_time`\nand `getrusage`; with {plural(one_worker, 'worker')} the two were "
        "equal. Each worker's "
        "I/O thread, which maps\nthe next shard and writes files, ran on the cores the "
        f"{word(two_workers)} computing threads needed, while\nwith "
        f"{plural(one_worker, 'worker')} it has the "
        "idle core to itself. "
        "Two changes took most of that work off the\nI/O threads:",
        "- A device keeps its mappings of shard files from unit to unit (mapped again only when a",
        "  file was replaced), instead of mapping and faulting a shard in for every unit.",
        "- The inputs a forward unit saves for its backward unit stay in memory while the model",
        "  stays on the device (instead of a `torch.save` and `torch.load` per forward unit, plus",
        "  fresh shared-memory pages each time) and go to files only when the model may move to",
        "  the other device.",
        "",
        f"What remains: the units of the {two_workers}-worker runs take "
        f"{span(compute, unit='x')} the compute seconds of the\nsame units on "
        f"{plural(one_worker, 'worker')} (the {word(n_cpus)} cores share caches and memory "
        "bandwidth, and the I/O\nthreads still take some time from them), and a model's first "
        "step costs more than the\nothers: its optimizer creates its state, which is then "
        "written to a file of its own. On\nthis machine memory new to the guest is slow: it "
        "hands freed memory back to its host\n(virtio-balloon free page reporting), and writing "
        "pages it has not used lately was\nseveral times slower than writing pages again (files "
        "written to `/dev/shm`). That one-time\ncost weighs most in the "
        f"{min(config['steps'])}-step runs.",
        "",
        "A correctness fix came with these figures: a shard whose first layer works on its input",
        'in place (dropout or ReLU with `inplace=True`) failed with "a leaf Variable that requires',
        'grad is being used in an in-place operation", and its forward unit could have saved an',
        "input the forward had changed. The forward unit now saves a copy taken before the",
        "forward (a copy per forward unit), and the units with a backward pass feed the layers",
        "a clone of the leaf, as Spill does.",
        "",
        "![SHARP timeline](../benchmarks/results/sharp_gantt.png)",
    ]
    return "\n".join(lines)
