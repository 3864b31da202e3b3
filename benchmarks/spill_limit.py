"""Spill under a hard memory limit: what trains inside a container's limit, and at what cost.

A process's resident set leaves out the page cache that holds a spilled model's files; a
container's memory limit does not. So each run here goes into a memory cgroup of its own
(the page cache its files use charged to it, no swap), created and removed by this script,
with ``--limit-mb`` (512) as its limit, the way a container's limit works:

- ``plain, no limit``: ``fit(..., strategy="plain")`` of the large model outside any
  cgroup: the baseline step time, on the same cores;
- ``plain, in the limit``: the same inside the limit (killed by the kernel once the model
  and its Adam state pass the limit);
- ``spill, in the limit``: ``Spill(--budget-mb, offload="disk")`` of the same model, built
  on the meta device and initialised shard by shard straight into its files, inside the
  limit;
- ``equal``: a smaller model of the same shape (``--check-depth`` blocks), trained by Spill
  inside the limit and by plain training without one: the largest difference of any
  parameter.

The model: ``--depth`` blocks of Linear(``--width``, ``--width``) + ReLU and a 10-way head,
``Adam(fused=True)``, batches of ``--batch``. Training state = parameters, gradients and
Adam's two moments, 16 bytes per parameter; the defaults (64 x 2048) give 269M parameters,
4.3 GB of training state, 8.0x the 512 MiB limit. Peak memory is the cgroup's own
high-water mark (resident memory and page cache). Step times leave out each run's first
step (it creates the optimizer state).

Needs root and a cgroup memory controller (v1 or v2); otherwise it says why and exits 0
having measured nothing.

    .venv/bin/python benchmarks/spill_limit.py [--limit-mb 512] [--depth 64] [--width 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "spill_limit.json"
MB = 2**20
CLASSES = 10
BYTES_PER_PARAMETER = 16  # float32 weights, gradients, Adam's exp_avg and exp_avg_sq
TARGET_STATE_OVER_LIMIT = 8.0  # issue 28: training state at least 8x the limit


# --- cgroups --------------------------------------------------------------------------------


class MemoryCgroup:
    """A memory cgroup of its own (v1 or v2) with a limit and no swap; removed on close."""

    V1 = Path("/sys/fs/cgroup/memory")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self, limit_bytes: int) -> None:
        name = f"mlsys-bench-{uuid.uuid4().hex[:8]}"
        if (self.V1 / "memory.limit_in_bytes").exists():
            self.version, self.path = 1, self.V1 / name
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(limit_bytes))  # memory + swap: no swap
        else:
            self.version, self.path = 2, self.V2 / name
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(limit_bytes))
            swap = self.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")

    @staticmethod
    def unavailable() -> str | None:
        """Why no memory cgroup can be made here, or None."""
        if os.geteuid() != 0:
            return "memory cgroups need root"
        v1 = MemoryCgroup.V1 / "memory.limit_in_bytes"
        v2 = MemoryCgroup.V2 / "cgroup.controllers"
        if not v1.exists() and "memory" not in (v2.read_text() if v2.exists() else ""):
            return "no cgroup memory controller is mounted under /sys/fs/cgroup"
        return None

    def join(self) -> None:
        """Move the calling process into the cgroup (a ``preexec_fn``)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def close(self) -> None:
        for _ in range(50):  # the killed processes leave the cgroup asynchronously
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


# --- inside a worker process ----------------------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train once as ``spec`` says; its step times (and its parameters, when asked)."""
    import functools

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from mlsys.training import Callback, fit
    from mlsys.training.spill import Spill

    torch.set_num_threads(spec["threads"])
    width, depth, batch = spec["width"], spec["depth"], spec["batch"]
    g = torch.Generator().manual_seed(0)
    n = batch * spec["steps"]
    data = TensorDataset(
        torch.randn(n, width, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    )
    adam = functools.partial(torch.optim.Adam, lr=1e-4, fused=True)

    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, CLASSES))
        return nn.Sequential(*layers)

    class Clock(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_begin(self, **_: Any) -> None:
            self.times = [time.perf_counter()]

        def on_step_end(self, **_: Any) -> None:
            self.times.append(time.perf_counter())

    spill = spec["strategy"] == "spill"
    torch.manual_seed(0)
    if spill:
        with torch.device("meta"):
            model = build()  # initialised shard by shard, seeded by Spill(init_seed=0)
        Path(spec["folder"]).mkdir(parents=True, exist_ok=True)
        strategy: Any = Spill(spec["budget"], offload="disk", folder=spec["folder"])
    else:
        model = build()
        strategy = "plain"
    clock = Clock()
    result = fit(
        model, data, strategy=strategy, optimizer=adam,
        loss=nn.CrossEntropyLoss(reduction="none"), epochs=1, batch_size=batch,
        callbacks=[clock],
    )  # fmt: skip
    if spec.get("save"):
        torch.save(result.model.state_dict(), spec["save"])
    steps = [b - a for a, b in zip(clock.times, clock.times[1:], strict=False)]
    return {"step_seconds": steps}


# --- the runs -------------------------------------------------------------------------------


def measure(name: str, spec: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """One fresh interpreter as ``spec`` says, inside a cgroup of ``limit`` bytes if given."""
    print(f"{name} ...", flush=True)
    cgroup = MemoryCgroup(limit) if limit else None
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            capture_output=True, text=True, preexec_fn=cgroup.join if cgroup else None,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        row: dict[str, Any] = {"seconds": round(seconds, 2), "returncode": done.returncode}
        if cgroup:
            row["cgroup_peak_bytes"] = cgroup.peak_bytes()
            row["oom_kills"] = cgroup.oom_kills()
    finally:
        if cgroup:
            cgroup.close()
    row["trained"] = done.returncode == 0
    if done.returncode == 0:
        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        later = row["step_seconds"][1:]
        row["median_step_seconds"] = statistics.median(later) if later else None
    else:
        row["stderr_tail"] = done.stderr[-600:]
    outcome = (
        f"median step {row['median_step_seconds']:.2f} s"
        if row["trained"] and row["median_step_seconds"] is not None
        else "trained"
        if row["trained"]
        else f"killed by the kernel (oom kills {row.get('oom_kills')})"
        if done.returncode == -9
        else f"failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    )
    peak = f", cgroup peak {row['cgroup_peak_bytes'] / MB:,.0f} MiB" if cgroup else ""
    print(f"  {outcome}{peak}, {seconds:.0f} s", flush=True)
    return row


def largest_difference(a: Path, b: Path) -> float:
    import torch

    first, second = torch.load(a), torch.load(b)
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def parameters(width: int, depth: int) -> int:
    return depth * (width * width + width) + width * CLASSES + CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-mb", type=int, default=512, help="the cgroup's memory limit")
    parser.add_argument("--budget-mb", type=int, default=224, help="Spill's budget, in MiB")
    parser.add_argument("--width", type=int, default=2048, help="units per hidden layer")
    parser.add_argument("--depth", type=int, default=64, help="Linear+ReLU blocks")
    parser.add_argument("--check-depth", type=int, default=4, help="blocks of the model "
                        "whose parameters are compared with plain training's")  # fmt: skip
    parser.add_argument("--batch", type=int, default=64, help="examples per mini-batch")
    parser.add_argument("--steps", type=int, default=4, help="mini-batches trained per run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    why_not = MemoryCgroup.unavailable()
    if why_not:
        print(f"skipped: {why_not}")
        return

    limit = args.limit_mb * MB
    n_params = parameters(args.width, args.depth)
    state = n_params * BYTES_PER_PARAMETER
    print(
        f"model {args.depth} x Linear({args.width}): {n_params / 1e6:.0f}M parameters, "
        f"{state / 1e9:.2f} GB of training state, {state / limit:.1f}x the "
        f"{args.limit_mb} MiB limit"
    )
    load_at_start = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="mlsys-bench-spill-limit-"))
    base = {"width": args.width, "depth": args.depth, "batch": args.batch,
            "steps": args.steps, "threads": args.threads}  # fmt: skip
    spill = {"strategy": "spill", "budget": args.budget_mb * MB}
    try:
        runs = {
            "plain, no limit": measure("plain, no limit", {**base, "strategy": "plain"}, None),
            "plain, in the limit": measure(
                "plain, in the limit", {**base, "strategy": "plain"}, limit
            ),
            "spill, in the limit": measure(
                "spill, in the limit", {**base, **spill, "folder": str(scratch / "big")}, limit
            ),
        }
        small = {**base, "depth": args.check_depth, "steps": 3}
        checks = [
            measure(
                "equal: spill, in the limit",
                {**small, **spill, "folder": str(scratch / "small"), "save": str(scratch / "s.pt")},
                limit,
            )
        ]
        plain_small = {**small, "strategy": "plain", "save": str(scratch / "p.pt")}
        checks.append(measure("equal: plain, no limit", plain_small, None))
        if not all(check["trained"] for check in checks):
            raise SystemExit("the equality check's runs did not both train; see above")
        difference = largest_difference(scratch / "s.pt", scratch / "p.pt")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    plain, spilled = runs["plain, no limit"], runs["spill, in the limit"]
    ratio = (
        spilled["median_step_seconds"] / plain["median_step_seconds"]
        if spilled["trained"] and plain["trained"]
        else None
    )
    met = bool(
        spilled["trained"] and state / limit >= TARGET_STATE_OVER_LIMIT and difference <= 1e-5
    )
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min_at_start": load_at_start,
            "load_average_1min_at_end": os.getloadavg()[0],
        },
        "limit_bytes": limit,
        "budget_bytes": args.budget_mb * MB,
        "model": {"width": args.width, "depth": args.depth, "parameters": n_params},
        "training_state_bytes": state,
        "state_over_limit": state / limit,
        "batch": args.batch,
        "steps": args.steps,
        "threads": args.threads,
        "runs": runs,
        "equal": {"depth": args.check_depth, "max_abs_parameter_difference": difference},
        "spill_step_over_plain_unlimited": ratio,
        "target_state_over_limit": TARGET_STATE_OVER_LIMIT,
        "met": met,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nSpill trained {state / 1e9:.2f} GB of training state ({state / limit:.1f}x the "
        f"limit) inside {args.limit_mb} MiB: {'yes' if spilled['trained'] else 'NO'}; "
        f"plain training inside it: {'trained' if runs['plain, in the limit']['trained'] else 'no'}"
    )
    if ratio is not None:
        print(f"step time in the limit / plain without one: {ratio:.2f}x")
    print(f"largest parameter difference from plain training: {difference:.2e}")
    print(f"target (state >= {TARGET_STATE_OVER_LIMIT:g}x the limit, equal): "
          f"{'met' if met else 'not met'}; figures in {args.output}")  # fmt: skip


if __name__ == "__main__":
    main()
