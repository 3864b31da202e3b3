"""Spill on CPU: a model whose parameters and Adam state are several times the budget,
trained within the budget, against plain training of the same model.

The model: ``--depth`` blocks of Linear(``--width``, ``--width``) + ReLU and a 10-way head,
trained with Adam (two state tensors per parameter; ``--adam fused``, the default, is
``Adam(fused=True)``, ``--adam default`` torch's default loop) on batches of ``--batch``. With the
defaults (24 x 2048, batch 256) that is 403 MB of parameters and 1.2 GB of parameters plus
optimizer state, 4.7x the 256 MB budget. Runs, each in a fresh interpreter:

- ``plain``: ``fit(..., strategy="plain")``, the model built on the CPU;
- ``spill disk, prefetch`` / ``spill disk, no prefetch``: ``Spill(budget, offload="disk")``
  with the model built on the meta device, so no full copy ever exists: each shard is
  initialised straight into the offload folder;
- ``spill disk, heap kept``: as ``spill disk, prefetch`` but with glibc left to keep freed
  gradients and optimizer scratch in its heap (Spill tells it to return blocks of 1 MiB or
  more at once): what bounding the memory costs in page faults, and what it saves;
- ``plain, huge pages`` / ``spill disk, prefetch, huge pages``: as ``plain`` and ``spill
  disk, prefetch``, started with ``THP_MEM_ALLOC_ENABLE=1`` (torch advises its blocks of
  2 MiB and more for transparent huge pages: fresh memory faults 2 MiB at a time); every
  other run starts without it;
- ``spill host, prefetch``: shards spilled to host memory (on a CPU device that is the
  memory itself: it shows the cost of the schedule and recomputation without I/O);
- ``spill disk, model built first``: as ``spill disk, prefetch`` but the model is built on
  the CPU first (what a user would do without the meta device), for the memory it costs.

Memory: each process samples its resident set (psutil, every 2 ms) and reads the kernel's
high-water mark (``ru_maxrss``). Baselines in the same process: ``cold``, after importing
torch and building the data; ``warm``, after a warm-up fit of a tiny model with the same
strategy (which loads the code paths, thread pools and BLAS buffers any training needs: the
fixed runtime overhead is warm - cold). The claim checked is peak - warm <= budget; the
figure at ``on_train_begin`` (every shard written out, none resident) is reported too.

Time: per-step wall and process CPU seconds (all threads), the first step of each run left
out (it creates the optimizer state); runs are interleaved over ``--rounds`` rounds so all
see the same machine load, and the medians over all steps are compared with plain's, as are
the best runs' medians (on a shared machine a busy neighbour slows whichever run it
overlaps; each run's "others cpu" says how much of the machine other processes took).

The largest model a budget can train is computed from the planner: any depth, as long as
the largest layer fits.

    .venv/bin/python benchmarks/spill.py [--width 2048] [--depth 24] [--budget-mb 256]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mlsys.memory import TORCH_HUGE_PAGES_ENV

RESULTS = Path(__file__).resolve().parent / "results" / "spill.json"
MB = 2**20
CLASSES = 10
TARGET_STEP_RATIO = 1.5  # spill (disk, prefetch) step time over plain's
RUNS: dict[str, dict[str, Any]] = {
    "plain": {"label": "plain", "strategy": "plain"},
    "disk": {"label": "spill disk, prefetch", "strategy": "spill", "offload": "disk"},
    "disk-sync": {
        "label": "spill disk, no prefetch",
        "strategy": "spill",
        "offload": "disk",
        "prefetch": False,
    },
    "disk-heap": {
        "label": "spill disk, heap kept",
        "strategy": "spill",
        "offload": "disk",
        "keep_heap": True,
    },
    "host": {"label": "spill host, prefetch", "strategy": "spill", "offload": "host"},
    "plain-thp": {
        "label": "plain, huge pages",
        "strategy": "plain",
        "env": {TORCH_HUGE_PAGES_ENV: "1"},
    },
    "disk-thp": {
        "label": "spill disk, prefetch, huge pages",
        "strategy": "spill",
        "offload": "disk",
        "env": {TORCH_HUGE_PAGES_ENV: "1"},
    },
    "disk-eager": {
        "label": "spill disk, model built first",
        "strategy": "spill",
        "offload": "disk",
        "eager": True,
    },
}


# --- inside a worker process ------------------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train once as ``spec`` says; its memory and step times."""
    import functools

    import psutil
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from mlsys.training import Callback, fit, spill
    from mlsys.training.spill import Spill

    if spec.get("keep_heap"):
        # Not an option of Spill: to show what returning freed memory to the system costs.
        spill._return_freed_memory = lambda: None  # type: ignore[assignment]

    torch.set_num_threads(spec["threads"])
    process = psutil.Process()

    def rss() -> int:
        return int(process.memory_info().rss)

    width, depth, batch = spec["width"], spec["depth"], spec["batch"]
    g = torch.Generator().manual_seed(0)
    n = batch * spec["steps"]
    data = TensorDataset(
        torch.randn(n, width, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    )
    adam = functools.partial(torch.optim.Adam, lr=1e-4, fused=spec["fused"] or None)
    loss = nn.CrossEntropyLoss(reduction="none")
    folder = spec["folder"]
    spill = spec["strategy"] == "spill"

    def strategy() -> Any:
        if not spill:
            return "plain"
        return Spill(
            spec["budget"],
            offload=spec["offload"],
            prefetch=spec.get("prefetch", True),
            folder=folder,
        )

    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, CLASSES))
        return nn.Sequential(*layers)

    cold = rss()
    tiny = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    fit(tiny, data, strategy=strategy(), optimizer=adam, loss=loss, batch_size=batch)
    del tiny
    warm = rss()

    peak = [warm]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    class Clock(Callback):
        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self.faults: list[int] = []
            self.floor = 0

        def on_train_begin(self, **_: Any) -> None:
            self.floor = rss()
            self.wall, self.cpu = [time.perf_counter()], [cpu_seconds()]
            self.faults = [minor_faults()]

        def on_step_end(self, **_: Any) -> None:
            self.wall.append(time.perf_counter())
            self.cpu.append(cpu_seconds())
            self.faults.append(minor_faults())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    torch.manual_seed(0)
    if spill and not spec.get("eager"):
        with torch.device("meta"):
            model = build()  # materialised shard by shard, seeded by Spill(init_seed=0)
    else:
        model = build()
    built = rss()
    clock = Clock()
    plan_info: dict[str, Any] = {}
    if spill:
        plan = strategy().plan(model, data.tensors[0][:1], adam, batch)
        plan_info = {
            "shards": len(plan.counts),
            "layers_per_shard": list(plan.counts),
            "largest_shard_footprint_bytes": max(
                plan.footprint(s) for s in range(len(plan.counts))
            ),
            "planned_peak_bytes": plan.peak(prefetch=spec.get("prefetch", True)),
        }
    fit(
        model, data, strategy=strategy(), optimizer=adam, loss=loss,
        epochs=spec["epochs"], batch_size=batch, callbacks=[clock],
    )  # fmt: skip
    total = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], rss())
    wall = [b - a for a, b in itertools.pairwise(clock.wall)]
    cpu = [b - a for a, b in itertools.pairwise(clock.cpu)]
    return {
        "rss_cold_bytes": cold,
        "rss_warm_bytes": warm,
        "rss_after_build_bytes": built,
        "rss_at_train_begin_bytes": clock.floor,
        "peak_rss_sampled_bytes": peak[0],
        "peak_rss_kernel_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_seconds": wall,
        "step_cpu_seconds": cpu,
        "step_minor_faults": [b - a for a, b in itertools.pairwise(clock.faults)],
        "total_seconds": total,
        "plan": plan_info,
    }


def minor_faults() -> int:
    """Page faults this process took that needed no disk read: mostly first touches of
    fresh memory, each of which the kernel must zero and map."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# --- the parent: run, compare, report -------------------------------------------------------


def measure(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter; its figures, plus the load around it: the share
    of the machine's CPU time that other processes took while it ran (this machine is
    shared, and a busy neighbour slows whichever run it overlaps)."""
    load = os.getloadavg()[0]
    busy_before, children_before = machine_busy_seconds(), children_cpu_seconds()
    started = time.perf_counter()
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    env = {k: v for k, v in os.environ.items() if k != TORCH_HUGE_PAGES_ENV} | spec.get("env", {})
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-6000:]}")
    wall = time.perf_counter() - started
    others = machine_busy_seconds() - busy_before - (children_cpu_seconds() - children_before)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average_1min_before"] = round(load, 2)
    result["others_cpu_share"] = round(max(0.0, others) / (wall * (os.cpu_count() or 1)), 3)
    return result


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (Linux ``/proc/stat``); 0 elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def largest_layer(budget: int, batch: int) -> dict[str, Any]:
    """The widest Linear(w, w) layer whose footprint (Adam) fits ``budget`` as a shard of
    its own, from the planner: the largest layer any Spill model under this budget can have.
    Depth is then bounded only by the disk."""
    import functools

    import torch
    from torch import nn

    from mlsys.training.spill import layer_footprints

    adam = functools.partial(torch.optim.Adam, lr=1e-4)

    def needs(width: int) -> int:
        with torch.device("meta"):
            layer = nn.Sequential(nn.Linear(width, width))
        found = layer_footprints(layer, torch.zeros(1, width), adam, batch_size=batch)
        return found[0].total

    low, high = 1, 1
    while needs(high) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if needs(middle) <= budget else (low, middle)
    return {
        "width": low,
        "parameters": low * low + low,
        "footprint_bytes": needs(low),
        "next_width_footprint_bytes": needs(low + 1),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048, help="units per hidden layer")
    parser.add_argument("--depth", type=int, default=24, help="Linear+ReLU blocks")
    parser.add_argument("--batch", type=int, default=256, help="examples per mini-batch")
    parser.add_argument("--budget-mb", type=int, default=256, help="Spill's budget_bytes, in MiB")
    parser.add_argument("--steps", type=int, default=3, help="mini-batches per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="times each run is repeated, interleaved"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run"
    )
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        help="comma-separated runs to make, of: "
        + "; ".join(f"{key} ({run['label']})" for key, run in RUNS.items()),
    )
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="where offload='disk' writes (default: a temporary folder on the system's disk)",
    )
    parser.add_argument(
        "--adam",
        choices=("fused", "default"),
        default="fused",
        help="the Adam every run uses: 'fused', Adam(fused=True), one kernel per parameter "
        "and no temporaries (torch's fastest Adam on the CPU); 'default', torch's default "
        "there, a loop of tensor operations that allocates scratch tensors",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON figures go")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown or "plain" not in names:
        parser.error(f"--runs must include plain and name only runs of {list(RUNS)}")

    budget = args.budget_mb * MB
    scratch = Path(tempfile.mkdtemp(prefix="mlsys-bench-spill-", dir=args.folder))
    params = args.depth * (args.width**2 + args.width) + args.width * CLASSES + CLASSES
    print(
        f"model: {args.depth} x (Linear({args.width}, {args.width}) + ReLU) + Linear -> "
        f"{CLASSES}: {params * 4 / MB:.0f} MiB of parameters, {params * 12 / MB:.0f} MiB with "
        f"Adam's state ({params * 12 / budget:.1f}x the {args.budget_mb} MiB budget); batch "
        f"{args.batch}, {args.steps} steps x {args.epochs} epochs, {args.rounds} rounds; "
        f"offload folder {scratch}"
    )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for round_ in range(args.rounds):
            for name in names:
                spec = {
                    **RUNS[name],
                    "width": args.width,
                    "depth": args.depth,
                    "batch": args.batch,
                    "steps": args.steps,
                    "epochs": args.epochs,
                    "budget": budget,
                    "threads": args.threads,
                    "fused": args.adam == "fused",
                    "folder": str(scratch),
                }
                if name == "disk-eager" and round_ > 0:
                    continue  # its memory is the point; once is enough
                results[name].append(measure(name, spec))
                print(f"  round {round_ + 1}: {RUNS[name]['label']} done", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        steps = [s for run in runs for s in run["step_seconds"][1:]]
        cpu = [s for run in runs for s in run["step_cpu_seconds"][1:]]
        warm = min(run["rss_warm_bytes"] for run in runs)
        peak = max(max(run["peak_rss_sampled_bytes"], run["peak_rss_kernel_bytes"]) for run in runs)
        rows[name] = {
            **RUNS[name],
            "step_seconds_median": median(steps),
            "step_seconds_best_run": min(median(run["step_seconds"][1:]) for run in runs),
            "step_cpu_seconds_median": median(cpu),
            "step_minor_faults_median": median(
                [f for run in runs for f in run["step_minor_faults"][1:]]
            ),
            "rss_cold_bytes": min(run["rss_cold_bytes"] for run in runs),
            "rss_warm_bytes": warm,
            "runtime_overhead_bytes": warm - min(run["rss_cold_bytes"] for run in runs),
            "peak_rss_bytes": peak,
            "peak_minus_warm_bytes": peak - warm,
            "at_train_begin_minus_warm_bytes": max(
                run["rss_at_train_begin_bytes"] - run["rss_warm_bytes"] for run in runs
            ),
            "plan": runs[0]["plan"],
            "others_cpu_share_mean": round(
                statistics.fmean(run["others_cpu_share"] for run in runs), 3
            ),
            "runs": runs,
        }
    base = rows["plain"]
    print(
        f"\n{'run':<31}{'step s':>8}{'vs plain':>9}{'best':>6}{'vs plain':>9}"
        f"{'cpu s':>7}{'vs plain':>9}"
        f"{'peak-warm MiB':>14}{'vs budget':>10}{'shards':>7}{'others cpu':>11}"
        f"{'faults/step':>12}"
    )
    for row in rows.values():
        row["step_vs_plain"] = row["step_seconds_median"] / base["step_seconds_median"]
        row["best_run_step_vs_plain"] = row["step_seconds_best_run"] / base["step_seconds_best_run"]
        row["cpu_vs_plain"] = row["step_cpu_seconds_median"] / base["step_cpu_seconds_median"]
        row["peak_minus_warm_vs_budget"] = row["peak_minus_warm_bytes"] / budget
        print(
            f"{row['label']:<31}{row['step_seconds_median']:>8.2f}{row['step_vs_plain']:>8.2f}x"
            f"{row['step_seconds_best_run']:>6.2f}{row['best_run_step_vs_plain']:>8.2f}x"
            f"{row['step_cpu_seconds_median']:>7.2f}{row['cpu_vs_plain']:>8.2f}x"
            f"{row['peak_minus_warm_bytes'] / MB:>14.0f}{row['peak_minus_warm_vs_budget']:>9.2f}x"
            f"{row['plan'].get('shards', ''):>7}{row['others_cpu_share_mean']:>10.0%}"
            f"{row['step_minor_faults_median']:>12.0f}"
        )
    overhead = max(row["runtime_overhead_bytes"] for row in rows.values())
    print(
        f"fixed runtime overhead (warm - cold baseline, largest of the runs): "
        f"{overhead / MB:.0f} MiB; cold baseline (python + torch + data): "
        f"{base['rss_cold_bytes'] / MB:.0f} MiB"
    )

    largest = largest_layer(budget, args.batch)
    print(
        f"largest layer under a {args.budget_mb} MiB budget with Adam and batch {args.batch}: "
        f"Linear({largest['width']}, {largest['width']}) ({largest['footprint_bytes'] / MB:.0f}"
        f" MiB as its own shard); any depth of such layers trains, up to the disk's space"
    )

    targets: dict[str, Any] = {}
    # Spill on disk with prefetch, without and with huge pages; both against plain training
    # as it runs by default (without them: the "plain, huge pages" row shows the other).
    for name, key in (("disk", "disk_prefetch"), ("disk-thp", "disk_prefetch_huge_pages")):
        if name not in rows:
            continue
        row = rows[name]
        targets[f"{key}_peak_minus_warm_within_budget"] = {
            "value": row["peak_minus_warm_bytes"],
            "target": f"<= {budget}",
            "met": row["peak_minus_warm_bytes"] <= budget,
        }
        targets[f"{key}_step_vs_plain"] = {
            "value": row["step_vs_plain"],
            "target": f"<= {TARGET_STEP_RATIO}",
            "met": row["step_vs_plain"] <= TARGET_STEP_RATIO,
        }
        targets[f"{key}_best_run_step_vs_plain"] = {
            "value": row["best_run_step_vs_plain"],
            "target": f"<= {TARGET_STEP_RATIO}",
            "met": row["best_run_step_vs_plain"] <= TARGET_STEP_RATIO,
        }
    if "disk-sync" in rows:
        row = rows["disk-sync"]
        targets["disk_no_prefetch_peak_minus_warm_within_budget"] = {
            "value": row["peak_minus_warm_bytes"],
            "target": f"<= {budget}",
            "met": row["peak_minus_warm_bytes"] <= budget,
        }
    for key, target in targets.items():
        value = target["value"]
        in_bytes = key.endswith("budget")
        shown = f"{value / MB:.0f} MiB" if in_bytes else f"{value:.2f}x"
        wanted = f"<= {budget / MB:.0f} MiB" if in_bytes else target["target"]
        verdict = "met" if target["met"] else "MISSED"
        print(f"target {key}: {shown} (want {wanted}): {verdict}")

    import torch

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
            "load_average_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "model": {
            "width": args.width,
            "depth": args.depth,
            "parameters": params,
            "parameter_bytes": params * 4,
            "parameter_and_adam_state_bytes": params * 12,
        },
        "budget_bytes": budget,
        "batch_size": args.batch,
        "steps_per_epoch": args.steps,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "threads": args.threads,
        "adam": args.adam,
        "runs": rows,
        "largest_layer": largest,
        "targets": targets,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.output}")


if __name__ == "__main__":
    main()
