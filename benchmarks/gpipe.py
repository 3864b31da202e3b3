"""GPipe on CPU: K=2 stage processes with one thread each, training a deep MLP.

For M in {1, 2, 4, 8} micro-batches (M=1 is naive model parallelism: one stage works
while the other waits) it measures throughput, each stage's busy share, and the bubble
of the steady mini-batches (idle / (busy + idle) between a step's first and last action)
against the theoretical (K-1)/(M+K-1). Baselines, measured in the same run: the M=1
pipeline, and plain single-process training with the same two threads (and with one).
Also runs M=8 with the 1F1B schedule and with activation checkpointing, and draws the
schedule of steady mini-batches to benchmarks/results/gpipe_schedule.png. For each round it
also computes what M=8 could reach over M=1 from the stages' measured compute seconds (see
``pipeline_ceiling``): what the pipeline schedule allows, against what the machine gave.

The first epoch of every run is warm-up and is left out. The balance is profiled once
(forward+backward time per layer on one micro-batch) and the same split is used by all
runs.

    .venv/bin/python benchmarks/gpipe.py [--width 2048] [--depth 8] [--batch 2048] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlsys.links import mlflow_run_link
from mlsys.training import GPipe, GPipeWorkers, fit
from mlsys.training.balance import partition, profile
from mlsys.training.schedule import (
    load_trace,
    measured_bubble,
    plot_timeline,
    theoretical_bubble,
)

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = 2
CLASSES = 10
FEATURES = 64
TARGET_SPEEDUP = 1.6  # M=8 throughput over the M=1 pipeline
TARGET_BUBBLE_RATIO = 1.25  # measured bubble over theoretical, at M=8

SGD = functools.partial(torch.optim.SGD, lr=1e-3)
CE = nn.CrossEntropyLoss(reduction="none")


def mlp(width: int, depth: int) -> nn.Sequential:
    """A narrow input projection, ``depth`` hidden blocks of ``width``, a classifier head.

    The input layer is kept cheap on purpose: the first layer computes no input gradient,
    so a heavy one would make the first stage's forward slower and its backward faster
    than the second stage's, an imbalance the fill/drain phases expose. With it cheap and
    ``depth`` even, both stages do the same work in forward and in backward, and the bubble
    measured is the pipeline's own."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(FEATURES, width), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*layers)


def steady_throughput(history: list[dict[str, Any]]) -> float:
    """Examples per second over every epoch but the first."""
    steady = history[1:]
    return float(sum(r["examples"] for r in steady) / sum(r["seconds"] for r in steady))


def busy_shares(step: list[list[tuple[str, int, float, float]]]) -> list[float]:
    """Each stage's busy time over the step's span."""
    start = min(i[2] for stage in step for i in stage)
    end = max(i[3] for stage in step for i in stage)
    return [sum(b - a for _, _, a, b in stage) / (end - start) for stage in step]


def busy_seconds(steps: list[list[list[tuple[str, int, float, float]]]]) -> list[float]:
    """Each stage's compute seconds per step (forward and backward actions), averaged
    over the steps."""
    stages = len(steps[0])
    return [
        statistics.fmean(sum(b - a for _, _, a, b in step[k]) for step in steps)
        for k in range(stages)
    ]


def pipeline_ceiling(m1: dict[str, Any], pipelined: dict[str, Any]) -> dict[str, float]:
    """What ``pipelined`` can reach over the M=1 pipeline given the compute both did.

    At M=1 the stages work one after the other: a step takes the sum of their busy
    seconds. A GPipe step takes at least the busiest stage's seconds times (M+K-1)/M (its
    share of fill and drain). With equal stages that would take the same compute, the
    ratio is 2M/(M+K-1), 1.78x at K=2, M=8; it is lower when the stages compute slower
    while both run at once (two cores sharing a host) or are unequal."""
    k, m = len(m1["stage_busy_seconds"]), pipelined["microbatches"]
    serial = sum(m1["stage_busy_seconds"])
    slowest = max(pipelined["stage_busy_seconds"])
    return {
        "ideal": k * m / (m + k - 1),
        "compute_slowdown": sum(pipelined["stage_busy_seconds"]) / serial,
        "imbalance": slowest / statistics.fmean(pipelined["stage_busy_seconds"]),
        "ceiling": serial / (slowest * (m + k - 1) / m),
        "measured": pipelined["examples_per_s"] / m1["examples_per_s"],
    }


def combine_rounds(per_round: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One row per configuration from several rounds: the median throughput, the median of
    the ratios to the M=1 pipeline and to plain training taken within each round, and the
    bubble and busy shares of the round with the median bubble."""
    rows: dict[str, dict[str, Any]] = {}
    for name in per_round[0]:
        runs = [found[name] for found in per_round]
        by_bubble = sorted(runs, key=lambda row: row.get("bubble_measured", 0.0))
        row = dict(by_bubble[len(by_bubble) // 2])
        row["examples_per_s"] = statistics.median(r["examples_per_s"] for r in runs)
        row["examples_per_s_rounds"] = [r["examples_per_s"] for r in runs]
        row["vs_pipeline_m1"] = statistics.median(
            found[name]["examples_per_s"] / found["gpipe M=1"]["examples_per_s"]
            for found in per_round
        )
        row["vs_plain_2_threads"] = statistics.median(
            found[name]["examples_per_s"] / found["plain, 2 threads"]["examples_per_s"]
            for found in per_round
        )
        if "bubble_measured" in row:
            row["bubble_measured_rounds"] = [r["bubble_measured"] for r in runs]
        rows[name] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048, help="units per hidden layer")
    parser.add_argument("--depth", type=int, default=8, help="hidden Linear+ReLU blocks")
    parser.add_argument("--batch", type=int, default=2048, help="examples per mini-batch")
    parser.add_argument("--steps", type=int, default=2, help="mini-batches per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is warm-up)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="times every configuration is run, interleaved; medians are reported",
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow server to log the figures and the schedule picture to, as a run of the "
        "experiment 'benchmarks' (default: $MLFLOW_TRACKING_URI; unset: not logged)",
    )
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    data = TensorDataset(
        torch.randn(n, FEATURES, generator=g),
        torch.randint(0, CLASSES, (n,), generator=g),
    )
    common: dict[str, Any] = {
        "optimizer": SGD,
        "loss": CE,
        "epochs": args.epochs,
        "batch_size": args.batch,
    }
    torch.set_num_threads(1)
    sample = data.tensors[0][: args.batch // 8]
    balance = partition(profile(mlp(args.width, args.depth), sample, by="time").costs, STAGES)
    print(
        f"model: Linear({FEATURES}, {args.width}) + ReLU, {args.depth} x "
        f"(Linear({args.width}, {args.width}) + ReLU), Linear -> {CLASSES}: "
        f"{len(mlp(args.width, args.depth))} layers; batch {args.batch}; "
        f"{args.steps} steps/epoch x {args.epochs} epochs; balance by time: {balance}"
    )

    # (name, M, schedule, checkpointing, receives posted ahead); "torch" rows are torch's
    # own ScheduleGPipe, which posts each receive when the stage is ready for it.
    runs = [(f"gpipe M={m}", m, "gpipe", "never", True) for m in (1, 2, 4, 8)]
    runs += [
        ("gpipe M=8 torch", 8, "gpipe", "never", False),
        ("1f1b M=8", 8, "1f1b", "never", True),
        ("gpipe M=8 ckpt", 8, "gpipe", "except_last", True),
    ]
    # Every round runs every configuration once, in the same order, so a busy neighbour
    # slows a whole round rather than one configuration; ratios are taken within a round
    # and the median over rounds is reported.
    per_round: list[dict[str, dict[str, Any]]] = []
    panels: list[tuple[str, Any]] = []
    with GPipeWorkers(STAGES) as workers, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            found: dict[str, dict[str, Any]] = {}
            for name, m, schedule, checkpoint, prefetch in runs:
                trace = Path(tmp) / f"{r}_{name.replace(' ', '_')}"
                strategy = GPipe(
                    STAGES,
                    m,
                    balance=balance,
                    schedule=schedule,  # type: ignore[arg-type]
                    checkpoint=checkpoint,  # type: ignore[arg-type]
                    trace_dir=trace,
                    workers=workers,
                    prefetch=prefetch,
                )
                result = fit(mlp(args.width, args.depth), data, strategy=strategy, **common)
                steps = load_trace(trace)[args.steps :]
                bubbles = [measured_bubble(step) for step in steps]
                median = sorted(range(len(steps)), key=bubbles.__getitem__)[len(steps) // 2]
                found[name] = {
                    "microbatches": m,
                    "schedule": schedule,
                    "checkpoint": checkpoint,
                    "prefetch": prefetch,
                    "examples_per_s": steady_throughput(result.history),
                    "bubble_measured": bubbles[median],
                    "bubble_theory": theoretical_bubble(STAGES, m),
                    "stage_busy_share": busy_shares(steps[median]),
                    "stage_busy_seconds": busy_seconds(steps),
                    "_step": steps[median],
                }
            for threads in (2, 1):
                torch.set_num_threads(threads)
                result = fit(mlp(args.width, args.depth), data, **common)
                found[f"plain, {threads} thread{'s' * (threads > 1)}"] = {
                    "threads": threads,
                    "examples_per_s": steady_throughput(result.history),
                }
            torch.set_num_threads(1)
            naive_r = found["gpipe M=1"]["examples_per_s"]
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(
                    f"{name} {row['examples_per_s'] / naive_r:.2f}x"
                    for name, row in found.items()
                    if name != "gpipe M=1"
                ),
                flush=True,
            )
            per_round.append(found)

    rows = combine_rounds(per_round)
    for name in ("gpipe M=1", "gpipe M=8", "gpipe M=8 torch", "1f1b M=8"):
        row = rows[name]
        panels.append(
            (
                f"{name}: measured bubble {row['bubble_measured']:.3f}, "
                f"theory {row['bubble_theory']:.3f}",
                row.pop("_step"),
            )
        )
    for row in rows.values():
        row.pop("_step", None)

    print(
        f"\n{'run':<18}{'examples/s':>11}{'vs M=1':>8}{'vs plain 2t':>12}"
        f"{'bubble':>8}{'theory':>8}{'ratio':>7}   busy share per stage"
    )
    for name, row in rows.items():
        line = f"{name:<18}{row['examples_per_s']:>11.1f}{row['vs_pipeline_m1']:>7.2f}x"
        line += f"{row['vs_plain_2_threads']:>11.2f}x"
        if "bubble_measured" in row:
            row["bubble_ratio"] = row["bubble_measured"] / row["bubble_theory"]
            line += f"{row['bubble_measured']:>8.3f}{row['bubble_theory']:>8.3f}"
            line += f"{row['bubble_ratio']:>6.2f}x   "
            line += " ".join(f"{b:.2f}" for b in row["stage_busy_share"])
        print(line)

    m8 = rows["gpipe M=8"]
    # What M=8 can reach over M=1 here, round by round, from the compute both did.
    bounds = [pipeline_ceiling(found["gpipe M=1"], found["gpipe M=8"]) for found in per_round]
    ceiling: dict[str, Any] = {
        key: statistics.median(bound[key] for bound in bounds) for key in bounds[0]
    } | {"rounds": bounds}
    print(
        "M=8 over M=1, round by round: measured "
        + ", ".join(f"{b['measured']:.2f}x" for b in bounds)
        + "; ceiling from the stages' compute "
        + ", ".join(f"{b['ceiling']:.2f}x" for b in bounds)
        + f" (ideal {ceiling['ideal']:.2f}x; the same compute took "
        f"{ceiling['compute_slowdown']:.2f}x its M=1 seconds, the busiest stage "
        f"{ceiling['imbalance']:.2f}x the mean; medians)"
    )
    targets = {
        "speedup_m8_over_m1": {
            "value": m8["vs_pipeline_m1"],
            "target": f">= {TARGET_SPEEDUP}",
            "met": m8["vs_pipeline_m1"] >= TARGET_SPEEDUP,
        },
        "bubble_m8_over_theory": {
            "value": m8["bubble_ratio"],
            "target": f"<= {TARGET_BUBBLE_RATIO}",
            "met": m8["bubble_ratio"] <= TARGET_BUBBLE_RATIO,
        },
    }
    for key, target in targets.items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"target {key}: {target['value']:.2f} (want {target['target']}): {verdict}")

    picture = plot_timeline(panels, RESULTS / "gpipe_schedule.png")
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1m": os.getloadavg()[0],
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "model": {
            "width": args.width,
            "depth": args.depth,
            "layers": len(mlp(args.width, args.depth)),
        },
        "batch_size": args.batch,
        "steps_per_epoch": args.steps,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "stages": STAGES,
        "threads_per_stage": 1,
        "balance": balance,
        "runs": rows,
        "targets": targets,
        "ceiling": ceiling,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpipe.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {RESULTS / 'gpipe.json'}; schedule picture {picture}")
    if args.tracking_uri:
        print(f"logged to MLflow: {log_to_mlflow(args.tracking_uri, report, picture)}")


def log_to_mlflow(tracking_uri: str, report: dict[str, Any], picture: Path) -> str:
    """Log the figures as metrics of one MLflow run, with the JSON and the picture."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("benchmarks")
    exp_id = experiment.experiment_id if experiment else client.create_experiment("benchmarks")
    run = client.create_run(exp_id, run_name="gpipe", tags={"benchmark": "gpipe"})
    run_id = run.info.run_id
    for name, row in report["runs"].items():
        slug = name.replace(" ", "_").replace("=", "").replace(",", "")
        for key in ("examples_per_s", "bubble_measured", "bubble_theory", "vs_pipeline_m1"):
            if isinstance(row.get(key), int | float):
                client.log_metric(run_id, f"{slug}.{key}", float(row[key]))
    client.log_dict(run_id, report, "gpipe.json")
    client.log_artifact(run_id, str(picture))
    client.set_terminated(run_id)
    return mlflow_run_link(tracking_uri, exp_id, run_id)


if __name__ == "__main__":
    main()
