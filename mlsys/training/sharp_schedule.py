"""SHARP's scheduler: the jobs it trains and the units it cuts their training into
(:class:`Job`, :class:`Unit`, :func:`unit_chain`), the scheduler that hands units to the
device processes and collects what they report (:class:`Scheduler`), what it reports back
(:class:`UnitRecord`, :class:`ManyResult`), and the analysis of a measured schedule
(:func:`lower_bound`, :func:`simulate_lrtf`, :func:`plot_gantt`).

A module of its own beside :mod:`mlsys.training.sharp`, not in :mod:`mlsys.training.shards`:
it is SHARP's alone (Spill runs one model, in order, with nothing to schedule), while the
``shards`` package holds what both trainers share. It runs in the calling process only and
knows nothing of how a unit computes: the device processes run the function handed to
:class:`Scheduler` (SHARP's worker), so this module doesn't import the trainer that
imports it.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Literal

from torch import nn
from torch.utils.data import Dataset

from mlsys.training.fit import (
    Callback,
    EpochMeter,
    FitResult,
    LossFn,
    OptimizerFactory,
    epoch_batches,
)

__all__ = [
    "QUEUE_DEPTH",
    "SWITCH_MARGIN",
    "Job",
    "ManyResult",
    "Scheduler",
    "Unit",
    "UnitKind",
    "UnitRecord",
    "lower_bound",
    "plot_gantt",
    "simulate_lrtf",
    "unit_chain",
]

UnitKind = Literal["F", "L", "B"]

# Units handed to a device ahead: the running one, the next (its shard read meanwhile) and
# one more, so that the next is known when a unit starts (the scheduler answers a unit's
# completion while the device already runs the following one).
QUEUE_DEPTH = 3
# A device keeps its model until an idle one has this share of that model's work more left.
SWITCH_MARGIN = 0.02


@dataclass
class Job:
    """One model to train with :func:`train_many`; the arguments of ``fit`` for it.

    Everything but ``callbacks`` is sent to the worker processes, so it must pickle (a
    ``functools.partial`` of an optimizer class, a loss module; not a lambda)."""

    model: nn.Sequential
    data: Dataset[Any]
    optimizer: OptimizerFactory
    loss: LossFn
    epochs: int = 1
    batch_size: int = 32
    seed: int = 0
    shuffle: bool = False
    drop_last: bool = False
    name: str = ""
    callbacks: Sequence[Callback] = ()


@dataclass(frozen=True)
class Unit:
    """One shard's share of one training step of one job."""

    job: int
    seq: int  # position in the job's chain of units
    kind: UnitKind  # F: forward; L: last shard's forward+loss+backward+step; B: backward+step
    shard: int
    epoch: int
    step: int  # within the epoch
    version: int  # steps the job has done before this one: the shard weights' version
    last_step: bool  # the job's final step: the shard's state is written for the result
    final: bool  # the job's last unit: nothing to pass on

    @property
    def updates(self) -> bool:
        return self.kind != "F"


@dataclass(frozen=True)
class UnitRecord:
    """What a device did: one unit, when (``time.perf_counter`` seconds, one clock for all
    processes of the machine) and how long it computed and waited for reads."""

    device: int
    job: int
    seq: int
    kind: str
    shard: int
    start: float
    end: float
    compute: float
    wait: float


@dataclass
class ManyResult:
    """Results in job order (None for a failed job), failures by job name (tracebacks), the
    device timeline, and the shards each job was cut into."""

    results: list[FitResult | None]
    failures: dict[str, str]
    timeline: list[UnitRecord]
    shards: list[list[tuple[int, int]]]
    devices: list[str]
    makespan: float
    setup_seconds: float

    def raise_failures(self) -> None:
        """Raise RuntimeError with every failed job's traceback, if any failed."""
        if self.failures:
            detail = "\n\n".join(f"job {name}:\n{tb}" for name, tb in self.failures.items())
            raise RuntimeError(f"{len(self.failures)} job(s) failed:\n\n{detail}")


def unit_chain(n_shards: int) -> list[tuple[UnitKind, int]]:
    """The units of one training step over ``n_shards`` shards, in order:
    ``[("F", 0), ..., ("F", S-2), ("L", S-1), ("B", S-2), ..., ("B", 0)]``."""
    chain: list[tuple[UnitKind, int]] = [("F", s) for s in range(n_shards - 1)]
    chain.append(("L", n_shards - 1))
    chain.extend(("B", s) for s in range(n_shards - 2, -1, -1))
    return chain


# --- schedule analysis: lower bound and a simulator ------------------------------------------


def lower_bound(timeline: Sequence[UnitRecord], n_devices: int) -> float:
    """The shortest makespan any schedule could reach with these measured unit times: no
    less than the longest job's chain (its units run one after another) and no less than
    all the work spread evenly over the devices."""
    per_job: dict[int, float] = {}
    for record in timeline:
        per_job[record.job] = per_job.get(record.job, 0.0) + record.compute
    if not per_job:
        return 0.0
    return max(max(per_job.values()), sum(per_job.values()) / n_devices)


def simulate_lrtf(timeline: Sequence[UnitRecord], n_devices: int) -> float:
    """Makespan of longest-remaining-time-first over the measured unit times with free,
    instant transfers (what the scheduler would reach on ideal devices)."""
    chains: dict[int, list[float]] = {}
    for record in sorted(timeline, key=lambda r: (r.job, r.seq)):
        chains.setdefault(record.job, []).append(record.compute)
    remaining = {job: sum(chain) for job, chain in chains.items()}
    position = dict.fromkeys(chains, 0)
    ready_at = dict.fromkeys(chains, 0.0)
    free_at = [0.0] * n_devices
    end = 0.0
    while any(position[j] < len(chains[j]) for j in chains):
        device = min(range(n_devices), key=lambda d: free_at[d])
        now = free_at[device]
        ready = [j for j in chains if position[j] < len(chains[j]) and ready_at[j] <= now]
        if not ready:
            free_at[device] = min(ready_at[j] for j in chains if position[j] < len(chains[j]))
            continue
        job = max(ready, key=lambda j: remaining[j])
        cost = chains[job][position[job]]
        position[job] += 1
        remaining[job] -= cost
        free_at[device] = ready_at[job] = now + cost
        end = max(end, now + cost)
    return end


def plot_gantt(
    timeline: Sequence[UnitRecord],
    path: Path,
    *,
    names: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Device usage over time: one row per device, one bar per unit, coloured by job (its
    name in the legend), the time a device waited for reads drawn hatched. Saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not timeline:
        raise ValueError("the timeline is empty: nothing to draw")
    origin = min(r.start for r in timeline)
    devices = sorted({r.device for r in timeline})
    jobs = sorted({r.job for r in timeline})
    colours = plt.get_cmap("tab10" if len(jobs) <= 10 else "tab20")
    legend_rows = -(-(len(jobs) + 1) // 5)
    fig, ax = plt.subplots(
        figsize=(11, 1.2 + 0.5 * len(devices) + 0.3 * legend_rows), layout="constrained"
    )
    for r in timeline:
        row = devices.index(r.device)
        colour = colours(jobs.index(r.job) % colours.N)
        start = r.start - origin
        ax.broken_barh([(start, r.wait)], (row - 0.35, 0.7), facecolors="white",
                       edgecolors=colour, hatch="///", linewidth=0.3)  # fmt: skip
        ax.broken_barh([(start + r.wait, max(r.end - r.start - r.wait, 0.0))],
                       (row - 0.35, 0.7), facecolors=colour, linewidth=0)  # fmt: skip
    ax.set_yticks(range(len(devices)), [f"device {d}" for d in devices])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    handles = [
        Patch(color=colours(i % colours.N), label=(names[j] if names else f"job {j}"))
        for i, j in enumerate(jobs)
    ]
    handles.append(
        Patch(facecolor="white", edgecolor="grey", hatch="///", label="waiting for reads")
    )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 5),
        fontsize="small",
        frameon=False,
    )
    ax.set_title(title or f"SHARP: {len(jobs)} models on {len(devices)} devices")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the scheduler (main process) ------------------------------------------------------------


@dataclass
class _Device:
    index: int
    name: str
    process: Any
    conn: Connection
    queue: deque[Unit] = field(default_factory=deque)
    alive: bool = True


class Scheduler:
    """Hands units to devices (longest remaining time first, two per device) and collects
    what they report: losses into per-epoch history, times into the timeline."""

    def __init__(
        self,
        jobs: Sequence[Job],
        names: list[str],
        plans: list[list[tuple[int, int]]],
        device_names: list[str],
        work: Path,
        threads: int,
        progress: Callable[[int, int], None] | None,
        *,
        keep_inputs: bool,
        worker: Callable[[Connection, int, str, str, int, bool], None],
    ) -> None:
        self.jobs = jobs
        # What each device process runs: worker(conn, index, device name, work folder,
        # threads, keep_inputs); it must pickle by reference (a module-level function).
        self.worker = worker
        self.keep_inputs = keep_inputs
        self.names = names
        self.plans = plans
        self.device_names = device_names
        self.work = work
        self.threads = threads
        self.progress = progress
        self.chains = [unit_chain(len(bounds)) for bounds in plans]
        self.steps_per_epoch = [
            [
                len(
                    epoch_batches(
                        len(job.data),  # type: ignore[arg-type]
                        job.batch_size,
                        epoch=e,
                        seed=job.seed,
                        shuffle=job.shuffle,
                        drop_last=job.drop_last,
                    )
                )
                for e in range(job.epochs)
            ]
            for job in jobs
        ]
        self.steps = [sum(per_epoch) for per_epoch in self.steps_per_epoch]
        self.total_units = [len(c) * s for c, s in zip(self.chains, self.steps, strict=True)]
        self.next_seq = [0] * len(jobs)
        self.done_units = [0] * len(jobs)
        self.holder: list[int | None] = [None] * len(jobs)  # device with the job's units
        self.failures: dict[str, str] = {}
        self.history: list[list[dict[str, Any]]] = [[] for _ in jobs]
        self.meters: list[EpochMeter | None] = [None] * len(jobs)
        self.last_loss = [math.nan] * len(jobs)
        self.timeline: list[UnitRecord] = []
        self.devices: list[_Device] = []
        # Unit cost estimates per (job, chain position): measured seconds once seen, else
        # parameters x batch (x3 for units with a backward pass), scaled by what was seen.
        self.measured: list[dict[int, float]] = [{} for _ in jobs]
        self.prior = [self._prior(i) for i in range(len(jobs))]
        self.scale: list[float] = []

    def _prior(self, job: int) -> list[float]:
        model = self.jobs[job].model
        cost: list[float] = []
        for kind, shard in self.chains[job]:
            start, stop = self.plans[job][shard]
            params = sum(p.numel() for p in model[start:stop].parameters()) + 1
            cost.append(params * self.jobs[job].batch_size * (1 if kind == "F" else 3))
        return cost

    # -- estimates

    def _unit_cost(self, job: int, position: int) -> float:
        seen = self.measured[job].get(position)
        if seen is not None:
            return seen
        scale = sorted(self.scale)[len(self.scale) // 2] if self.scale else 1e-9
        return self.prior[job][position] * scale

    def remaining(self, job: int, *, from_seq: int | None = None) -> float:
        seq = self.next_seq[job] if from_seq is None else from_seq
        chain = len(self.chains[job])
        left = self.total_units[job] - seq
        if left <= 0:
            return 0.0
        per_step = sum(self._unit_cost(job, p) for p in range(chain))
        position = seq % chain
        partial = sum(self._unit_cost(job, p) for p in range(position, chain))
        full_steps = (left - (chain - position)) // chain
        return partial + full_steps * per_step

    def step_cost(self, job: int) -> float:
        return sum(self._unit_cost(job, p) for p in range(len(self.chains[job])))

    # -- processes

    def start(self, payload: bytes) -> None:
        context = mp.get_context("spawn")
        for index, name in enumerate(self.device_names):
            parent, child = context.Pipe()
            process = context.Process(
                target=self.worker,
                args=(child, index, name, str(self.work), self.threads, self.keep_inputs),
                name=f"mlsys-sharp-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            parent.send_bytes(payload)
            self.devices.append(_Device(index, name, process, parent))
        for device in self.devices:
            message = device.conn.recv()
            if message[0] != "ready":
                raise RuntimeError(f"device {device.index} ({device.name}) failed to start: "
                                   f"{message[1]}")  # fmt: skip

    def stop(self) -> None:
        for device in self.devices:
            if device.alive:
                with contextlib.suppress(BrokenPipeError, OSError):
                    device.conn.send(("stop",))
        for device in self.devices:
            device.process.join(timeout=30)
            if device.process.is_alive():
                device.process.kill()
                device.process.join()
            device.conn.close()

    # -- the loop

    def _active(self, job: int) -> bool:
        return self.names[job] not in self.failures and self.next_seq[job] < self.total_units[job]

    def _choose(self, device: _Device) -> int | None:
        """The job whose next unit ``device`` takes: longest remaining time first, except
        that the job the device runs keeps it while no idle job has more than
        :data:`SWITCH_MARGIN` of its work (and at least one step) more left: switching costs
        writing one shard and reading another."""
        own = device.queue[-1].job if device.queue else None
        idle = [j for j in range(len(self.jobs)) if self.holder[j] is None and self._active(j)]
        best = max(idle, key=self.remaining, default=None)
        if own is not None and self._active(own):
            margin = max(self.step_cost(own), SWITCH_MARGIN * self.remaining(own, from_seq=0))
            if best is None or self.remaining(best) <= self.remaining(own) + margin:
                return own
        return best

    def _unit(self, job: int) -> Unit:
        seq = self.next_seq[job]
        chain = self.chains[job]
        kind, shard = chain[seq % len(chain)]
        version = seq // len(chain)
        epoch, step = self._epoch_step(job, version)
        return Unit(
            job=job,
            seq=seq,
            kind=kind,
            shard=shard,
            epoch=epoch,
            step=step,
            version=version,
            last_step=version == self.steps[job] - 1,
            final=seq == self.total_units[job] - 1,
        )

    def _epoch_step(self, job: int, version: int) -> tuple[int, int]:
        for epoch, count in enumerate(self.steps_per_epoch[job]):
            if version < count:
                return epoch, version
            version -= count
        raise AssertionError("unit beyond the last epoch")

    def _fill(self) -> None:
        for device in self.devices:
            while device.alive and len(device.queue) < QUEUE_DEPTH:
                job = self._choose(device)
                if job is None:
                    break
                unit = self._unit(job)
                self.next_seq[job] += 1
                self.holder[job] = device.index
                device.queue.append(unit)
                device.conn.send(("unit", unit))

    def run(self) -> None:
        total = sum(self.total_units)
        for index, job in enumerate(self.jobs):
            for callback in job.callbacks:
                callback.on_train_begin(
                    epochs=job.epochs, steps_per_epoch=self.steps_per_epoch[index][0],
                    start_epoch=0,
                )  # fmt: skip
        while True:
            self._fill()
            if not any(device.queue for device in self.devices if device.alive):
                break
            live = [d for d in self.devices if d.alive and d.queue]
            ready = wait([d.conn for d in live] + [d.process.sentinel for d in live])
            for device in live:
                if device.conn in ready:
                    try:
                        message = device.conn.recv()
                    except (EOFError, OSError):
                        self._lost(device)
                        continue
                    self._handle(device, message)
                elif device.process.sentinel in ready and not device.conn.poll():
                    self._lost(device)
            if self.progress is not None:
                self.progress(sum(self.done_units), total)
        for index, job in enumerate(self.jobs):
            if self.names[index] in self.failures:
                continue
            if self.done_units[index] < self.total_units[index]:
                self.failures[self.names[index]] = "no device was left to train it"
                continue
            for callback in job.callbacks:
                callback.on_train_end(self.history[index])

    def _lost(self, device: _Device) -> None:
        device.alive = False
        code = device.process.exitcode
        for unit in device.queue:
            self._fail(unit.job, f"device {device.index} ({device.name}) exited with code {code} "
                                 f"while training it")  # fmt: skip
        device.queue.clear()

    def _fail(self, job: int, text: str) -> None:
        self.failures.setdefault(self.names[job], text)
        self.holder[job] = None

    def _handle(self, device: _Device, message: tuple[Any, ...]) -> None:
        kind = message[0]
        unit = device.queue.popleft()
        if kind == "failed":
            _, job, seq, text = message
            assert (job, seq) == (unit.job, unit.seq), "device reports out of order"
            self._fail(job, text)
            # The device drops the job's units queued behind this one, unanswered.
            device.queue = deque(u for u in device.queue if u.job != job)
            return
        _, job, seq, start, end, compute, waited, loss = message
        assert (job, seq) == (unit.job, unit.seq), "device reports out of order"
        self.timeline.append(
            UnitRecord(device.index, job, seq, unit.kind, unit.shard, start, end, compute, waited)
        )
        position = seq % len(self.chains[job])
        self.measured[job][position] = compute
        self.scale.append(compute / self.prior[job][position])
        self.done_units[job] += 1
        if not any(u.job == job for u in device.queue):
            self.holder[job] = None
        if unit.kind == "L":
            self._record_loss(job, unit, loss)
        if position == len(self.chains[job]) - 1:
            self._step_done(job, unit)

    def _record_loss(self, job: int, unit: Unit, loss: tuple[float, float, int]) -> None:
        if self.meters[job] is None:
            self.meters[job] = EpochMeter(unit.epoch)
        value, weight, count = loss
        meter = self.meters[job]
        assert meter is not None
        meter.total += value * weight
        meter.weight += weight
        meter.examples += count
        self.last_loss[job] = value

    def _step_done(self, job: int, unit: Unit) -> None:
        meter = self.meters[job]
        assert meter is not None
        for callback in self.jobs[job].callbacks:
            callback.on_step_end(epoch=unit.epoch, step=unit.step, loss=self.last_loss[job])
        if unit.step == self.steps_per_epoch[job][unit.epoch] - 1:
            record = meter.record()
            self.history[job].append(record)
            self.meters[job] = None
            for callback in self.jobs[job].callbacks:
                callback.on_epoch_end(record)
