"""Spill: Hydra-style training of a model larger than device memory, one shard at a time.

Model-parallel training runs one partition at a time anyway (a mini-batch goes forward
through shard 0, then 1, ...; backward comes back in reverse), so nothing is lost by
keeping only the running shard on the device and spilling the others to a lower memory
tier, the way a database spills a join that doesn't fit in memory (Hydra: Nagrecha and
Kumar 2021, https://arxiv.org/abs/2110.08633). A model larger than the device trains on one
device, as long as its largest layer fits.

One training step over S shards (what :meth:`_Trainer.step` does):

- forward, shards 0..S-2 without autograd: each shard's input (its "boundary
  activation") is detached and saved to the tier, its output feeds the next shard;
- the last shard runs forward with autograd, the loss is taken, and its backward gives
  the gradient of its input;
- backward, shards S-2..0: each shard is loaded with its optimizer state, recomputes its
  forward from its saved input (same dropout masks: the RNG state of the first forward is
  replayed), takes the gradient of its output, and gives the gradient of its input to the
  shard before; each shard's optimizer steps right after its backward and the shard is
  written back. Shard 0 stays on the device for the next step's forward.

With ``prefetch`` a background I/O thread loads the next shard while the current one
computes and writes the previous one back; it runs its jobs one at a time, in the order
they are handed to it, so a shard is never read before its last write. One steady step over
S=3 shards, in order (``trace=`` records it; a test checks it against this table):

    main thread                             handed to the I/O thread
    ------------------------------------    -----------------------------
                                            load 1 weights
                                            write 0 input
    forward 0 (resident since last step)
                                            write 0 weights+state
                                            load 2 weights+state
                                            write 1 input
    forward 1
                                            load 1 weights+state+input
    forward, loss, backward 2; step 2
                                            write 2 weights+state
                                            load 0 weights+state+input
    recompute and backward 1; step 1
                                            write 1 weights+state
    recompute and backward 0; step 0        (0 stays for the next step)

Memory: each shard's footprint (parameters, gradients, optimizer state, the step's
scratch, activations; see :func:`shard_footprint`) is at most ``budget_bytes``. With
prefetch two shards are on the device at once (the running one and the one moving), so
shards are cut to half the budget (double buffering); a layer too big for half the budget
gets a shard of its own and the transfers next to it wait instead of overlapping.

With ``offload="disk"`` on a CPU device the budget bounds the process's resident memory.
A loaded shard is a shared mapping of its file, populated by the I/O thread: the optimizer
updates the file's pages in place, nothing is copied either way, and letting go of the
shard unmaps it (the page cache holds the files, outside the process). Two more things keep
freed memory from lingering: glibc is told to give back at once every block of 1 MiB or
more (gradients, optimizer scratch, activations), which it otherwise keeps in a heap that
fragments towards the size of the model (the price: fresh pages, a page fault each, for
those blocks at every shard, most of what Spill costs over plain training on CPU; a
fused optimizer, which allocates no scratch, and huge pages
(:data:`mlsys.memory.TORCH_HUGE_PAGES_ENV`) cut it); and the buffers Spill fills itself
(packed shard images, saved inputs on their way to disk) come from a pool that keeps freed
ones, by size, only within what the schedule leaves of the budget (filling memory already
there is ten times faster than fresh pages).

Optimizers are per shard: ``optimizer(shard_params)``; Adam, SGD and the other per-parameter
optimizers give exactly what one optimizer over the whole model gives. Global-norm gradient
clipping would need every shard's gradient before any shard steps (a second backward pass);
``fit`` offers no clipping, and Spill doesn't either.

The planner (layer footprints, where to cut) and the tiers the images live in are in
:mod:`mlsys.training.shards`. This module keeps the strategy, resuming from checkpoints and
the trainer.

Why one module: the trainer, about half of it, is one class whose loading, writing back
and stepping share one state (the shards' attached images, the I/O thread's queue, the
pool) and keep one order (the table above, which a test checks); split, that order would
span modules.
"""

from __future__ import annotations

import errno
import functools
import logging
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from mlsys.atomic import atomic_write
from mlsys.memory import fix_mmap_threshold, huge_pages_hint
from mlsys.training.fit import (
    EpochMeter,
    FitResult,
    FitSpec,
    OptimizerFactory,
    checkpoint_path,
    collate,
    latest_checkpoint,
    weighted_mean,
)
from mlsys.training.shards.planner import (
    LayerFootprint,
    ShardPlan,
    is_meta,
    layer_footprints,
    pack,
    shard_footprint,
    shard_resident,
)
from mlsys.training.shards.store import (
    EMPTY_LAYOUT,
    DiskTier,
    HostTier,
    Layout,
    Pool,
    SpillIOError,
    Tier,
    check_folder,
    io_error,
    is_packed,
    pack_into,
    plan_layout,
    release_pages,
    slot_view,
    tensor_nbytes,
)

__all__ = [
    "LayerFootprint",
    "ShardPlan",
    "Spill",
    "SpillIOError",
    "layer_footprints",
    "pack",
    "shard_footprint",
    "shard_resident",
]

Device = Literal["cpu", "cuda"]
Offload = Literal["host", "disk"]
Part = Literal["weights", "state"]
TraceEvent = tuple[str, int, str]
"""``(action, shard, what)``, e.g. ``("load", 2, "weights+state")``."""

_log = logging.getLogger(__name__)

_OFFLOADS = ("host", "disk")
_WEIGHTS: tuple[Part, ...] = ("weights",)
_ALL: tuple[Part, ...] = ("weights", "state")
_RELEASE_EVERY = 1 << 20  # drop mapped pages after checkpoint writes this large


@functools.cache
def _return_freed_memory() -> None:
    """Have glibc's malloc give every freed block of 1 MiB or more back to the system at
    once (:func:`mlsys.memory.fix_mmap_threshold`; process-wide). By default the threshold
    rises as large blocks are freed, after which blocks of a shard's size (gradients,
    optimizer scratch) come from the heap and stay with the process when freed: training
    shard after shard, it would grow towards the size of the whole model.

    Logs, once, how to have torch ask for huge pages where the kernel would give them
    (:func:`mlsys.memory.huge_pages_hint`): the fresh memory then costs far fewer faults."""
    fix_mmap_threshold(1 << 20)
    hint = huge_pages_hint()
    if hint is not None:
        _log.info("Spill(offload='disk'): %s", hint)


# --- the strategy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spill:
    """Train a model larger than the device one shard at a time, spilling the others
    (Hydra, Nagrecha and Kumar 2021).

        result = fit(model, data, strategy=Spill(256 * 2**20, offload="disk"),
                     optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                     loss=nn.CrossEntropyLoss(reduction="none"), batch_size=64)

    Shards are sized from the budget (see :func:`layer_footprints` and :func:`pack`;
    :meth:`plan` shows them); the parameters equal plain training's. A model too big to
    build in memory can be built on the meta device (``with torch.device("meta"): model =
    ...``): each shard is then materialised straight into the tier, its layers initialised
    by their ``reset_parameters()`` with torch's RNG seeded by ``init_seed``, which gives the
    weights that building the model on the CPU after ``torch.manual_seed(init_seed)`` gives.
    (A model built on the CPU works too, but building it took its full size in memory.)

    ``result.model`` is the trained model on the CPU; with ``offload="disk"`` its tensors are
    private mappings of the (already removed) shard files, so it costs memory only as it is
    read. If training fails, ``model``'s parameters are left empty: resume from a
    checkpoint. Checkpoints have the format of every strategy (one optimizer state per
    shard), are written without holding the model in memory, and resume under any budget.

    Args:
        budget_bytes: device memory the trainer may hold for shards (weights, gradients,
            optimizer state, activations); the Python/torch runtime comes on top.
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"``) where shards compute.
        offload: ``"host"`` (host memory; pinned for CUDA) or ``"disk"`` (files in
            ``folder``).
        prefetch: move shards on a background thread while the current one computes
            (shards are then cut to half the budget).
        folder: where ``offload="disk"`` puts its files (a private subfolder, removed at the
            end); an existing folder this process can write to; None: the system's
            temporary folder.
        init_seed: seeds the initialisation of layers given on the meta device.
        trace: a list that receives the main thread's actions and the I/O jobs it hands
            out, as ``(action, shard, what)`` (for tests and curiosity).
    """

    budget_bytes: int
    device: str = "cpu"
    offload: Offload = "host"
    prefetch: bool = True
    folder: Path | str | None = None
    init_seed: int = 0
    trace: list[TraceEvent] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        budget = self.budget_bytes
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget_bytes must be a positive integer, got {budget!r}")
        if self.offload not in _OFFLOADS:
            raise ValueError(f"offload must be one of {_OFFLOADS}, got {self.offload!r}")
        try:
            kind = torch.device(self.device).type
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f'device must be "cpu" or "cuda", got {self.device!r}') from exc
        if kind not in ("cpu", "cuda"):
            raise ValueError(f'device must be "cpu" or "cuda", got {self.device!r}')

    def check(self, model: nn.Sequential, spec: FitSpec, n_items: int) -> None:
        """Raise naming the bad value before any work starts: the model, the device, the
        folder (it must be writable)."""
        if not isinstance(model, nn.Sequential):
            raise TypeError(
                f"Spill cuts an nn.Sequential between layers, got {type(model).__name__}"
            )
        device = torch.device(self.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device={self.device!r} but CUDA is not available here")
            if (device.index or 0) >= torch.cuda.device_count():
                raise ValueError(
                    f"device={self.device!r} but only {torch.cuda.device_count()} CUDA "
                    f"devices are visible"
                )
        if self.offload == "disk":
            check_folder(self.folder_path, "Spill")

    @property
    def folder_path(self) -> Path:
        return (
            Path(self.folder).expanduser()
            if self.folder is not None
            else Path(tempfile.gettempdir())
        )

    def plan(
        self, model: nn.Sequential, sample: torch.Tensor, optimizer: OptimizerFactory,
        batch_size: int,
    ) -> ShardPlan:  # fmt: skip
        """The shards this strategy would train ``model`` in, for mini-batches of
        ``batch_size`` inputs shaped like ``sample[0]``."""
        footprints = layer_footprints(model, sample, optimizer, batch_size=batch_size)
        counts = pack(footprints, self.budget_bytes, prefetch=self.prefetch)
        return ShardPlan(tuple(footprints), tuple(counts), self.budget_bytes)

    def run(self, model: nn.Sequential, data: Dataset[Any], spec: FitSpec) -> FitResult:
        """Train shard by shard; ``model`` receives the trained weights."""
        n_items = len(data)  # type: ignore[arg-type]
        sample, _, _ = collate(data, torch.arange(1))
        resume = _find_resume(spec)
        plan = self.plan(model, sample, spec.optimizer, min(spec.batch_size, n_items))
        if resume is not None:
            plan = _resume_plan(plan, resume[1], resume[0])
        if self.offload == "disk":
            _check_space(self.folder_path, plan)
        trainer = _Trainer(self, model, plan, spec)
        try:
            trainer.setup(resume[1] if resume is not None else None)
            history = trainer.train(data, resume[1] if resume is not None else None)
            trainer.finish()
        finally:
            trainer.close()
        return FitResult(model=model, history=history)


def _check_space(folder: Path, plan: ShardPlan) -> None:
    needed = sum(
        layer.params + layer.buffers + layer.optimizer_state + layer.input_bytes
        for layer in plan.layers
    )
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise SpillIOError(
            errno.ENOSPC,
            f"Spill needs about {needed} bytes in {folder} for the model's shards but only "
            f"{free} are free; free space or pass Spill(folder=...) on a larger disk",
        )


def _find_resume(spec: FitSpec) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint, memory-mapped (nothing is read until used)."""
    if not spec.resume or spec.checkpoint_dir is None:
        return None
    found = latest_checkpoint(spec.checkpoint_dir)
    if found is None:
        return None
    state: dict[str, Any] = torch.load(found, map_location="cpu", mmap=True, weights_only=False)
    missing = {"epoch", "model", "optimizers", "history"} - set(state)
    if missing:
        raise ValueError(f"{found} is not an mlsys checkpoint (missing {sorted(missing)})")
    return found, state


def _resume_plan(plan: ShardPlan, state: dict[str, Any], path: Path) -> ShardPlan:
    """The partition to resume with: checkpoints don't depend on it (optimizer states with
    one parameter group re-split to any partition), except a Spill checkpoint whose optimizer
    states have several groups, which keeps its own shards if they fit the budget."""
    if all(len(opt["param_groups"]) <= 1 for opt in state["optimizers"]):
        return plan
    strategy = str(state.get("strategy", ""))
    if not strategy.startswith("spill shards="):
        raise ValueError(
            f"{path} holds optimizer states with several parameter groups written by "
            f"{strategy!r}; they can't be re-split into Spill's shards"
        )
    counts = tuple(int(c) for c in strategy.removeprefix("spill shards=").split(","))
    if sum(counts) != len(plan.layers):
        raise ValueError(
            f"{path} was written with shards of {list(counts)} layers but the model has "
            f"{len(plan.layers)} layers"
        )
    saved = ShardPlan(plan.layers, counts, plan.budget)
    for s in range(len(counts)):
        if saved.footprint(s) > plan.budget:
            raise ValueError(
                f"{path} holds optimizer states with several parameter groups, which only fit "
                f"its own shards {list(counts)}, but shard {s} of those needs "
                f"{saved.footprint(s)} bytes > budget_bytes={plan.budget}"
            )
    return saved


def _split_optimizer_states(
    saved: Sequence[dict[str, Any]], param_counts: Sequence[int]
) -> list[dict[str, Any]]:
    """Re-cut per-part optimizer states (plain: one part; GPipe: one per stage; Spill: one
    per shard) into one per shard with ``param_counts`` parameters each. Parameters are
    numbered in model order in every strategy, so the states concatenate; each part must have
    one parameter group (the factory's hyper-parameters) or none."""
    groups = [opt["param_groups"] for opt in saved]
    if any(len(g) > 1 for g in groups):
        raise ValueError("optimizer states with several parameter groups can't be re-split")
    hyper = next(({k: v for k, v in g[0].items() if k != "params"} for g in groups if g), None)
    flat: list[dict[str, Any] | None] = []
    for opt in saved:
        ids = opt["param_groups"][0]["params"] if opt["param_groups"] else []
        flat.extend(opt["state"].get(i) for i in ids)
    if len(flat) != sum(param_counts):
        raise ValueError(
            f"the checkpoint's optimizer states cover {len(flat)} parameters but the model "
            f"has {sum(param_counts)}"
        )
    out: list[dict[str, Any]] = []
    start = 0
    for count in param_counts:
        part = flat[start : start + count]
        start += count
        if not count or hyper is None:
            out.append({"state": {}, "param_groups": []})
            continue
        out.append(
            {
                "state": {j: st for j, st in enumerate(part) if st is not None},
                "param_groups": [{**hyper, "params": list(range(count))}],
            }
        )
    return out


# --- the trainer ---------------------------------------------------------------------------


@dataclass
class _Shard:
    index: int
    layers: nn.Sequential
    params: list[nn.Parameter] = field(default_factory=list)
    buffers: list[tuple[nn.Module, str]] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    layouts: dict[str, Layout] = field(default_factory=dict)
    attached: dict[str, torch.Tensor] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    input: torch.Tensor | None = None
    rng: tuple[torch.Tensor, torch.Tensor | None] | None = None
    pre_buffers: list[torch.Tensor] | None = None


@dataclass
class _Loaded:
    images: dict[str, torch.Tensor]
    host_state: dict[str, torch.Tensor]
    input: torch.Tensor | None


class _Trainer:
    """One ``Spill.run``: the shards, the tier, the I/O thread and the training loop."""

    def __init__(self, strategy: Spill, model: nn.Sequential, plan: ShardPlan, spec: FitSpec):
        self.strategy = strategy
        self.model = model
        self.plan = plan
        self.spec = spec
        self.device = torch.device(strategy.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.cuda = self.device.type == "cuda"
        # On a CPU device the host tier is the device: there is nothing to move in the
        # background.
        self.background = strategy.prefetch and (self.cuda or strategy.offload == "disk")
        # Freed images wait here for the next image of their size, in what the schedule
        # leaves of the budget: fresh memory costs a page fault per page, ten times the
        # copy itself.
        self.pool = Pool(max(0, plan.budget - plan.peak(prefetch=self.background)))
        if not self.cuda and strategy.offload == "disk":
            _return_freed_memory()  # the budget bounds this process's memory
        self.tier: Tier = (
            DiskTier(strategy.folder_path, self.pool) if strategy.offload == "disk" else HostTier()
        )
        self.io = ThreadPoolExecutor(1, "spill-io") if self.background else None
        self.copy_stream = (
            torch.cuda.Stream(self.device) if self.cuda else None  # type: ignore[no-untyped-call]
        )
        self.writes: list[Future[None]] = []
        self.loads: dict[int, Future[_Loaded]] = {}
        self.trace = strategy.trace
        names = list(model._modules)
        self.shards = [
            _Shard(s, nn.Sequential(OrderedDict((n, model._modules[n]) for n in names[a:b])))
            for s, (a, b) in enumerate(plan.bounds)
        ]

    # --- moving shards ---------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self.io is not None:
            return self.io.submit(fn, *args)
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def _note(self, action: str, shard: int, what: str) -> None:
        if self.trace is not None:
            self.trace.append((action, shard, what))

    def _event(self) -> torch.cuda.Event | None:
        if not self.cuda:
            return None
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(torch.cuda.current_stream(self.device))
        return event

    def _to_device(self, image: torch.Tensor) -> torch.Tensor:
        """Copy a host image to the device on the copy stream (runs on the I/O thread)."""
        if not self.cuda:
            return image
        assert self.copy_stream is not None
        with torch.cuda.stream(self.copy_stream):
            out = torch.empty_like(image, device=self.device)
            out.copy_(image, non_blocking=True)
        self.copy_stream.synchronize()
        return out

    def _load(self, s: int, parts: Sequence[str], layouts: dict[str, Layout], inp: bool) -> _Loaded:
        """I/O thread: read a shard's parts (and its saved input) and put them on the device."""
        images: dict[str, torch.Tensor] = {}
        host_state: dict[str, torch.Tensor] = {}
        for part in parts:
            layout = layouts.get(part, EMPTY_LAYOUT)
            if not layout.nbytes:
                images[part] = torch.empty(0, dtype=torch.uint8, device=self.device)
                continue
            image = self.tier.read(f"{s}.{part}", layout.nbytes, self.cuda)
            images[part] = self._to_device(image)
            for slot in layout.slots:
                if slot.host:  # state the optimizer keeps on the CPU
                    host_state[slot.key] = slot_view(image, slot).clone()
            if self.cuda:
                self._recycle(image)
        loaded_input = None
        if inp:
            loaded_input = self._to_device(self.tier.get_tensor(f"{s}.input", self.cuda))
        return _Loaded(images, host_state, loaded_input)

    def _store(
        self, name: str, layout: Layout, tensors: list[torch.Tensor],
        source: torch.Tensor | None, event: torch.cuda.Event | None,
    ) -> None:  # fmt: skip
        """I/O thread: pack a shard part into a host image (no copy when its tensors still
        are the views of the image they were loaded as, on a CPU device) and write it."""
        if not layout.nbytes:
            return
        if not self.cuda:
            if is_packed(source, layout, tensors):
                assert source is not None
                self.tier.write(name, source)
                self._recycle(source)
                return
            image = self.pool.take(layout.nbytes, False)
            pack_into(image, layout, tensors)
            self.tier.write(name, image)
            self._recycle(image)
            return
        assert self.copy_stream is not None and event is not None
        image = self.pool.take(layout.nbytes, True)
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(event)
            packed = is_packed(source, layout, tensors)
            if packed:
                assert source is not None
                image.copy_(source, non_blocking=True)
            for slot, t in zip(layout.slots, tensors, strict=True):
                if slot.host or not packed:
                    slot_view(image, slot).copy_(t, non_blocking=True)
        self.copy_stream.synchronize()
        self.tier.write(name, image)
        self._recycle(image)

    def _store_input(
        self, s: int, tensor: torch.Tensor, event: torch.cuda.Event | None,
        buffer: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        """I/O thread: save shard ``s``'s input to the tier (``buffer``, the pool's memory
        under ``tensor``, goes back to the pool once written)."""
        if self.cuda:
            assert self.copy_stream is not None and event is not None
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(event)
                host.copy_(tensor, non_blocking=True)
            self.copy_stream.synchronize()
            tensor = host
        self.tier.put_tensor(f"{s}.input", tensor)
        if buffer is not None:
            self._recycle(buffer)

    def _recycle(self, image: torch.Tensor) -> None:
        """``image`` is no longer used: keep it for the next load (the host tier keeps its
        images, and on CUDA only host copies are recycled)."""
        if isinstance(self.tier, DiskTier) and image.device.type == "cpu":
            self.pool.give(image)

    def _check_writes(self, wait: bool = False) -> None:
        """Raise the first failed write; with ``wait``, wait for all of them first."""
        pending = []
        for future in self.writes:
            if wait or future.done():
                future.result()
            else:
                pending.append(future)
        self.writes = pending

    def acquire(self, s: int, parts: Sequence[Part], *, inp: bool = False) -> None:
        """Make shard ``s``'s ``parts`` (and its saved input) resident: take the prefetched
        ones, load the rest now."""
        self._check_writes()
        shard = self.shards[s]
        future = self.loads.pop(s, None)
        if future is None:
            need = [p for p in parts if p not in shard.attached]
            if need or inp:
                self._note("load", s, _what(need, inp))
                future = self._submit(self._load, s, need, dict(shard.layouts), inp)
        if future is not None:
            loaded = future.result()
            for part, image in loaded.images.items():
                self._attach(shard, part, image, loaded.host_state)
            if loaded.input is not None:
                shard.input = loaded.input

    def prefetch(self, s: int, parts: Sequence[Part], *, inp: bool = False, running: int) -> None:
        """Start loading shard ``s`` while shard ``running`` computes, if both fit."""
        if not self.background or not self.plan.overlaps(running, s):
            return
        shard = self.shards[s]
        need = [p for p in parts if p not in shard.attached]
        if need or inp:
            self._note("load", s, _what(need, inp))
            self.loads[s] = self._submit(self._load, s, need, dict(shard.layouts), inp)

    def release(self, s: int, *, running: int | None) -> None:
        """Take shard ``s`` off the device, writing back what changed; the write overlaps
        shard ``running`` if both fit, else it is waited for."""
        shard = self.shards[s]
        written = []
        for part in list(shard.attached):
            keyed = self._detach(shard, part)
            source = shard.attached.pop(part)
            if part not in shard.dirty:
                self._recycle(source)
                continue
            layout = plan_layout(keyed, self.device)
            shard.layouts[part] = layout
            if not layout.nbytes:
                continue
            tensors = [t for _, t in keyed]
            del keyed  # the job holds the last references: packing frees them one by one
            written.append(part)
            self.writes.append(
                self._submit(self._store, f"{s}.{part}", layout, tensors, source, self._event())
            )
        if written:
            self._note("write", s, "+".join(written))
        shard.dirty.clear()
        shard.input = None
        if written and (
            running is None or not self.background or not self.plan.overlaps(running, s)
        ):
            self._check_writes(wait=True)

    def save_input(self, s: int, h: torch.Tensor) -> None:
        """Save shard ``s``'s input, copied first: a layer may work on its input in place.
        Written to disk from a CPU device, the copy goes into a buffer from the pool (given
        back once written), not into fresh memory: a page fault per page, every step."""
        self._note("write", s, "input")
        if not self.cuda and isinstance(self.tier, HostTier):
            self.tier.put_tensor(f"{s}.input", h.detach().clone())
            return
        nbytes, buffer = tensor_nbytes(h), None
        if self.cuda or not nbytes:
            copy = h.detach().clone()
        else:
            buffer = self.pool.take(nbytes, False)
            copy = buffer.view(h.dtype).view(h.shape)
            copy.copy_(h.detach())
        self.writes.append(self._submit(self._store_input, s, copy, self._event(), buffer))

    def _attach(
        self, shard: _Shard, part: str, image: torch.Tensor, host_state: dict[str, torch.Tensor]
    ) -> None:
        if self.cuda and image.numel():
            image.record_stream(torch.cuda.current_stream(self.device))
        shard.attached[part] = image
        for slot in shard.layouts.get(part, EMPTY_LAYOUT).slots:
            tensor = host_state[slot.key] if slot.host else slot_view(image, slot)
            kind, j, name = _parse_key(slot.key)
            if kind == "p":
                shard.params[j].data = tensor
            elif kind == "b":
                owner, buffer = shard.buffers[j]
                owner._buffers[buffer] = tensor
            else:
                assert shard.optimizer is not None
                shard.optimizer.state[shard.params[j]][name] = tensor

    def _detach(self, shard: _Shard, part: str) -> list[tuple[str, torch.Tensor]]:
        """Take a part's tensors out of the model (or optimizer), leaving empty
        placeholders; returns them keyed as in a layout."""
        keyed: list[tuple[str, torch.Tensor]] = []
        if part == "weights":
            for j, p in enumerate(shard.params):
                keyed.append((f"p{j}", p.data))
                p.data = _placeholder(p.data)
            for j, (owner, name) in enumerate(shard.buffers):
                b = owner._buffers[name]
                assert b is not None
                keyed.append((f"b{j}", b))
                owner._buffers[name] = _placeholder(b)
        elif shard.optimizer is not None:
            for j, p in enumerate(shard.params):
                state = shard.optimizer.state.get(p)
                for name, value in (state or {}).items():
                    if isinstance(value, torch.Tensor):
                        keyed.append((f"s{j}.{name}", value))
                        state[name] = _placeholder(value)  # type: ignore[index]
        return keyed

    # --- set-up: every shard into the tier --------------------------------------------

    def setup(self, resume: dict[str, Any] | None) -> None:
        """Put every shard into the tier one at a time: materialised (layers on the meta
        device), loaded from the checkpoint, or taken from the model (whose tensors are
        then freed); build its optimizer and restore the optimizer's state."""
        self.model.train()
        owners: dict[int, int] = {}
        states: list[dict[str, Any]] | None = None
        if resume is not None:
            counts = [len(list(shard.layers.parameters())) for shard in self.shards]
            states = _resume_optimizer_states(resume["optimizers"], counts)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.strategy.init_seed)
            for shard in self.shards:
                self._setup_shard(shard, owners, resume, states)

    def _setup_shard(
        self, shard: _Shard, owners: dict[int, int], resume: dict[str, Any] | None,
        states: list[dict[str, Any]] | None,
    ) -> None:  # fmt: skip
        _materialize(shard.layers, self.plan.bounds[shard.index][0])
        shard.params = list(shard.layers.parameters())
        shard.buffers = [
            (m, name) for m in shard.layers.modules() for name, b in m._buffers.items()
            if b is not None
        ]  # fmt: skip
        _check_unshared(shard, owners)
        if resume is not None:
            _load_weights(shard, resume["model"])
        keyed = self._detach(shard, "weights")
        layout = plan_layout(keyed, torch.device("cpu"))
        shard.layouts["weights"] = layout
        image = self.pool.take(layout.nbytes, self.cuda)
        tensors = [t for _, t in keyed]
        del keyed  # packing frees the model's own tensors one by one
        pack_into(image, layout, tensors)
        del tensors
        if layout.nbytes:
            self.tier.write(f"{shard.index}.weights", image)
        self._attach(shard, "weights", self._to_device(image), {})
        del image
        if shard.params:
            shard.optimizer = self.spec.optimizer(shard.params)
            if states is not None:
                shard.optimizer.load_state_dict(states[shard.index])
            # Some optimizers (Adagrad) create their state when built: spill it too.
            shard.attached["state"] = torch.empty(0, dtype=torch.uint8)
            shard.dirty.add("state")
        self.release(shard.index, running=None)
        if resume is not None and isinstance(self.tier, DiskTier):
            for t in _tensors(resume):
                release_pages(t)

    # --- training ----------------------------------------------------------------------

    def train(self, data: Dataset[Any], resume: dict[str, Any] | None) -> list[dict[str, Any]]:
        spec = self.spec
        n_items = len(data)  # type: ignore[arg-type]
        torch.manual_seed(spec.seed)
        history: list[dict[str, Any]] = []
        start_epoch = 0
        if resume is not None:
            history = list(resume["history"])
            start_epoch = int(resume["epoch"]) + 1
            if "rng" in resume:
                torch.set_rng_state(resume["rng"].clone())
        steps = len(spec.batches(n_items, 0))
        spec.emit(
            "on_train_begin", epochs=spec.epochs, steps_per_epoch=steps, start_epoch=start_epoch
        )
        for epoch in range(start_epoch, spec.epochs):
            meter = EpochMeter(epoch)
            for step, indices in enumerate(spec.batches(n_items, epoch)):
                x, y, w = collate(data, indices)
                value = self.step(x, y, w, meter, step)
                spec.emit("on_step_end", epoch=epoch, step=step, loss=value)
            record = meter.record()
            history.append(record)
            spec.emit("on_epoch_end", record)
            if spec.checkpoint_dir is not None:
                path = self.checkpoint(spec.checkpoint_dir, epoch, history)
                spec.emit("on_checkpoint", path, epoch)
        spec.emit("on_train_end", history)
        return history

    def step(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, meter: EpochMeter, step: int
    ) -> float:
        """One mini-batch through every shard (the schedule in the module docstring)."""
        last = len(self.shards) - 1
        h = x.to(self.device)
        y, w = y.to(self.device), w.to(self.device)
        for s in range(last):
            shard = self.shards[s]
            self.acquire(s, _WEIGHTS)
            self.prefetch(s + 1, _ALL if s + 1 == last else _WEIGHTS, running=s)
            self.save_input(s, h)
            shard.rng = self._rng_state()
            shard.pre_buffers = [b.clone() for b in self._buffers(shard)] or None
            self._note("forward", s, "")
            with torch.no_grad():
                h = shard.layers(h)
            if shard.buffers:
                shard.dirty.add("weights")  # batch-norm statistics moved
            self.release(s, running=s + 1)
        shard = self.shards[last]
        self.acquire(last, _ALL)
        if last > 0:
            self.prefetch(last - 1, _ALL, inp=True, running=last)
        leaf = h.detach().requires_grad_(last > 0 and h.is_floating_point())
        self._note("forward+backward", last, "")
        # A clone, so that a first layer working in place doesn't write into a leaf.
        out = shard.layers(leaf.clone() if leaf.requires_grad else leaf)
        loss = weighted_mean(self.spec.loss(out, y), w)
        value = float(loss.detach())
        meter.add(value, w.cpu(), step=step)
        loss.backward()  # type: ignore[no-untyped-call]
        grad = leaf.grad
        del out, loss, leaf, h
        self._step_optimizer(shard)
        for s in range(last - 1, -1, -1):
            self.release(s + 1, running=s)
            self.acquire(s, _ALL, inp=True)
            if s > 0:
                self.prefetch(s - 1, _ALL, inp=True, running=s)
            grad = self._backward(self.shards[s], grad)
            self._step_optimizer(self.shards[s])
        return value

    def _backward(self, shard: _Shard, grad: torch.Tensor | None) -> torch.Tensor | None:
        """Recompute ``shard``'s forward from its saved input (same RNG draws, same buffer
        values as the first forward) and backpropagate ``grad``; returns the input's
        gradient."""
        inp = shard.input
        assert inp is not None and shard.rng is not None
        shard.input = None
        leaf = inp.requires_grad_(shard.index > 0 and inp.is_floating_point())
        buffers = self._buffers(shard)
        after = [b.clone() for b in buffers]
        for b, before in zip(buffers, shard.pre_buffers or [], strict=False):
            b.copy_(before)
        self._note("backward", shard.index, "")
        with torch.random.fork_rng(devices=[self.device] if self.cuda else []):
            torch.set_rng_state(shard.rng[0])
            if shard.rng[1] is not None:
                torch.cuda.set_rng_state(shard.rng[1], self.device)
            out = shard.layers(leaf.clone() if leaf.requires_grad else leaf)
        shard.pre_buffers = None
        if grad is not None and out.requires_grad:
            out.backward(grad)
        # After backward: batch norm's backward reads the statistics it saw.
        with torch.no_grad():
            for b, value in zip(buffers, after, strict=True):
                b.copy_(value)
        return leaf.grad if leaf.requires_grad else None

    def _step_optimizer(self, shard: _Shard) -> None:
        if shard.optimizer is None:
            return
        shard.optimizer.step()
        shard.optimizer.zero_grad(set_to_none=True)
        shard.dirty.update(("weights", "state"))

    def _rng_state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.cuda else None

    @staticmethod
    def _buffers(shard: _Shard) -> list[torch.Tensor]:
        out = []
        for owner, name in shard.buffers:
            b = owner._buffers[name]
            assert b is not None
            out.append(b)
        return out

    # --- checkpoints and the end ---------------------------------------------------------

    def flush(self) -> None:
        """Write back every resident shard and wait for all writes."""
        for shard in self.shards:
            if shard.attached:
                self.release(shard.index, running=None)
        for future in self.loads.values():
            future.cancel()
        self.loads.clear()
        self._check_writes(wait=True)

    def _map_all(self, parts: Sequence[Part]) -> None:
        """Attach every shard's ``parts`` as host views of the tier's images (file mappings
        for disk: read as touched)."""
        for shard in self.shards:
            for part in parts:
                layout = shard.layouts.get(part, EMPTY_LAYOUT)
                image = (
                    self.tier.mapped(f"{shard.index}.{part}", layout.nbytes)
                    if layout.nbytes
                    else torch.empty(0, dtype=torch.uint8)
                )
                host = {slot.key: slot_view(image, slot) for slot in layout.slots if slot.host}
                self._attach_host(shard, part, image, host)

    def _attach_host(
        self, shard: _Shard, part: str, image: torch.Tensor, host: dict[str, torch.Tensor]
    ) -> None:
        cuda, self.cuda = self.cuda, False  # host views: no stream bookkeeping
        try:
            self._attach(shard, part, image, host)
        finally:
            self.cuda = cuda

    def checkpoint(self, folder: Path, epoch: int, history: list[dict[str, Any]]) -> Path:
        """Write ``epoch-NNNN.pt`` in the format of every strategy, streamed from the tier."""
        self.flush()
        self._map_all(_ALL)
        try:
            payload = {
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizers": [
                    shard.optimizer.state_dict()
                    if shard.optimizer is not None
                    else {"state": {}, "param_groups": []}
                    for shard in self.shards
                ],
                "history": history,
                "strategy": "spill shards=" + ",".join(map(str, self.plan.counts)),
                "rng": torch.get_rng_state(),
            }
            path = _save_atomically(folder, epoch, payload, self.tier.drop_pages)
            del payload
        finally:
            for shard in self.shards:
                for part in list(shard.attached):
                    self._detach(shard, part)
                shard.attached.clear()
            if isinstance(self.tier, DiskTier):
                self.tier.forget_mapped()
        return path

    def finish(self) -> None:
        """Leave the trained weights in ``model``, as host views of the tier's images."""
        self.flush()
        self._map_all(_WEIGHTS)
        for shard in self.shards:
            shard.attached.clear()
        if isinstance(self.tier, DiskTier):
            self.tier.forget_mapped()

    def close(self) -> None:
        if self.io is not None:
            self.io.shutdown(wait=True, cancel_futures=True)
        self.pool.clear()
        self.tier.close()


def _what(parts: Sequence[str], inp: bool) -> str:
    return "+".join([*parts, *(["input"] if inp else [])])


def _parse_key(key: str) -> tuple[str, int, str]:
    kind, rest = key[0], key[1:]
    index, _, name = rest.partition(".")
    return kind, int(index), name


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=t.dtype, device=t.device)


def _materialize(layers: nn.Sequential, first_index: int) -> None:
    """Give layers on the meta device real CPU tensors, initialised by each module's
    ``reset_parameters()`` in order (what building them on the CPU does)."""
    for offset, layer in enumerate(layers):
        if not is_meta(layer):
            continue
        layer.to_empty(device="cpu")
        for module in layer.modules():
            own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            if not own:
                continue
            reset = getattr(module, "reset_parameters", None)
            if not callable(reset):
                raise ValueError(
                    f"layer {first_index + offset} ({type(layer).__name__}) is on the meta "
                    f"device and its {type(module).__name__} has no reset_parameters() to "
                    f"initialise it; build that layer on the CPU"
                )
            reset()


def _check_unshared(shard: _Shard, owners: dict[int, int]) -> None:
    for p in shard.params:
        seen = owners.setdefault(id(p), shard.index)
        if seen != shard.index:
            raise ValueError(
                f"a parameter of shard {shard.index} is the same tensor as one of shard "
                f"{seen}; tied weights must stay in one shard, and Spill cuts by size"
            )


def _load_weights(shard: _Shard, saved: dict[str, torch.Tensor]) -> None:
    own = shard.layers.state_dict()
    missing = sorted(set(own) - set(saved))
    if missing:
        raise ValueError(f"the checkpoint has no {missing[:3]} for shard {shard.index}")
    shard.layers.load_state_dict({key: saved[key] for key in own})


def _resume_optimizer_states(
    saved: list[dict[str, Any]], counts: list[int]
) -> list[dict[str, Any]]:
    """One optimizer state per shard, from the checkpoint's per-part states."""
    if len(saved) == len(counts) and all(
        sum(len(g["params"]) for g in opt["param_groups"]) == c
        for opt, c in zip(saved, counts, strict=True)
    ):
        return list(saved)
    return _split_optimizer_states(saved, counts)


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors(value)


class _PageDroppingWriter:
    """The file ``torch.save`` writes a checkpoint into; after each large write it lets go
    of the mapped shard pages copied so far, so the checkpoint of a model larger than
    memory streams through."""

    def __init__(self, file: BinaryIO, drop_pages: Callable[[], None]) -> None:
        self.file = file
        self.drop_pages = drop_pages

    def write(self, data: Any) -> int:
        written = self.file.write(data)
        if len(memoryview(data)) >= _RELEASE_EVERY:
            self.drop_pages()
        return written

    def flush(self) -> None:
        self.file.flush()


def _save_atomically(
    folder: Path, epoch: int, payload: dict[str, Any], drop_pages: Callable[[], None]
) -> Path:
    """Write beside ``epoch-NNNN.pt``, sync, rename (:func:`~mlsys.atomic.atomic_write`):
    a failed write (disk full) leaves no file that looks like a checkpoint, and removes
    its partial one."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpillIOError(
            exc.errno or errno.EIO, f"can't create {folder}: {exc.strerror}"
        ) from exc
    path = checkpoint_path(folder, epoch)
    try:
        with atomic_write(path, fsync=True) as file:
            torch.save(payload, _PageDroppingWriter(file, drop_pages))  # type: ignore[arg-type]
    except BaseException as exc:
        cause = _os_error_in(exc)
        if cause is not None:
            raise io_error(cause, f"writing checkpoint {path}", folder) from exc
        raise
    return path


def _os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc`` (torch.save reports a failed write as the RuntimeError of
    closing its archive, with the OSError as its context)."""
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
