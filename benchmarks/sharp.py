"""SHARP on CPU: a grid of deep MLPs trained at once by ``train_many`` on 1 and 2 worker
processes (one thread each), each model cut into shards by a memory budget.

For 4 and 8 models, each trained for 6 and for 18 steps, it measures the makespan (first
unit start to last unit end; starting the worker processes is reported apart as set-up),
the throughput (optimizer steps of all models per second) and its ratio 2 workers / 1
worker, and compares each makespan with the lower bound any schedule of the measured unit
times could reach (the longest model's chain, or all work spread evenly) and with a
simulation of longest-remaining-time-first over those times with free transfers.
Baselines measured in the same run, what a user would otherwise do: the same models
trained one after another by ``fit(strategy="plain")`` with both threads (models that fit
in memory), and by ``fit(strategy=Spill(budget))`` with both threads under SHARP's budget
and offload (models that do not). Draws the
2-worker timeline of the largest grid at the fewest steps to
benchmarks/results/sharp_gantt.png.

A model's first step costs more than the others (its optimizer creates its state, which
SHARP writes to a file of its own): the short runs show what a tiny grid pays for it, the
longer ones the throughput a grid reaches once every model has stepped.

Models alternate between two widths so that the grid is uneven, as a real one is.

    .venv/bin/python benchmarks/sharp.py [--width 1024] [--depth 8] [--steps 6 18] [--rounds 3]
        [--adam fused|default]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlsys.training import Job, Spill, fit, train_many
from mlsys.training.sharp import lower_bound, plot_gantt, simulate_lrtf

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SPEEDUP = 1.8  # 2 workers over 1, for >= 4 models
TARGET_LOWER_BOUND = 1.10  # measured makespan within 10% of the lower bound
CLASSES = 10


def mlp(width: int, depth: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*layers)


def jobs_for(n: int, args: argparse.Namespace, data: dict[int, TensorDataset]) -> list[Job]:
    """``n`` models of a learning-rate x width grid, one epoch of ``data`` each."""
    out = []
    for i in range(n):
        width = args.width if i % 2 == 0 else args.width * 3 // 4
        lr = (1e-3, 3e-4, 1e-4, 3e-5)[(i // 2) % 4]
        out.append(
            Job(
                model=mlp(width, args.depth, seed=i),
                data=data[width],
                optimizer=functools.partial(
                    torch.optim.Adam, lr=lr, fused=args.adam == "fused" or None
                ),
                loss=nn.CrossEntropyLoss(reduction="none"),
                epochs=1,
                batch_size=args.batch,
                seed=i,
                name=f"w{width}-lr{lr:g}-{i}",
            )
        )
    return out


def run_sharp(
    n: int, workers: int, steps_each: int, args: argparse.Namespace, data: dict[int, Any]
) -> dict[str, Any]:
    jobs = jobs_for(n, args, data)
    load = os.getloadavg()[0]
    wall = time.perf_counter()
    result = train_many(
        jobs,
        devices=workers,
        budget_bytes=args.budget,
        offload="disk" if args.folder else "host",
        folder=args.folder,
    )
    wall = time.perf_counter() - wall
    result.raise_failures()
    steps = n * steps_each  # one epoch of steps_each batches per model
    bound = lower_bound(result.timeline, workers)
    simulated = simulate_lrtf(result.timeline, workers)
    compute = sum(r.compute for r in result.timeline)
    waited = sum(r.wait for r in result.timeline)
    row = {
        "models": n,
        "workers": workers,
        "steps_per_model": steps_each,
        "makespan_seconds": result.makespan,
        "setup_seconds": result.setup_seconds,
        "wall_seconds": wall,
        "steps": steps,
        "steps_per_second": steps / result.makespan,
        "units": len(result.timeline),
        "shards_per_model": sorted({len(s) for s in result.shards}),
        "compute_seconds": compute,
        "read_wait_seconds": waited,
        "device_busy_share": compute / (result.makespan * workers),
        "lower_bound_seconds": bound,
        "simulated_lrtf_seconds": simulated,
        "makespan_over_lower_bound": result.makespan / bound,
        "load_average_1min_before": round(load, 2),
    }
    print(
        f"SHARP {n} models x {steps_each} steps, {workers} worker(s): makespan "
        f"{result.makespan:6.2f} s "
        f"(set-up {result.setup_seconds:.1f} s), {row['steps_per_second']:.2f} steps/s, "
        f"busy {row['device_busy_share']:.0%}, lower bound {bound:.2f} s "
        f"(x{row['makespan_over_lower_bound']:.3f}), LRTF simulated {simulated:.2f} s",
        flush=True,
    )
    row["_timeline"] = result.timeline
    row["_names"] = [j.name for j in jobs]
    return row


def run_sequential(
    n: int, steps_each: int, args: argparse.Namespace, data: dict[int, Any], *, spill: bool = False
) -> dict[str, Any]:
    """The models one after another with ``args.threads`` threads: plain ``fit``, or
    ``Spill`` under SHARP's budget and offload (``spill``)."""
    torch.set_num_threads(args.threads)
    jobs = jobs_for(n, args, data)
    started = time.perf_counter()
    for job in jobs:
        strategy: Any = (
            Spill(args.budget, offload="disk" if args.folder else "host", folder=args.folder)
            if spill
            else "plain"
        )
        fit(job.model, job.data, optimizer=job.optimizer, loss=job.loss, strategy=strategy,
            epochs=job.epochs, batch_size=job.batch_size, seed=job.seed)  # fmt: skip
    steps = n * steps_each
    seconds = time.perf_counter() - started
    print(
        f"{'Spill' if spill else 'plain'}, one model after another, {args.threads} threads, "
        f"{n} models x {steps_each} steps: {seconds:6.2f} s, {steps / seconds:.2f} steps/s",
        flush=True,
    )
    return {"models": n, "steps_per_model": steps_each, "threads": args.threads,
            "seconds": seconds, "steps": steps, "steps_per_second": steps / seconds}  # fmt: skip


def median_row(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the upper one of an even count)."""
    return dict(sorted(rows, key=lambda r: r[key])[len(rows) // 2])


def run_grid(
    n: int, steps: int, args: argparse.Namespace, data: dict[int, Any], figures: dict[str, Any]
) -> dict[str, Any]:
    """``args.rounds`` interleaved rounds of 1 worker, 2 workers and the plain baseline on
    ``n`` models of ``steps`` steps; their medians and ratios go into ``figures``. Returns
    the median 2-worker run with its timeline."""
    ones, twos, bases, spills = [], [], [], []
    for _ in range(args.rounds):  # interleaved, so that a noisy spell hits every config
        ones.append(run_sharp(n, 1, steps, args, data))
        twos.append(run_sharp(n, 2, steps, args, data))
        bases.append(run_sequential(n, steps, args, data))
        spills.append(run_sequential(n, steps, args, data, spill=True))
    one, two, base, spilled = (median_row(rows, key) for rows, key in
                               ((ones, "makespan_seconds"), (twos, "makespan_seconds"),
                                (bases, "seconds"), (spills, "seconds")))  # fmt: skip
    speedup = two["steps_per_second"] / one["steps_per_second"]
    over_plain = two["steps_per_second"] / base["steps_per_second"]
    over_spill = two["steps_per_second"] / spilled["steps_per_second"]
    print(
        f"  {n} models x {steps} steps, median of {args.rounds}: 2 workers / 1 worker = "
        f"{speedup:.2f}x (target >= {TARGET_SPEEDUP}), makespan / lower bound "
        f"{one['makespan_over_lower_bound']:.3f} (1 worker), "
        f"{two['makespan_over_lower_bound']:.3f} (2 workers) (target <= "
        f"{TARGET_LOWER_BOUND}); 2 workers / plain one after another = {over_plain:.2f}x, "
        f"/ Spill one after another = {over_spill:.2f}x",
        flush=True,
    )
    name = f"{n}_models_x_{steps}_steps"  # the label of these figures' metrics in MLflow
    kept = dict(two)
    for row in [one, two, *ones, *twos]:
        row.pop("_timeline", None)
        row.pop("_names", None)
    figures["sharp"].append(
        {"name": name, "models": n, "steps_per_model": steps, "one_worker": one, "two_workers": two,
         "one_worker_rounds": ones, "two_workers_rounds": twos}
    )  # fmt: skip
    figures["sequential_plain"].append(
        {"name": name, "models": n, "steps_per_model": steps, "median": base, "rounds": bases}
    )
    figures["sequential_spill"].append(
        {"name": name, "models": n, "steps_per_model": steps, "median": spilled, "rounds": spills}
    )
    worst = max(one["makespan_over_lower_bound"], two["makespan_over_lower_bound"])
    figures.setdefault("ratios", []).append(
        {
            "name": name,
            "models": n,
            "steps_per_model": steps,
            "speedup_2_over_1_workers": speedup,
            "speedup_2_workers_over_plain": over_plain,
            "speedup_2_workers_over_spill": over_spill,
            "makespan_over_lower_bound_1_worker": one["makespan_over_lower_bound"],
            "makespan_over_lower_bound_2_workers": two["makespan_over_lower_bound"],
            "speedup_met": speedup >= TARGET_SPEEDUP,
            "lower_bound_met": worst <= TARGET_LOWER_BOUND,
        }
    )
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1024, help="width of the wider models")
    parser.add_argument("--depth", type=int, default=8, help="hidden layers per model")
    parser.add_argument("--batch", type=int, default=512, help="examples per step")
    parser.add_argument("--steps", type=int, nargs="+", default=[6, 18],
                        help="optimizer steps per model (one epoch); a run per value")  # fmt: skip
    parser.add_argument("--budget", type=int, default=128 * 2**20,
                        help="device memory budget in bytes (shards get half)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="threads of the plain baseline")
    parser.add_argument("--folder", type=Path, default=None,
                        help="offload to files here (default: shared memory)")  # fmt: skip
    parser.add_argument("--models", type=int, nargs="+", default=[4, 8], help="grid sizes")
    parser.add_argument(
        "--adam",
        choices=("fused", "default"),
        default="fused",
        help="the Adam of every model, in every run: 'fused', Adam(fused=True), one pass "
        "over each parameter's state (torch's fastest Adam on the CPU, as in spill.py); "
        "'default', torch's default there, a loop of tensor operations",
    )
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each configuration; the median is reported")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS / "sharp.json",
                        help="where the figures go (JSON)")  # fmt: skip
    args = parser.parse_args()

    full = {}
    for width in (args.width, args.width * 3 // 4):
        g = torch.Generator().manual_seed(width)
        n = args.batch * max(args.steps)
        full[width] = (
            torch.randn(n, width, generator=g),
            torch.randint(0, CLASSES, (n,), generator=g),
        )
    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        },
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k != "output"
        },
        "sharp": [],
        "sequential_plain": [],
        "sequential_spill": [],
        "targets": {
            "speedup_2_over_1": TARGET_SPEEDUP,
            "makespan_over_lower_bound": TARGET_LOWER_BOUND,
        },
    }
    gantt_row: dict[str, Any] | None = None
    for steps in args.steps:
        data = {w: TensorDataset(x[: args.batch * steps], y[: args.batch * steps])
                for w, (x, y) in full.items()}  # fmt: skip
        for n in args.models:
            two = run_grid(n, steps, args, data, figures)
            if n == max(args.models) and steps == min(args.steps):
                gantt_row = two
    if gantt_row is not None:
        picture = plot_gantt(
            gantt_row["_timeline"],
            args.output.with_name("sharp_gantt.png"),
            names=gantt_row["_names"],
            title=(
                f"SHARP: {gantt_row['models']} models x {gantt_row['steps_per_model']} steps "
                f"on 2 CPU workers, makespan "
                f"{gantt_row['makespan_seconds']:.1f} s, lower bound "
                f"{gantt_row['lower_bound_seconds']:.1f} s"
            ),
        )
        print(f"timeline drawn to {picture}")
    figures["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {args.output}")


if __name__ == "__main__":
    main()
