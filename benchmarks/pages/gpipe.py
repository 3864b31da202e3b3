"""The summary row and section for benchmarks/gpipe.py (results/gpipe.json)."""

from __future__ import annotations

import math

from ._format import Results, bold, cpus, fmt, plural, target_value, times, word


def render_gpipe(results: Results) -> str:
    """Section: GPipe and 1F1B pipelines of K stages against the M=1 pipeline."""
    runs = results["runs"]
    n_cpus = cpus(results)
    head_key, head = _gpipe_headline(runs)
    plain_key = next(k for k, r in runs.items() if "threads" in r and r["vs_plain_2_threads"] == 1)
    lines = [
        f"Pipeline parallelism (`benchmarks/gpipe.py`, {n_cpus}-core CPU, "
        f"{word(results['threads_per_stage'])} thread per stage, batch",
        f"{results['batch_size']}; every configuration run once per round, {results['rounds']} "
        "rounds interleaved, medians reported and",
        "ratios taken within a round; per-stage timelines in "
        "`benchmarks/results/gpipe_schedule.png`):",
        "",
        f"| run | examples/s | vs {plain_key} | vs M=1 | bubble measured | theory (K−1)/(M+K−1) "
        "| ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, run in runs.items():
        label = _gpipe_label(key, run)
        cells = [fmt(run["examples_per_s"], 0)]
        headline = key == head_key
        cells.append(bold(times(run["vs_plain_2_threads"]), headline))
        cells.append(times(run["vs_pipeline_m1"]))
        if "bubble_measured" in run:
            cells += [
                fmt(run["bubble_measured"], 3),
                fmt(run["bubble_theory"], 3),
                bold(fmt(run["bubble_ratio"]), headline),
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        else:
            lines.append(f"| {label} | " + " | ".join(cells) + " | | | |")
    lines += [
        "",
        "![pipeline schedule](../benchmarks/results/gpipe_schedule.png)",
        "",
        "With `--tracking-uri URL` (default `$MLFLOW_TRACKING_URI`, which `source .stack/env`",
        "sets) the benchmark also logs its figures, JSON and picture as a run of the MLflow",
        "experiment `benchmarks`.",
        "",
    ]
    m = head["microbatches"]
    torch_run = next(
        (r for r in runs.values() if r.get("microbatches") == m and r.get("prefetch") is False),
        None,
    )
    bubble = results["targets"]["bubble_m8_over_theory"]
    speed = results["targets"]["speedup_m8_over_m1"]
    prefetch = (
        "`GPipe(prefetch=True)`, the default, posts every micro-batch's receive (activations in\n"
        "forward, gradients in backward) before computing any, so transfers land while the stage\n"
        "computes; torch's `ScheduleGPipe` posts each receive only when the stage is ready for\n"
        "that micro-batch, which puts every transfer (through gloo, whose I/O threads share the\n"
        f"{word(n_cpus)} cores with both compute threads) on the critical path. Same computations "
        "in the same\norder, same parameters (tested with and without)."
    )
    if torch_run is not None:
        prefetch += (
            f" At M={m} the measured bubble is\n{times(head['bubble_ratio'])} the theoretical "
            f"one with prefetching against {times(torch_run['bubble_ratio'])} with torch's "
            f"schedule, {'meeting' if bubble['met'] else 'missing'} the\n"
            f"{times(target_value(bubble['target']), 2)} target."
        )
    ceiling = results["ceiling"]
    rounds = ceiling["rounds"]
    measured = ", ".join(times(r["measured"]) for r in rounds)
    gap = math.ceil(max(abs(1 - r["measured"] / r["ceiling"]) for r in rounds) * 100)
    imbalance = math.ceil((max(r["imbalance"] for r in rounds) - 1) * 100)
    stages = results["stages"]
    slowdowns = [times(r["compute_slowdown"]) for r in rounds]
    slow = ", ".join(slowdowns[:-1]) + f" and {slowdowns[-1]}" if len(rounds) > 1 else slowdowns[0]
    speed_target = target_value(speed["target"])
    plain = runs[plain_key]
    best_pipeline = max(r["vs_pipeline_m1"] for r in runs.values() if "microbatches" in r)
    if plain["vs_pipeline_m1"] > best_pipeline:
        closing = (
            f"On {word(n_cpus)} cores, plain training with both threads "
            f"({times(plain['vs_pipeline_m1'])}) is still faster than\nany pipeline: pipelining "
            "pays off when stages have their own devices."
        )
    else:
        closing = (
            f"On {word(n_cpus)} cores, plain training with both threads "
            f"({times(plain['vs_pipeline_m1'])}) is no faster than\nthe best pipeline."
        )
    throughput = (
        f"Throughput {'meets' if speed['met'] else 'misses'} the target in this run: M={m} runs "
        f"{times(head['vs_pipeline_m1'])} the M=1\npipeline (median; rounds {measured}), against "
        f"{times(speed_target, 1)}.\n"
        "The benchmark computes, round by round, what the schedule allows given the compute the\n"
        "stages actually did (`pipeline_ceiling`): at M=1 the "
        f"{word(stages)} stages work one after the other,\n"
        "so a step takes the sum of their busy seconds; at M>1 a step takes at least the busier\n"
        "stage's seconds times (M+K−1)/M. With equal stages and compute as fast as at M=1 that "
        f"is\nKM/(M+K−1) = {times(ceiling['ideal'])} at M={m}. The stages are balanced to "
        f"within {imbalance} %, and the ceiling of each round\n"
        f"({', '.join(times(r['ceiling']) for r in rounds)}) is set by how much slower the same "
        "forward and backward passes run\n"
        f"when both processes compute at once ({word(n_cpus)} cores sharing caches, memory "
        "bandwidth and a\nvirtual machine's host) than when they take turns: "
        f"{slow} the M=1 seconds\nin this run. The measured ratios match their ceilings to "
        f"within {gap} %: the pipeline loses\nnothing to its schedule or its transfers beyond "
        f"the bubble, and whether a run clears {times(speed_target, 1)}\ndepends on that "
        f"slowdown, which varies from run to run on this machine.\n{closing}"
    )
    return "\n".join([*lines, prefetch, "", throughput])


def _gpipe_headline(runs: Results) -> tuple[str, Results]:
    """The GPipe run with prefetching, no checkpointing and the most micro-batches."""
    main = [
        (k, r)
        for k, r in runs.items()
        if r.get("schedule") == "gpipe" and r.get("prefetch") and r.get("checkpoint") == "never"
    ]
    return max(main, key=lambda item: item[1]["microbatches"])


def _gpipe_label(key: str, run: Results) -> str:
    if "microbatches" not in run:
        return key
    schedule = {"gpipe": "GPipe", "1f1b": "1F1B"}.get(run["schedule"], run["schedule"])
    label = f"{schedule} M={run['microbatches']}"
    if not run["prefetch"]:
        label += ", torch's `ScheduleGPipe` (`prefetch=False`)"
    if run["checkpoint"] == "except_last":
        label += ", checkpointing except last stage"
    elif run["checkpoint"] != "never":
        label += f", checkpointing {run['checkpoint']}"
    return label


def gpipe_row(results: Results) -> str:
    runs = results["runs"]
    _, head = _gpipe_headline(runs)
    model = results["model"]
    rounds = results["ceiling"]["rounds"]
    gap = math.ceil(max(abs(1 - r["measured"] / r["ceiling"]) for r in rounds) * 100)
    threads = results["threads_per_stage"]
    plain = next(r for r in runs.values() if "threads" in r and r["vs_plain_2_threads"] == 1)
    slower = (
        " (slower: on one CPU the stages share the cores plain `fit` uses whole; a pipeline is "
        "for a model that one device's memory cannot hold, or several devices or hosts)"
        if head["vs_plain_2_threads"] < 1
        else ""
    )
    return (
        f"| `gpipe.py`: deep MLP ({model['depth']} × Linear {model['width']}), batch "
        f"{results['batch_size']}, K={results['stages']} stages, {threads} "
        f"thread{'' if threads == 1 else 's'} each, {results['rounds']} interleaved rounds | "
        f"plain `fit` of the same model with {plural(plain['threads'], 'thread')} (every core: "
        "the strongest); and the same pipeline with M=1 (naive model parallelism) | "
        f"M={head['microbatches']}: **{times(head['vs_plain_2_threads'])}** plain `fit`"
        f"{slower}; {times(head['vs_pipeline_m1'])} the M=1 pipeline (rounds "
        f"{', '.join(times(r['measured']) for r in rounds)}), bubble "
        f"{times(head['bubble_ratio'])} theory; each round within {gap} % of its ceiling "
        "from measured compute; see below |"
    )
