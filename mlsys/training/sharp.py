"""SHARP: many models trained at once on several devices, one shard of one model per device
at a time (Hydra's shard alternator parallelism: Nagrecha and Kumar 2021,
https://arxiv.org/abs/2110.08633).

Spilling (:mod:`mlsys.training.spill`) lets any model train on one device one shard at a
time. Then task parallelism is easy: a grid of models, whatever their sizes, keeps every
device busy, because a model needs only one device at a time. ``train_many`` cuts each
model into shards that fit the device budget (the planning of :class:`~mlsys.training.Spill`),
turns each model's training into a chain of shard *units*, and schedules units onto devices:

- a model's training step over S shards is the chain ``F0 .. F(S-2), L(S-1), B(S-2) .. B0``:
  forward of each shard without autograd (its input saved with the RNG state), the last
  shard's forward, loss, backward and optimizer step, then each earlier shard's recomputed
  forward, backward and optimizer step (the same unit order as :class:`Spill`);
- a free device takes the idle model with the most remaining work (longest remaining time
  first, from measured unit times); a model keeps its device while no idle model has more
  than 2% of its work (and one step) more left, which spares moving shards every unit;
- each device is handed units ahead; the next unit's shard is read by a background I/O
  thread while the current one computes (double buffering: two shards in memory at once,
  so shards are planned for half the budget, as Spill does with prefetch); the same thread
  writes the optimizer state a shard's first step created, behind that step.

On CPU, devices are worker processes with ``threads`` threads each (one by default). A
model's state between units lives in files (the offload tier: shared memory by default,
or a folder on disk): each shard's weights and its optimizer state as raw tensors, mapped
shared by the device that runs the shard, so that on a CPU device the layers and the
optimizer compute on the file's pages in place and moving a shard copies nothing (a CUDA
device copies in and back). A device keeps the mappings of the files it has used until
their model is done, so a shard it runs again needs no new page faults. Units of one model
never run at once, and a model moves to another device only when its last unit is done and
its files synced, so the next device finds them complete. The saved shard inputs and the
chain's carry (the activation or gradient passed on, and the model's RNG state) go through
small files that appear by atomic rename; a unit whose successor runs on the same device
hands them over in memory, and with ``offload="host"`` a device keeps the inputs it saved
in memory while the model stays with it, writing them out only when the model may move.

Every model trains exactly as it would alone: same batches, same dropout masks (the RNG
state travels with the model), per-shard optimizers as in Spill. The parameters and the
loss trajectory equal ``fit(..., strategy="plain")``'s; a test checks it.

A job that fails (an exception in any of its units) stops; the others finish, and
``ManyResult.failures`` holds its traceback. A file write that fails (a full offload
folder) leaves a marker beside the file, so that the device waiting for it fails the job at
once with the writer's error.

Where the pieces are: the scheduler, the job and unit types and the schedule analysis are
in :mod:`mlsys.training.sharp_schedule`; the planner and the shard files' layout and
mappings in :mod:`mlsys.training.shards`. This module keeps the entry point, the set-up of
the shard files, the file hand-over between devices and the device worker. It runs past
600 lines because the worker (about half of it) is one class whose parts share one state
(the held shard, the carry, the reads ahead and the queued writes) and one ordering
argument (a unit's files are complete before it is reported done); split, that argument
would span modules.

Why one module: the set-up in the main process and the worker processes exchange the files
this module names (weights, optimizer state, saved inputs, carries); both sides stay here so
that this file protocol is in one place. The schedule is in
:mod:`mlsys.training.sharp_schedule`, shard planning and storage in
:mod:`mlsys.training.shards`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import pickle
import shutil
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from mlsys.atomic import atomic_write
from mlsys.training.balance import stage_bounds
from mlsys.training.fit import FitResult, collate, epoch_batches, weighted_mean
from mlsys.training.shards.planner import layer_footprints, pack
from mlsys.training.shards.store import (
    Mappings,
    Slot,
    check_folder,
    create,
    file_layout,
    map_file,
    slot_views,
)
from mlsys.training.sharp_schedule import (
    Job,
    ManyResult,
    Scheduler,
    Unit,
    UnitRecord,
    lower_bound,
    plot_gantt,
    simulate_lrtf,
    unit_chain,
)

__all__ = [
    "Job",
    "ManyResult",
    "UnitRecord",
    "lower_bound",
    "plot_gantt",
    "simulate_lrtf",
    "train_many",
    "unit_chain",
]

# How long a device waits for a file another device is still writing before giving up.
READ_TIMEOUT_S = 600.0


# --- the public entry point ---------------------------------------------------------------


def train_many(
    jobs: Sequence[Job],
    *,
    devices: int | Sequence[str] = 2,
    budget_bytes: int | None = None,
    threads: int = 1,
    offload: Literal["host", "disk"] = "host",
    folder: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ManyResult:
    """Train every job, sharing ``devices`` between them shard by shard (SHARP).

        result = train_many([Job(model_a, data, adam, loss, epochs=3, name="a"), ...],
                            devices=2, budget_bytes=64 * 2**20)
        result.results[0].model, result.results[0].history

    Args:
        jobs: the models and how to train each (see :class:`Job`); names must be unique
            (empty names become ``job-<index>``).
        devices: how many CPU worker processes, or device names: ``["cpu", "cpu"]``,
            ``["cuda:0", "cuda:1"]``. Each device runs one unit at a time.
        budget_bytes: memory a device may hold for shards; each model is cut into shards of
            at most half of it (two shards are held at once: the running one and the one
            being read). None: every model is one shard (task parallelism over whole models).
        threads: torch threads per CPU worker process.
        offload: where shard state lives between units: ``"host"``, shared memory
            (``/dev/shm``; the temporary folder where there is none), or ``"disk"``, files in
            ``folder``. Pages of host files are never written back to a disk, which makes
            units on CPU devices about 10 % faster. With ``"host"`` a device also keeps the
            shard inputs saved for backward units in its memory while their model stays
            with it; with ``"disk"`` they go to files as soon as they are made.
        folder: ``offload="disk"``: where the files go (a private subfolder, removed at the
            end); None: the system's temporary folder.
        progress: called as ``progress(units_done, units_total)`` as units finish.

    Returns:
        A :class:`ManyResult`; the trained models are on the CPU.

    Raises:
        TypeError / ValueError naming the bad job or value before any work starts; a job that
        fails while training is reported in ``failures`` instead, and the others finish.
    """
    if not jobs:
        raise ValueError("train_many needs at least one job")
    device_names = _device_names(devices)
    _check_positive("threads", threads)
    if budget_bytes is not None:
        _check_positive("budget_bytes", budget_bytes)
    names = _job_names(jobs)
    plans = [_plan(job, name, budget_bytes) for job, name in zip(jobs, names, strict=True)]
    specs = _specs(jobs, names, plans)
    base = _offload_folder(offload, folder)
    work = Path(tempfile.mkdtemp(prefix="mlsys-sharp-", dir=base))
    started = time.perf_counter()
    try:
        for index, (job, bounds) in enumerate(zip(jobs, plans, strict=True)):
            specs[index].layouts = _write_initial_state(work, index, job.model, bounds)
        scheduler = Scheduler(
            jobs, names, plans, device_names, work, threads, progress,
            keep_inputs=offload == "host", worker=_worker_main,
        )  # fmt: skip
        try:
            scheduler.start(pickle.dumps(specs, protocol=pickle.HIGHEST_PROTOCOL))
            setup = time.perf_counter() - started
            scheduler.run()
        finally:
            scheduler.stop()
        results: list[FitResult | None] = []
        for index, job in enumerate(jobs):
            if names[index] in scheduler.failures:
                results.append(None)
                continue
            _load_final_state(work, index, job.model, specs[index].layouts)
            results.append(FitResult(model=job.model.cpu(), history=scheduler.history[index]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timeline = sorted(scheduler.timeline, key=lambda r: r.start)
    makespan = (max(r.end for r in timeline) - min(r.start for r in timeline)) if timeline else 0.0
    return ManyResult(
        results=results,
        failures=dict(scheduler.failures),
        timeline=timeline,
        shards=[list(b) for b in plans],
        devices=device_names,
        makespan=makespan,
        setup_seconds=setup,
    )


# --- planning and set-up (main process) --------------------------------------------------


def _device_names(devices: int | Sequence[str]) -> list[str]:
    if isinstance(devices, bool):
        raise ValueError(f"devices must be a count or a list of device names, got {devices!r}")
    if isinstance(devices, int):
        _check_positive("devices", devices)
        return ["cpu"] * devices
    names = list(devices)
    if not names:
        raise ValueError("devices is empty: give a count of CPU workers or device names")
    for name in names:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"devices: {name!r} is not a device name") from exc
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            raise ValueError(f"devices: {name!r} but no such CUDA device is visible here")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f'devices: {name!r}: only "cpu" and "cuda" devices are supported')
    return names


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _job_names(jobs: Sequence[Job]) -> list[str]:
    names = [job.name or f"job-{index}" for index, job in enumerate(jobs)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"job names must be unique: {name!r} appears twice")
        seen.add(name)
    return names


def _plan(job: Job, name: str, budget: int | None) -> list[tuple[int, int]]:
    """Check a job and cut its model into shards: ``[(start, stop), ...]`` layer ranges."""
    if not isinstance(job, Job):
        raise TypeError(f"jobs must be Job objects, got {type(job).__name__}")
    if not isinstance(job.model, nn.Sequential):
        raise TypeError(
            f"job {name}: model must be an nn.Sequential (SHARP cuts it into shards between "
            f"layers), got {type(job.model).__name__}"
        )
    if len(job.model) == 0:
        raise ValueError(f"job {name}: model is an empty nn.Sequential")
    for field_name in ("epochs", "batch_size"):
        value = getattr(job, field_name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"job {name}: {field_name} must be a positive integer, got {value!r}")
    try:
        n_items = len(job.data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"job {name}: data must be a map-style Dataset with __len__, got "
            f"{type(job.data).__name__}"
        ) from None
    if n_items == 0:
        raise ValueError(f"job {name}: data is empty: nothing to train on")
    if job.drop_last and job.batch_size > n_items:
        raise ValueError(
            f"job {name}: batch_size {job.batch_size} is larger than the {n_items} examples "
            f"and drop_last is set: no batch would remain"
        )
    if budget is None:
        return [(0, len(job.model))]
    sample, _, _ = collate(job.data, torch.arange(1))
    footprints = layer_footprints(
        job.model, sample, job.optimizer, batch_size=min(job.batch_size, n_items)
    )
    try:
        counts = pack(footprints, budget, prefetch=True)
    except ValueError as exc:
        raise ValueError(f"job {name}: {exc}") from None
    return stage_bounds(counts)


@dataclass
class _JobSpec:
    """What a worker process needs of a job: the job itself with its model's layers on the
    meta device (their weights come from the shard files) and no callbacks (they run in the
    calling process), its shards, and each shard file's layout."""

    job: Job
    bounds: list[tuple[int, int]]
    layouts: list[tuple[list[Slot], int]] = field(default_factory=list)  # per shard file


def _specs(
    jobs: Sequence[Job], names: list[str], plans: list[list[tuple[int, int]]]
) -> list[_JobSpec]:
    """Every job's spec, checked to pickle (they go to the workers in one message, so a
    dataset shared by several jobs is sent once)."""
    specs = []
    for job, name, bounds in zip(jobs, names, plans, strict=True):
        skeleton = copy.deepcopy(job.model).to("meta")
        spec = _JobSpec(dataclasses.replace(job, model=skeleton, name=name, callbacks=()), bounds)
        try:
            pickle.dumps(spec)
        except Exception as exc:  # any pickling failure: the user's value
            raise TypeError(
                f"job {name} can't be sent to the worker processes: {exc} (use picklable "
                f"values: functools.partial(torch.optim.Adam, lr=...), loss modules, "
                f"datasets of tensors; not lambdas or local functions)"
            ) from None
        specs.append(spec)
    return specs


SHARED_MEMORY = Path("/dev/shm")


def _offload_folder(offload: str, folder: str | Path | None) -> Path:
    if offload not in ("host", "disk"):
        raise ValueError(f'offload must be "host" or "disk", got {offload!r}')
    if offload == "host":
        if folder is not None:
            raise ValueError(
                f"folder={str(folder)!r} is for offload='disk'; offload='host' uses shared memory"
            )
        if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
            return SHARED_MEMORY
        return Path(tempfile.gettempdir())
    base = Path(folder).expanduser() if folder is not None else Path(tempfile.gettempdir())
    check_folder(base, "SHARP")
    return base


def _job_dir(work: Path, job: int) -> Path:
    return work / f"job-{job:04d}"


def _weights_path(work: Path, job: int, shard: int) -> Path:
    return _job_dir(work, job) / f"weights-{shard:02d}.bin"


def _optimizer_path(work: Path, job: int, shard: int) -> Path:
    return _job_dir(work, job) / f"optimizer-{shard:02d}.bin"


def _optimizer_meta_path(work: Path, job: int, shard: int) -> Path:
    return _job_dir(work, job) / f"optimizer-{shard:02d}.meta.pt"


# Shard state lives in files of raw tensors, mapped (MAP_SHARED) by the device that runs the
# shard: on a CPU device the layers and the optimizer compute on the mapped pages in place,
# so moving a shard between the tier and a device copies nothing; the page cache (or the
# disk behind it) holds what isn't mapped. A CUDA device copies the mapped tensors in and
# back. The files' layout and mappings are the shard store's (mlsys.training.shards.store).


def _optimizer_tensors(state: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """The tensors of an optimizer's ``state_dict()["state"]``, keyed ``<param>.<name>``."""
    return [
        (f"{pid}.{name}", value)
        for pid, entry in state["state"].items()
        for name, value in entry.items()
        if isinstance(value, torch.Tensor)
    ]


@dataclass
class _Mapped:
    """A shard's files mapped by a device: views of its weights, and of its optimizer
    state when the unit steps and one exists (with the state dict around it)."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    optimizer_slots: list[Slot] | None
    optimizer_views: dict[str, torch.Tensor] | None
    optimizer_skeleton: dict[str, Any] | None = None


def _map_shard(
    work: Path, job: int, shard: int, slots: list[Slot], nbytes: int, *, optimizer: bool,
    stepped: bool, mapper: Callable[[Path, int], torch.Tensor],
) -> _Mapped:  # fmt: skip
    """Map a shard's files with ``mapper`` (pages faulted in) and view them (forward units
    need only the weights; no optimizer state exists before the shard's first step)."""
    buffer = mapper(_weights_path(work, job, shard), nbytes)
    mapped = _Mapped(slot_views(buffer, slots), None, None, None)
    if optimizer and stepped:
        meta = _load(_optimizer_meta_path(work, job, shard))
        opt_slots = [Slot.from_record(fields) for fields in meta["slots"]]
        opt_buffer = mapper(_optimizer_path(work, job, shard), meta["nbytes"])
        views = slot_views(opt_buffer, opt_slots)
        state = copy.deepcopy(meta["skeleton"])
        mapped.optimizer_skeleton = meta["skeleton"]
        for pid, entry in state["state"].items():
            for name in entry:
                key = f"{pid}.{name}"
                if key in views:
                    entry[name] = views[key]
        mapped.optimizer, mapped.optimizer_slots, mapped.optimizer_views = state, opt_slots, views
    return mapped


def _saved_path(work: Path, job: int, version: int, shard: int) -> Path:
    return _job_dir(work, job) / f"input-{version:06d}-{shard:02d}.pt"


def _carry_path(work: Path, job: int, seq: int) -> Path:
    return _job_dir(work, job) / f"carry-{seq:09d}.pt"


def _shard_tensors(model: nn.Sequential, bounds: tuple[int, int]) -> list[tuple[str, torch.Tensor]]:
    start, stop = bounds
    return list(model[start:stop].state_dict().items())


def _write_initial_state(
    work: Path, job: int, model: nn.Sequential, bounds: list[tuple[int, int]]
) -> list[tuple[list[Slot], int]]:
    """Each shard's weights to its file; returns each file's slots and size."""
    _job_dir(work, job).mkdir(parents=True)
    layouts = []
    for shard, span in enumerate(bounds):
        tensors = _shard_tensors(model, span)
        slots = create(_weights_path(work, job, shard), tensors)
        layouts.append((slots, file_layout(tensors)[1]))
    return layouts


def _load_final_state(
    work: Path, job: int, model: nn.Sequential, layouts: list[tuple[list[Slot], int]]
) -> None:
    state: dict[str, torch.Tensor] = {}
    for shard, (slots, nbytes) in enumerate(layouts):
        state.update(slot_views(map_file(_weights_path(work, job, shard), nbytes), slots))
    model.load_state_dict(state)


def _save(path: Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically: readers see the whole file or none; if the write
    fails, a marker tells them it never will."""
    try:
        with atomic_write(path) as file:
            torch.save(obj, file)
    except Exception as exc:
        _mark_failed(path, exc)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"writing {path} failed: {exc.strerror or exc}") from exc
        raise


def _failed_path(path: Path) -> Path:
    return path.with_name(path.name + ".failed")


def _mark_failed(path: Path, error: BaseException) -> None:
    """Leave a marker beside ``path`` saying why it will not appear, so that a device waiting
    for it (another device, whose unit comes next) fails at once instead of at the timeout.
    Best effort: an empty marker where even the message can't be written (creating it needs
    no data block, so it works on a full file system)."""
    marker = _failed_path(path)
    with contextlib.suppress(OSError):
        marker.touch()
        marker.write_text(f"{type(error).__name__}: {error}")


def _load(path: Path, *, timeout: float = READ_TIMEOUT_S) -> Any:
    """Read ``path``, waiting up to ``timeout`` seconds for another device to write it;
    raises at once when the writer left a marker saying it failed."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not path.exists():
        marker = _failed_path(path)
        if marker.exists():
            reason = ""
            with contextlib.suppress(OSError):
                reason = marker.read_text()
            raise OSError(
                f"{path} will not appear: the device writing it failed "
                f"({reason or 'no reason recorded'})"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{path} did not appear within {timeout:.0f} s (the device writing it stopped?)"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return torch.load(path, map_location="cpu", weights_only=True)


# --- the worker (one process per device) ----------------------------------------------------


@dataclass
class _Resident:
    """A shard held by this device: its layers and optimizer after ``version`` steps, the
    mapping of its files, and whether the files need syncing (after a step: the optimizer
    state's layout, non-tensor state, and on CUDA the tensors themselves)."""

    job: int
    shard: int
    version: int
    layers: nn.Sequential
    optimizer: torch.optim.Optimizer | None
    mapped: _Mapped
    dirty: bool


class _Worker:
    def __init__(
        self, conn: Connection, index: int, device: str, work: Path, *, keep_inputs: bool
    ) -> None:
        self.conn = conn
        # Saved shard inputs stay in this process while the model stays on this device (its
        # backward units come here), and go to files when it may move; offload="disk" keeps
        # every boundary activation on disk instead, as Spill does.
        self.keep_inputs = keep_inputs
        self.inputs: dict[tuple[int, int, int], dict[str, Any]] = {}  # (job, version, shard)
        self.index = index
        self.device = torch.device(device)
        self.work = work
        self.specs: list[_JobSpec] = []
        self.pending: deque[Unit] = deque()
        self.failed: set[int] = set()
        self.stopping = False
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sharp-io")
        self.reads: dict[tuple[int, int], Future[_Mapped]] = {}
        self.saved_reads: dict[tuple[int, int], Future[Any]] = {}
        self.resident: _Resident | None = None
        self.carry: tuple[int, int, dict[str, Any]] | None = None  # (job, seq it feeds, carry)
        self.writes: list[tuple[int, Future[None]]] = []  # (job, write) not yet checked
        self.batches: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.mappings = Mappings()  # used on the I/O thread only

    # -- messages

    def receive(self, block: bool) -> None:
        if block:
            self._take(self.conn.recv())
        while self.conn.poll():
            self._take(self.conn.recv())

    def _take(self, message: tuple[Any, ...]) -> None:
        if message[0] == "unit":
            unit = message[1]
            if unit.job not in self.failed:
                self.pending.append(unit)
        elif message[0] == "stop":
            self.stopping = True

    def loop(self) -> None:
        while True:
            self.receive(block=not self.pending and not self.stopping)
            if not self.pending:
                if self.stopping:
                    break
                continue
            unit = self.pending.popleft()
            if self.resident is not None and not self._held(unit):
                self._evict()
            self._prefetch(unit)
            started = time.perf_counter()
            try:
                compute, waited, loss = self.run(unit)
            except Exception:  # reported to the scheduler with its traceback
                self._drop(unit.job)
                self.conn.send(("failed", unit.job, unit.seq, traceback.format_exc()))
                continue
            self.conn.send(
                ("done", unit.job, unit.seq, started, time.perf_counter(), compute, waited, loss)
            )
            if unit.final:
                self.io.submit(self.mappings.forget, _job_dir(self.work, unit.job))
        self.io.shutdown(wait=True)

    def _drop(self, job: int) -> None:
        self.failed.add(job)
        self.pending = deque(u for u in self.pending if u.job != job)
        if self.resident is not None and self.resident.job == job:
            self.resident = None
        if self.carry is not None and self.carry[0] == job:
            self.carry = None
        for reads in (self.reads, self.saved_reads):
            for key in [k for k in reads if k[0] == job]:
                del reads[key]
        for held in [k for k in self.inputs if k[0] == job]:
            del self.inputs[held]
        self.io.submit(self.mappings.forget, _job_dir(self.work, job))

    # -- reads ahead (double buffering)

    def _prefetch(self, running: Unit) -> None:
        """Start reading what the unit after ``running`` needs: its shard, unless it is the
        same shard (then it stays in memory), and for a backward unit its saved input."""
        if not self.pending:
            return
        nxt = self.pending[0]
        key = (nxt.job, nxt.seq)
        held = (nxt.job, nxt.version, nxt.shard) in self.inputs
        if nxt.kind == "B" and key not in self.saved_reads and not held:
            path = _saved_path(self.work, nxt.job, nxt.version, nxt.shard)
            self.saved_reads[key] = self.io.submit(_load, path)
        if key in self.reads or (nxt.job, nxt.shard) == (running.job, running.shard):
            return
        self.reads[key] = self.io.submit(self._map_shard, nxt)

    def _map_shard(self, unit: Unit) -> _Mapped:
        slots, nbytes = self.specs[unit.job].layouts[unit.shard]
        return _map_shard(self.work, unit.job, unit.shard, slots, nbytes,
                          optimizer=unit.updates, stepped=unit.version > 0,
                          mapper=self.mappings.get)  # fmt: skip

    def _held(self, unit: Unit) -> bool:
        r = self.resident
        return r is not None and (r.job, r.shard, r.version) == (
            unit.job,
            unit.shard,
            unit.version,
        )

    # -- one unit

    def run(self, unit: Unit) -> tuple[float, float, tuple[float, float, int] | None]:
        self._raise_failed_write(unit.job)
        spec = self.specs[unit.job]
        waited = 0.0
        t0 = time.perf_counter()
        carry = self._take_carry(unit)
        layers, optimizer, mapped, dirty = self._acquire(unit)
        waited += time.perf_counter() - t0
        n_shards = len(spec.bounds)
        loss_report: tuple[float, float, int] | None = None
        compute_started = time.perf_counter()
        if unit.kind == "F":
            _set_rng(carry["rng"], self.device)
            x = self._batch(unit)[0] if unit.shard == 0 else carry["x"]
            x = x.to(self.device)
            # Copied before the forward: a first layer may work on its input in place.
            kept = x.detach().cpu()
            kept = kept.clone() if kept.data_ptr() == x.data_ptr() else kept
            with torch.no_grad():
                y = layers(x)
            # The input and RNG state replay this forward in the backward unit; the buffers
            # it updated (batch norm's running statistics) are restored after that replay.
            saved = {
                "x": kept,
                "rng": carry["rng"],
                "buffers": [b.detach().cpu().clone() for b in layers.buffers()],
            }
            if self.keep_inputs:
                self.inputs[(unit.job, unit.version, unit.shard)] = saved
            else:
                self._write(
                    unit.job, _saved_path(self.work, unit.job, unit.version, unit.shard), saved
                )
            out = {"x": y, "rng": _get_rng(self.device)}
        elif unit.kind == "L":
            _set_rng(carry["rng"], self.device)
            x, targets, weights = self._batch(unit)
            if n_shards > 1:
                x = carry["x"]
            x = x.to(self.device).detach().requires_grad_(n_shards > 1)
            assert optimizer is not None
            optimizer.zero_grad(set_to_none=True)
            # A clone, so that a first layer working in place doesn't write into a leaf.
            prediction = layers(x.clone() if x.requires_grad else x)
            loss = weighted_mean(
                spec.job.loss(prediction, targets.to(self.device)), weights.to(self.device)
            )
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"loss is {value} at epoch {unit.epoch}, step {unit.step}; lower the "
                    f"learning rate or check the inputs"
                )
            rng_after = _get_rng(self.device)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            out = {"grad": x.grad if n_shards > 1 else None, "rng": rng_after}
            loss_report = (value, float(weights.sum()), int(weights.numel()))
        else:
            t1 = time.perf_counter()
            path = _saved_path(self.work, unit.job, unit.version, unit.shard)
            held = self.inputs.pop((unit.job, unit.version, unit.shard), None)
            if held is not None:
                saved = held
            else:
                future = self.saved_reads.pop((unit.job, unit.seq), None)
                saved = future.result() if future is not None else self._read(path)
                path.unlink(missing_ok=True)
            waited += time.perf_counter() - t1
            _set_rng(saved["rng"], self.device)
            x = saved["x"].to(self.device).requires_grad_(unit.shard > 0)
            assert optimizer is not None
            optimizer.zero_grad(set_to_none=True)
            layers(x.clone() if x.requires_grad else x).backward(carry["grad"].to(self.device))
            # The forward unit updated the running statistics (batch norm) once; the
            # recomputation counted the batch again, and the shard may have been read before
            # the forward unit's update: its buffers are what that unit left.
            with torch.no_grad():
                for buffer, after in zip(layers.buffers(), saved["buffers"], strict=True):
                    buffer.copy_(after)
            optimizer.step()
            out = {"grad": x.grad if unit.shard > 0 else None, "rng": carry["rng"]}
        compute = time.perf_counter() - compute_started
        self._release(unit, layers, optimizer, mapped, dirty=dirty or unit.updates)
        self._pass_on(unit, out)
        return compute, waited, loss_report

    def _batch(self, unit: Unit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        spec = self.specs[unit.job]
        key = (unit.job, unit.epoch)
        if key not in self.batches:
            for old in [k for k in self.batches if k[0] == unit.job]:
                del self.batches[old]
            self.batches[key] = epoch_batches(
                len(spec.job.data),  # type: ignore[arg-type]
                spec.job.batch_size,
                epoch=unit.epoch,
                seed=spec.job.seed,
                shuffle=spec.job.shuffle,
                drop_last=spec.job.drop_last,
            )
        return collate(spec.job.data, self.batches[key][unit.step])

    def _take_carry(self, unit: Unit) -> dict[str, Any]:
        if unit.seq == 0:
            torch.manual_seed(self.specs[unit.job].job.seed)
            return {"rng": _get_rng(self.device)}
        if self.carry is not None and self.carry[:2] == (unit.job, unit.seq):
            carry = self.carry[2]
            self.carry = None
            return carry
        path = _carry_path(self.work, unit.job, unit.seq)
        carry = self._read(path)
        path.unlink(missing_ok=True)
        return carry  # type: ignore[no-any-return]

    def _read(self, path: Path) -> Any:
        """Read a file on the I/O thread, behind this device's own queued writes (so a file it
        is still writing is read whole); another device's files are waited for."""
        return self.io.submit(_load, path).result()

    def _acquire(
        self, unit: Unit
    ) -> tuple[nn.Sequential, torch.optim.Optimizer | None, _Mapped, bool]:
        """The unit's shard (held, or mapped from the tier), its optimizer when the unit
        steps, the mapping, and whether the files lag behind it."""
        spec = self.specs[unit.job]
        if self._held(unit):
            r = self.resident
            assert r is not None
            self.resident = None
            if unit.updates and r.optimizer is None:
                r.optimizer = self._optimizer(spec, r.layers, r.mapped)
            return r.layers, r.optimizer, r.mapped, r.dirty
        if self.resident is not None:
            self._evict()
        future = self.reads.pop((unit.job, unit.seq), None)
        mapped = future.result() if future is not None else self.io.submit(
            self._map_shard, unit
        ).result()  # fmt: skip
        start, stop = spec.bounds[unit.shard]
        layers = cast(nn.Sequential, copy.deepcopy(spec.job.model[start:stop]))
        weights = mapped.weights
        if self.device.type != "cpu":
            weights = {k: v.to(self.device) for k, v in weights.items()}
        layers.load_state_dict(weights, assign=True)
        layers.train()
        optimizer = self._optimizer(spec, layers, mapped) if unit.updates else None
        return layers, optimizer, mapped, False

    def _optimizer(
        self, spec: _JobSpec, layers: nn.Sequential, mapped: _Mapped
    ) -> torch.optim.Optimizer:
        """The shard's optimizer, its state the mapped one when there is one (on a CPU
        device it then steps in the file's pages)."""
        optimizer = spec.job.optimizer(layers.parameters())
        if mapped.optimizer is not None:
            optimizer.load_state_dict(mapped.optimizer)
        return optimizer

    def _release(
        self,
        unit: Unit,
        layers: nn.Sequential,
        optimizer: torch.optim.Optimizer | None,
        mapped: _Mapped,
        *,
        dirty: bool,
    ) -> None:
        """Keep the shard if this device runs it next; otherwise, or after the job's final
        step, sync its files and let it go (before the unit is reported done, so that the
        device that takes the model next finds them complete)."""
        version = unit.version + 1 if unit.updates else unit.version
        self.resident = _Resident(unit.job, unit.shard, version, layers, optimizer, mapped, dirty)
        self.receive(block=False)
        final = unit.last_step and unit.updates
        if final or not (self.pending and self._held(self.pending[0])):
            # After the job's final step its files are read as soon as the workers stop:
            # written here, so that a failure fails the job.
            self._evict(defer=not final)

    def _evict(self, *, defer: bool = False) -> None:
        """Let the held shard go, first making its files hold its state: tensors that are
        not the mapped ones (all of them on CUDA) are copied in; the optimizer's state gets
        a file of its own at its first step (or when its tensors change shape), and its
        non-tensor parts a small metadata file."""
        r = self.resident
        self.resident = None
        if r is None or not r.dirty:
            return
        for key, tensor in r.layers.state_dict().items():
            view = r.mapped.weights[key]
            if tensor.data_ptr() != view.data_ptr():
                view.copy_(tensor.detach())
        if r.optimizer is None:
            return
        state = r.optimizer.state_dict()
        tensors = _optimizer_tensors(state)
        layout = [(k, tuple(t.shape), t.dtype) for k, t in tensors]
        slots = r.mapped.optimizer_slots
        views = r.mapped.optimizer_views
        path = _optimizer_path(self.work, r.job, r.shard)
        relaid = (
            slots is None or views is None or layout != [(s.key, s.shape, s.dtype) for s in slots]
        )
        meta_path = _optimizer_meta_path(self.work, r.job, r.shard)
        if views is None and defer and self.device.type == "cpu":
            # The shard's first step: its optimizer just created the state. The I/O thread
            # writes it while the next unit computes (the tensors are the optimizer's own,
            # which nothing touches again); the metadata file comes last, and a device that
            # takes the shard next waits for it (this one reads behind its own writes).
            meta = _state_meta(tensors, _skeleton(state))
            self.writes.append(
                (r.job, self.io.submit(_create_state, path, tensors, meta_path, meta))
            )
            return
        if relaid or views is None:
            create(path, tensors)
        else:
            for key, tensor in tensors:
                if tensor.data_ptr() != views[key].data_ptr():
                    views[key].copy_(tensor.detach())
        skeleton = _skeleton(state)
        if not relaid and _same(skeleton, r.mapped.optimizer_skeleton):
            return  # Adam, SGD...: all that changes is in the tensors, already in the file
        _save(meta_path, _state_meta(tensors, skeleton))

    def _pass_on(self, unit: Unit, out: dict[str, Any]) -> None:
        """Hand the carry to the job's next unit: in memory when it runs here next, else
        through a file; then the job may move to another device, so the shard inputs it
        saved here go to files too."""
        if unit.final:
            return
        self.receive(block=False)
        nxt = self.pending[0] if self.pending else None
        if nxt is not None and (nxt.job, nxt.seq) == (unit.job, unit.seq + 1):
            self.carry = (unit.job, unit.seq + 1, out)
            return
        for key in [k for k in self.inputs if k[0] == unit.job]:
            job, version, shard = key
            self._write(job, _saved_path(self.work, job, version, shard), self.inputs.pop(key))
        data = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
        self._write(unit.job, _carry_path(self.work, unit.job, unit.seq + 1), data)

    def _write(self, job: int, path: Path, obj: Any) -> None:
        """Queue a write of ``job``'s on the I/O thread (behind earlier writes, before later
        reads); a failure surfaces at the job's next unit here, or through the marker it
        leaves at the device that reads the file."""
        self.writes.append((job, self.io.submit(_save, path, obj)))

    def _raise_failed_write(self, job: int) -> None:
        """Fail ``job``'s next unit here with the error of a write of it that failed (a full
        disk, say) instead of leaving a reader waiting for the file."""
        pending, failed = [], None
        for owner, future in self.writes:
            if not future.done() or (future.exception() is not None and owner != job):
                pending.append((owner, future))
            elif future.exception() is not None:
                failed = future.exception()
        self.writes = pending
        if failed is not None:
            raise failed


def _skeleton(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict without its tensors (None in their places)."""
    return {
        "state": {
            pid: {n: (None if isinstance(v, torch.Tensor) else v) for n, v in entry.items()}
            for pid, entry in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }


def _state_meta(
    tensors: Sequence[tuple[str, torch.Tensor]], skeleton: dict[str, Any]
) -> dict[str, Any]:
    """The metadata file of an optimizer state: where each tensor is in the state file (the
    layout ``_create`` gives them), the file's size, and the rest of the state dict."""
    slots, nbytes = file_layout(tensors)
    return {
        "slots": [s.record() for s in slots],
        "nbytes": nbytes,
        "skeleton": skeleton,
    }


def _create_state(
    path: Path, tensors: Sequence[tuple[str, torch.Tensor]], meta_path: Path, meta: Any
) -> None:
    """A shard's optimizer state file, then its metadata file: a reader waits for the
    metadata (``_load``), so it finds the state whole, or a marker when writing failed."""
    try:
        create(path, tensors)
    except Exception as exc:
        _mark_failed(meta_path, exc)
        raise
    _save(meta_path, meta)


def _same(a: Any, b: Any) -> bool:
    """Whether two state-dict skeletons are equal (tensors in them: never assumed so)."""
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):
        return False


def _get_rng(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _worker_main(
    conn: Connection, index: int, device: str, work: str, threads: int, keep_inputs: bool
) -> None:
    torch.set_num_threads(threads)
    worker = _Worker(conn, index, device, Path(work), keep_inputs=keep_inputs)
    try:
        worker.specs = pickle.loads(conn.recv_bytes())
        if worker.device.type == "cuda":
            torch.cuda.set_device(worker.device)
        _warm_up(worker.specs, worker.device)
    except Exception:  # reported to the scheduler
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready",))
    worker.loop()


def _warm_up(specs: Sequence[_JobSpec], device: torch.device) -> None:
    """Pay the one-time costs (an optimizer's first step imports a good part of torch, the
    first save and load set up serialization) at start-up, not in the first unit."""
    import io

    for spec in specs:
        param = torch.zeros(2, 2, device=device, requires_grad=True)
        try:
            optimizer = spec.job.optimizer([param])
            (param @ param).sum().backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        except Exception:  # a broken optimizer fails its own job's first unit, not start-up
            continue
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
