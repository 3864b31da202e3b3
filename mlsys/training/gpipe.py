"""GPipe: pipeline-parallel training of an ``nn.Sequential``, one process per stage.

Training runs like a CPU instruction pipeline: the model is cut into K contiguous stages,
each mini-batch into M micro-batches, and the micro-batches flow through the stages so that
K processes (or devices) work at once. Backward starts when the forward pipe has drained
(GPipe) or interleaves with it (1F1B); either way gradients are applied once per
mini-batch, so the parameters follow plain training exactly. The idle share, the
"bubble", is (K-1)/(M+K-1) (see :mod:`mlsys.training.schedule`).

The pipeline itself is ``torch.distributed.pipelining`` (``PipelineStage`` with
``ScheduleGPipe`` or ``Schedule1F1B``); this module adds what the trainer contract needs
around it: balancing, the weighted mini-batch loss, activation checkpointing, checkpoints,
callbacks, and process management that fails fast and leaves no orphans.

Why one module: the strategy, the code that runs inside a stage process and the management
of those processes share one protocol (a job in, events and state out) and one set of up-
front checks; the schedule arithmetic is in :mod:`mlsys.training.schedule`.
"""

from __future__ import annotations

import atexit
import functools
import os
import pickle
import queue
import re
import signal
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute_checkpoint
from torch.utils.data import Dataset

from mlsys.lifeline import die_with_parent
from mlsys.training.balance import CostKind, check_balance, partition, profile, split
from mlsys.training.fit import (
    EpochMeter,
    FitResult,
    FitSpec,
    collate,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    weighted_mean,
)
from mlsys.training.schedule import Interval, ScheduleName

if TYPE_CHECKING:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

__all__ = ["GPipe", "GPipeWorkers", "StageError", "StageModule"]

BalanceSpec = Literal["time", "size"] | Sequence[int]
CheckpointMode = Literal["never", "except_last", "always"]
Emit = Callable[..., None]
StageState = tuple[dict[str, torch.Tensor], dict[str, Any]]
"""A stage's model state dict (full-model key names) and its optimizer's state dict."""

_SCHEDULES = ("gpipe", "1f1b")
_CHECKPOINT_MODES = ("never", "except_last", "always")
_POLL_S = 0.05
_LAST_WORDS_S = 1.0  # how long a failure waits for the other stages' reports


class StageError(RuntimeError):
    """A stage process failed; the message carries its traceback. ``peer``: it failed
    because its connection to another stage closed (that stage is the likelier cause)."""

    def __init__(
        self, stage: int, stages: int, summary: str, child_traceback: str = "", peer: bool = False
    ) -> None:
        self.stage = stage
        self.stages = stages
        self.summary = summary
        self.child_traceback = child_traceback
        self.peer = peer
        message = f"GPipe stage {stage} of {stages} failed: {summary}"
        if child_traceback:
            message += f"\n\nTraceback in the stage process:\n{child_traceback}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised on another host, it reaches the trainer pickled (e.g. by Dask).
        args = (self.stage, self.stages, self.summary, self.child_traceback, self.peer)
        return StageError, args


@dataclass(frozen=True)
class GPipe:
    """Pipeline-parallel training on ``torch.distributed.pipelining`` (GPipe, Huang et al.
    2019, https://arxiv.org/abs/1811.06965; 1F1B from PipeDream, Narayanan et al. 2019).

        result = fit(model, data, strategy=GPipe(stages=2, microbatches=8),
                     optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                     loss=nn.CrossEntropyLoss(reduction="none"), batch_size=64)

    ``fit`` starts one process per stage on this host (gloo on CPU, NCCL on CUDA) and
    forwards their callback events to this process; under ``torchrun`` (one process per
    stage, on one or many hosts) the same call runs the stage of its own rank instead,
    every rank returns the trained model, and the callbacks run on the last rank.

    Every mini-batch size must divide into M equal micro-batches (torch's stages exchange
    fixed-shape buffers): ``batch_size % microbatches == 0``, and so must the last, smaller
    batch of an epoch unless ``drop_last``. ``check`` says so before anything starts.

    Args:
        stages: K, the number of stages (processes); at most the number of layers.
        microbatches: M, micro-batches per mini-batch; at most ``batch_size``.
        balance: ``"time"`` (profile each layer's forward+backward), ``"size"`` (parameter
            + activation bytes), or layers per stage, e.g. ``[5, 3]``. Profiles are cut by
            :func:`mlsys.training.balance.partition`, exactly.
        checkpoint: activation checkpointing: ``"never"``, ``"except_last"`` (every stage
            but the last recomputes its forward in backward) or ``"always"``.
        schedule: ``"gpipe"`` (fill, then drain) or ``"1f1b"`` (needs M >= K; holds at
            most K micro-batches' activations per stage).
        devices: one device per stage, e.g. ``["cuda:0", "cuda:1"]`` (NCCL); None runs
            every stage on CPU with gloo.
        threads: torch intra-op threads per stage process.
        trace_dir: write each stage's timeline of forward/backward intervals there
            (``stage-K.json``; read with :func:`mlsys.training.schedule.load_trace`).
        workers: run on these long-lived stage processes instead of starting new ones.
        prefetch: ``schedule="gpipe"`` only: post every micro-batch's receive (its
            activations, later its gradients) before computing any, so transfers
            overlap compute; off, torch's ``ScheduleGPipe`` posts each receive only when
            the stage is ready for that micro-batch. The order of computation, and so the
            result, is the same.
    """

    stages: int
    microbatches: int
    balance: BalanceSpec = "time"
    checkpoint: CheckpointMode = "except_last"
    schedule: ScheduleName = "gpipe"
    devices: Sequence[str] | None = None
    threads: int = 1
    trace_dir: Path | str | None = None
    workers: GPipeWorkers | None = field(default=None, compare=False, repr=False)
    prefetch: bool = True

    def check(self, model: nn.Sequential, spec: FitSpec, n_items: int) -> None:
        """Raise naming the bad value before any process starts."""
        if not isinstance(model, nn.Sequential):
            raise TypeError(
                f"GPipe splits an nn.Sequential between layers, got {type(model).__name__}"
            )
        for name in ("stages", "microbatches", "threads"):
            _check_positive_int(name, getattr(self, name))
        k, m = self.stages, self.microbatches
        if k > len(model):
            raise ValueError(
                f"stages={k} but the model has {len(model)} layers; every stage needs one"
            )
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if self.checkpoint not in _CHECKPOINT_MODES:
            raise ValueError(
                f"checkpoint must be one of {_CHECKPOINT_MODES}, got {self.checkpoint!r}"
            )
        if self.schedule == "1f1b" and m < k:
            raise ValueError(
                f'schedule="1f1b" needs microbatches >= stages, got microbatches={m} '
                f'for stages={k}; use schedule="gpipe" or more micro-batches'
            )
        if m > spec.batch_size:
            raise ValueError(f"microbatches={m} is larger than batch_size={spec.batch_size}")
        if spec.batch_size % m:
            raise ValueError(
                f"batch_size={spec.batch_size} does not split into microbatches={m} equal "
                f"micro-batches; choose a batch_size divisible by {m}"
            )
        last = n_items % spec.batch_size
        if last and not spec.drop_last and last % m:
            raise ValueError(
                f"the last batch of each epoch holds {last} examples ({n_items} % "
                f"batch_size={spec.batch_size}), which does not split into microbatches={m} "
                f"equal micro-batches; set drop_last=True or choose sizes that divide"
            )
        if isinstance(self.balance, str):
            if self.balance not in ("time", "size"):
                raise ValueError(
                    f'balance must be "time", "size" or layers per stage, got {self.balance!r}'
                )
        else:
            check_balance(self.balance, k, len(model))
        _check_devices(self.devices, k)
        if self.workers is not None:
            self.workers.check_matches(k, self.devices)
        if self.workers is not None and _under_torchrun():
            raise ValueError("under torchrun every rank runs its own stage: pass workers=None")

    def run(self, model: nn.Sequential, data: Dataset[Any], spec: FitSpec) -> FitResult:
        """Train on stage processes; ``model`` receives the trained weights."""
        if _under_torchrun():
            return self._run_under_torchrun(model, data, spec)
        plan = self._plan(model, data, spec)
        jobs = _pickled(self._jobs(model, data, spec, plan))
        workers = self.workers or GPipeWorkers(self.stages, devices=self.devices)
        try:
            state, history = workers.run(jobs, spec)
        finally:
            if self.workers is None:
                workers.close()
        model.load_state_dict(state)
        return FitResult(model=model.cpu(), history=history)

    # --- planning: everything decided before a process starts --------------------------

    def _plan(self, model: nn.Sequential, data: Dataset[Any], spec: FitSpec) -> _Plan:
        """Resume state, a dry run of one micro-batch through the model and the loss (a
        model whose layers don't chain, or a loss that isn't per-example, fails here), and
        the balance."""
        plan = _Plan(balance=[], start_epoch=0, history=[], optimizers=[None] * self.stages)
        saved_balance = self._resume(model, spec, plan)
        n_items = len(data)  # type: ignore[arg-type]
        epoch = min(plan.start_epoch, spec.epochs - 1)
        first = spec.batches(n_items, epoch)[0]
        x, y, w = collate(data, first[: len(first) // self.microbatches])
        device = torch.device(self.devices[0]) if self.devices else torch.device("cpu")
        by: CostKind = "time" if self.balance == "time" and saved_balance is None else "size"
        probe = profile(model, x.to(device), by=by)
        weighted_mean(spec.loss(probe.output, y.to(device)), w.to(device))
        if saved_balance is not None:
            plan.balance = saved_balance
        elif isinstance(self.balance, str):
            plan.balance = partition(probe.costs, self.stages)
        else:
            plan.balance = list(self.balance)
        return plan

    def _resume(self, model: nn.Sequential, spec: FitSpec, plan: _Plan) -> list[int] | None:
        """Load the newest checkpoint into ``model`` and ``plan``; its balance, if any.

        A checkpoint holds one optimizer state per stage, valid only for the partition it
        was written with, so a resumed run keeps that partition."""
        if not spec.resume or spec.checkpoint_dir is None:
            return None
        found = latest_checkpoint(spec.checkpoint_dir)
        if found is None:
            return None
        state = load_checkpoint(found)
        match = re.fullmatch(r"gpipe balance=([0-9,]+)", str(state.get("strategy")))
        if match is None:
            raise ValueError(
                f"{found} was written by the {state.get('strategy')!r} strategy; GPipe "
                f"resumes only its own checkpoints (one optimizer state per stage)"
            )
        saved = [int(c) for c in match.group(1).split(",")]
        if len(saved) != self.stages:
            raise ValueError(
                f"{found} was written with {len(saved)} stages (balance {saved}) but this "
                f"GPipe has stages={self.stages}"
            )
        if not isinstance(self.balance, str) and list(self.balance) != saved:
            raise ValueError(
                f"{found} was written with balance {saved} but balance={list(self.balance)} "
                f"was asked for; the per-stage optimizer states only fit the saved one"
            )
        check_balance(saved, self.stages, len(model))
        model.load_state_dict(state["model"])
        plan.start_epoch = int(state["epoch"]) + 1
        plan.history = list(state["history"])
        plan.optimizers = list(state["optimizers"])
        return saved

    def _jobs(
        self, model: nn.Sequential, data: Dataset[Any], spec: FitSpec, plan: _Plan
    ) -> list[_Job]:
        modules = split(model, plan.balance)
        _check_unshared(modules)
        return [
            _Job(
                stage=s,
                stages=self.stages,
                module=module,
                data=data,
                spec=replace(spec, callbacks=()),
                microbatches=self.microbatches,
                schedule=self.schedule,
                recompute=self.checkpoint == "always"
                or (self.checkpoint == "except_last" and s < self.stages - 1),
                device=self.devices[s] if self.devices else "cpu",
                threads=self.threads,
                trace_dir=Path(self.trace_dir) if self.trace_dir is not None else None,
                balance=plan.balance,
                start_epoch=plan.start_epoch,
                history=plan.history,
                optimizer_state=plan.optimizers[s],
                prefetch=self.prefetch,
            )
            for s, module in enumerate(modules)
        ]

    def _run_under_torchrun(
        self, model: nn.Sequential, data: Dataset[Any], spec: FitSpec
    ) -> FitResult:
        """This process is one rank of ``torchrun``: run its stage. Every rank plans (and
        so checks its inputs); rank 0's balance is the one all use."""
        if not dist.is_initialized():
            cuda = bool(self.devices) and torch.device(self.devices[0]).type == "cuda"  # type: ignore[index]
            dist.init_process_group("nccl" if cuda else "gloo")
            # Torn down before the interpreter's own teardown: left to it, gloo's threads
            # can abort the rank at exit ("terminate called without an active exception").
            atexit.register(_destroy_process_group)
        rank, world = dist.get_rank(), dist.get_world_size()
        if world != self.stages:
            raise ValueError(
                f"torchrun started {world} processes but GPipe has stages={self.stages}; "
                f"start one process per stage (--nproc-per-node x --nnodes = {self.stages})"
            )
        plan = self._plan(model, data, spec)
        agreed: list[Any] = [plan.balance]
        dist.broadcast_object_list(agreed, src=0)
        plan.balance = agreed[0]
        job = self._jobs(model, data, spec, plan)[rank]
        outcome = _train_stage(job, emit=spec.emit, everyone=True)
        assert outcome is not None  # everyone=True: every rank gets the model
        state, history = outcome
        model.load_state_dict(state)
        return FitResult(model=model.cpu(), history=history)


def _pickled(jobs: list[_Job]) -> list[bytes]:
    """The stages' jobs as they travel to the stage processes."""
    try:
        return [pickle.dumps(job, protocol=5) for job in jobs]
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(
            f"GPipe sends the model, data, optimizer and loss to its stage processes, "
            f"so they must be picklable (no lambdas or local classes): {exc}"
        ) from exc


@dataclass
class _Plan:
    balance: list[int]
    start_epoch: int
    history: list[dict[str, Any]]
    optimizers: list[dict[str, Any] | None]


@dataclass
class _Job:
    """What one stage process needs to train its stage."""

    stage: int
    stages: int
    module: nn.Sequential
    data: Dataset[Any]
    spec: FitSpec
    microbatches: int
    schedule: ScheduleName
    recompute: bool
    device: str
    threads: int
    trace_dir: Path | None
    balance: list[int]
    start_epoch: int
    history: list[dict[str, Any]]
    optimizer_state: dict[str, Any] | None
    prefetch: bool = True


# --- inside a stage process ----------------------------------------------------------------


class StageModule(nn.Sequential):
    """One stage's layers, named as in the full model; with ``recompute`` its forward runs
    under activation checkpointing (``use_reentrant=False``): the stage keeps only its
    input per micro-batch and recomputes the rest in backward. ``preserve_rng_state``
    replays the RNG state of the first forward, so dropout draws the same mask twice and
    gradients equal those of the stage without checkpointing."""

    def __init__(self, layers: nn.Sequential, *, recompute: bool) -> None:
        named = [(name, layer) for name, layer in layers._modules.items() if layer is not None]
        super().__init__(OrderedDict(named))
        self.recompute = recompute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute and torch.is_grad_enabled():
            out: torch.Tensor = recompute_checkpoint(
                self._layers, x, use_reentrant=False, preserve_rng_state=True
            )
            return out
        return self._layers(x)

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x


class _MiniBatchLoss:
    """The schedule's loss function: each micro-batch's share of the mini-batch loss.

    The trainer contract wants ``sum(w_i * l_i) / sum(w_i)`` over the whole mini-batch.
    The schedule calls the loss once per micro-batch and adds the gradients, so each
    micro-batch returns ``sum(w_i * l_i) / W`` with the mini-batch's ``W``, and the schedule
    is built with ``scale_grads=False`` (no division by M). The target handed to the
    schedule is each example's row in the mini-batch; labels and weights are looked up
    here, so labels of any shape or dtype work."""

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.loss = loss
        self.labels = torch.empty(0)
        self.shares = torch.empty(0)

    def set_batch(self, labels: torch.Tensor, weights: torch.Tensor) -> None:
        self.labels, self.shares = labels, weights / weights.sum()

    def __call__(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        losses, shares = self.loss(output, self.labels[rows]), self.shares[rows]
        if losses.shape != shares.shape:
            raise ValueError(
                f"loss must return one value per example: got shape {tuple(losses.shape)} "
                f"for {shares.numel()} examples (use reduction='none')"
            )
        return (losses * shares).sum()


def _pipeline(
    job: _Job, module: nn.Module, device: torch.device, loss: _MiniBatchLoss, record: list[Interval]
) -> ScheduleGPipe | Schedule1F1B:
    """This stage wrapped in a ``PipelineStage`` and the schedule that drives it.

    ``torch.distributed.pipelining`` is imported here: it takes seconds to import, which
    only stage processes should pay, not every user of ``mlsys.training``."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    if job.trace_dir is not None:
        stage: PipelineStage = _traced_stage_class()(module, job.stage, job.stages, device)
        stage.record = record  # type: ignore[attr-defined]
    else:
        stage = PipelineStage(module, job.stage, job.stages, device)
    kind: type[ScheduleGPipe | Schedule1F1B] = Schedule1F1B
    if job.schedule == "gpipe":
        kind = _prefetching_gpipe_class() if job.prefetch else ScheduleGPipe
    return kind(stage, n_microbatches=job.microbatches, loss_fn=loss, scale_grads=False)


@functools.cache
def _prefetching_gpipe_class() -> type[ScheduleGPipe]:
    """``ScheduleGPipe`` with every receive posted ahead: all M forward receives before
    the first forward, all M backward receives before the first backward. Each
    micro-batch has its own receive buffers in ``PipelineStage``, and p2p messages
    between two ranks match in posting order, so the data lands while the stage computes
    earlier micro-batches instead of after it asks. Same computations in the same order
    as ``ScheduleGPipe._step_microbatches`` (torch 2.13), which it otherwise follows."""
    from torch.distributed.pipelining import ScheduleGPipe
    from torch.distributed.pipelining.schedules import _sorted_batch_p2p, _wait_batch_p2p

    def wait(works: dict[int, Any]) -> None:
        for work in works.values():
            _wait_batch_p2p(work)

    class PrefetchingGPipe(ScheduleGPipe):
        def _step_microbatches(  # type: ignore[no-untyped-def]
            self,
            arg_mbs=None,
            kwarg_mbs=None,
            target_mbs=None,
            losses=None,
            return_outputs=True,
            loss_kwargs=None,
        ):
            arg_mbs, kwarg_mbs = self._check_inputs(arg_mbs, kwarg_mbs, target_mbs, losses)
            first_target = target_mbs[0] if target_mbs is not None else None
            self._initialize_stage(arg_mbs[0], kwarg_mbs[0], first_target, loss_kwargs)  # type: ignore[no-untyped-call]
            stage, m = self._stage, self._n_microbatches
            received = [_sorted_batch_p2p(stage.get_fwd_recv_ops(i)) for i in range(m)]
            sends: list[Any] = []
            for i in range(m):
                wait(received[i])
                output = stage.forward_one_chunk(
                    i, arg_mbs[i], kwarg_mbs[i], save_forward_output=return_outputs
                )
                sends.extend(_sorted_batch_p2p(stage.get_fwd_send_ops(i)).values())
                self._maybe_compute_loss(stage, output, target_mbs, i, loss_kwargs)  # type: ignore[no-untyped-call]
            grads = [_sorted_batch_p2p(stage.get_bwd_recv_ops(i)) for i in range(m)]
            for work in sends:
                _wait_batch_p2p(work)
            sends = []
            for i in range(m):
                wait(grads[i])
                loss = self._maybe_get_loss(stage, i)  # type: ignore[no-untyped-call]
                stage.backward_one_chunk(i, loss=loss, last_backward=i == m - 1)
                sends.extend(_sorted_batch_p2p(stage.get_bwd_send_ops(i)).values())
            for work in sends:
                _wait_batch_p2p(work)
            self._update_losses(stage, losses)  # type: ignore[no-untyped-call]
            stage.perform_reduce_grad(m if self.scale_grads else 1)

    return PrefetchingGPipe


@functools.cache
def _traced_stage_class() -> type[PipelineStage]:
    """A ``PipelineStage`` that appends ``(kind, microbatch, start, end)`` to its
    ``record`` for each forward and backward it runs."""
    from torch.distributed.pipelining import PipelineStage

    class TracedStage(PipelineStage):
        record: list[Interval]

        def forward_one_chunk(self, fwd_chunk_id: int, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            out = super().forward_one_chunk(fwd_chunk_id, *args, **kwargs)
            self.record.append(("F", fwd_chunk_id, started, time.perf_counter()))
            return out

        def backward_one_chunk(self, bwd_chunk_id: int, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            out = super().backward_one_chunk(bwd_chunk_id, *args, **kwargs)
            self.record.append(("B", bwd_chunk_id, started, time.perf_counter()))
            return out

    return TracedStage


def _train_stage(job: _Job, emit: Emit, everyone: bool) -> tuple[dict[str, Any], list[Any]] | None:
    """Train this process's stage; the last stage, which sees the losses, reports through
    ``emit`` and writes checkpoints. Returns the full model state and the history on the
    last stage, or on every stage with ``everyone``; None elsewhere."""
    spec, k = job.spec, job.stages
    first, last = job.stage == 0, job.stage == k - 1
    torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    module = StageModule(job.module, recompute=job.recompute).to(device)
    module.train()
    optimizer = spec.optimizer(module.parameters())
    if job.optimizer_state is not None:
        optimizer.load_state_dict(job.optimizer_state)
    loss = _MiniBatchLoss(spec.loss)
    record: list[Interval] = []
    trace: list[list[Interval]] = []
    # Stages exchange fixed-shape buffers: one stage and schedule per mini-batch size.
    schedules: dict[int, ScheduleGPipe | Schedule1F1B] = {}

    n_items = len(job.data)  # type: ignore[arg-type]

    history = list(job.history)
    if last:
        emit(
            "on_train_begin",
            epochs=spec.epochs,
            steps_per_epoch=len(spec.batches(n_items, 0)),
            start_epoch=job.start_epoch,
        )
    for epoch in range(job.start_epoch, spec.epochs):
        # Each stage draws its own dropout masks; seeding them from (seed, epoch, stage)
        # makes a resumed run draw what an uninterrupted one would.
        torch.manual_seed(hash((spec.seed, epoch, job.stage)) & 0x7FFF_FFFF_FFFF)
        meter = EpochMeter(epoch)
        for step, indices in enumerate(spec.batches(n_items, epoch)):
            if len(indices) not in schedules:
                schedules[len(indices)] = _pipeline(job, module, device, loss, record)
            schedule = schedules[len(indices)]
            optimizer.zero_grad(set_to_none=True)
            args: tuple[torch.Tensor, ...] = ()
            if first or last:
                x, y, w = collate(job.data, indices)
                args = (x.to(device),) if first else ()
            if last:
                loss.set_batch(y.to(device), w.to(device))
                losses: list[torch.Tensor] = []
                rows = torch.arange(len(indices), device=device)
                schedule.step(*args, target=rows, losses=losses)
            else:
                schedule.step(*args)
            optimizer.step()
            if job.trace_dir is not None:
                trace.append(list(record))
                record.clear()
            if last:
                value = float(torch.stack(losses).sum().detach())
                meter.add(value, w, step=step)
                emit("on_step_end", epoch=epoch, step=step, loss=value)
        if last:
            record_ = meter.record()
            history.append(record_)
            emit("on_epoch_end", record_)
        if spec.checkpoint_dir is not None:
            states = _gather(_stage_state(module, optimizer), k, everyone=False)
            if states is not None:
                path = save_checkpoint(
                    spec.checkpoint_dir,
                    epoch=epoch,
                    model_state={key: v for s in states for key, v in s[0].items()},
                    optimizer_states=[s[1] for s in states],
                    history=history,
                    strategy="gpipe balance=" + ",".join(map(str, job.balance)),
                )
                emit("on_checkpoint", path, epoch)
    if job.trace_dir is not None:
        _write_trace(job.trace_dir, job.stage, trace)
    states = _gather(_stage_state(module, optimizer), k, everyone=everyone)
    if everyone and k > 1:
        shared: list[Any] = [history]
        dist.broadcast_object_list(shared, src=k - 1)
        history = shared[0]
    if last:
        emit("on_train_end", history)
    if states is None:
        return None
    return {key: v for s in states for key, v in s[0].items()}, history


def _stage_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> StageState:
    return _to_cpu(module.state_dict()), _to_cpu(optimizer.state_dict())


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(value) for value in obj)
    return obj


def _gather(state: StageState, stages: int, everyone: bool) -> list[StageState] | None:
    """Every stage's state, in stage order, on the last stage (or on all with
    ``everyone``); None on the others."""
    if stages == 1:
        return [state]
    if everyone:
        out: list[Any] = [None] * stages
        dist.all_gather_object(out, state)
        return out
    last = dist.get_rank() == stages - 1
    gathered: list[Any] | None = [None] * stages if last else None
    dist.gather_object(state, gathered, dst=stages - 1)
    return gathered


def _write_trace(folder: Path, stage: int, steps: list[list[Interval]]) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"stage-{stage}.json").write_text(json.dumps({"stage": stage, "steps": steps}))


# --- stage processes on this host ------------------------------------------------------------


class GPipeWorkers:
    """K stage processes on this host, kept alive across several ``fit`` calls so the
    start-up (a Python interpreter and torch per stage) is paid once:

        with GPipeWorkers(stages=2) as workers:
            for lr in (0.1, 0.03):
                fit(model(), data, strategy=GPipe(2, 8, workers=workers), ...)

    The processes are spawned (not forked: the caller may hold threads), join one gloo or
    NCCL process group through a TCP store this process serves on a free port of
    127.0.0.1, and take jobs from their own queues. If one of them fails, the job raises
    :class:`StageError` with its traceback and the workers are closed.
    """

    def __init__(self, stages: int, *, devices: Sequence[str] | None = None) -> None:
        _check_positive_int("stages", stages)
        _check_devices(devices, stages)
        self.stages = stages
        self.devices = tuple(devices) if devices is not None else None
        cuda = bool(devices) and torch.device(devices[0]).type == "cuda"  # type: ignore[index]
        context = mp.get_context("spawn")
        self._store = dist.TCPStore(  # type: ignore[attr-defined]
            "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(minutes=5)
        )
        self._outbox = context.Queue()
        # Queues, not pipes: a put never blocks, even if the stage reading it has died.
        self._inboxes = [context.Queue() for _ in range(stages)]
        self._processes = [
            context.Process(
                target=_worker_main,
                args=(
                    os.getpid(),
                    rank,
                    stages,
                    self._store.port,
                    "nccl" if cuda else "gloo",
                    self._inboxes[rank],
                    self._outbox,
                ),
                name=f"gpipe-stage-{rank}",
                daemon=True,
            )
            for rank in range(stages)
        ]
        self.closed = False
        for process in self._processes:
            process.start()

    def __enter__(self) -> GPipeWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self._processes]

    def check_matches(self, stages: int, devices: Sequence[str] | None) -> None:
        if self.closed:
            raise ValueError("these GPipeWorkers are closed; start new ones")
        if stages != self.stages:
            raise ValueError(f"stages={stages} but the workers run {self.stages} stages")
        if devices is not None and tuple(devices) != self.devices:
            raise ValueError(f"devices={list(devices)} but the workers use {self.devices}")

    def run(self, jobs: list[bytes], spec: FitSpec) -> tuple[dict[str, Any], list[Any]]:
        """Hand each stage its pickled job, call ``spec``'s callbacks with the events the
        last stage forwards, and return the full model state and the history."""
        if self.closed:
            raise RuntimeError("these GPipeWorkers are closed; start new ones")
        for inbox, job in zip(self._inboxes, jobs, strict=True):
            inbox.put(job)
        finished: set[int] = set()
        result: tuple[dict[str, Any], list[Any]] | None = None
        try:
            while len(finished) < self.stages:
                message = self._next_message()
                if message[0] == "emit":
                    _, hook, args, kwargs = message
                    spec.emit(hook, *args, **kwargs)
                elif message[0] == "finished":
                    _, rank, payload = message
                    finished.add(rank)
                    if payload is not None:
                        result = pickle.loads(payload)
                else:
                    _, rank, summary, text = message
                    raise self._failure({rank: (summary, text)})
        except BaseException:
            self.close(force=True)
            raise
        assert result is not None  # the last stage always returns the model
        return result

    def _next_message(self) -> tuple[Any, ...]:
        """The next message from the stages; raises StageError as soon as one of them has
        died, even without a word (killed, ``os._exit``, out of memory)."""
        while True:
            try:
                message: tuple[Any, ...] = self._outbox.get(timeout=_POLL_S)
                return message
            except queue.Empty:
                pass
            if any(process.exitcode is not None for process in self._processes):
                raise self._failure({})

    def _failure(self, errors: dict[int, tuple[str, str]]) -> StageError:
        """The error of the stage that failed first. When a stage dies, its neighbours see
        their connections reset and report that, so a stage that died without a word is
        the cause; otherwise the first report is. Waits at most ``_LAST_WORDS_S`` for the
        other stages' reports or deaths to settle which."""
        deadline = time.monotonic() + _LAST_WORDS_S
        while True:
            dead = {r: p.exitcode for r, p in enumerate(self._processes) if p.exitcode is not None}
            while True:  # a stage writes its report before it exits: read after the deaths
                try:
                    message = self._outbox.get(timeout=_POLL_S)
                except queue.Empty:
                    break
                if message[0] == "error":
                    errors.setdefault(message[1], (message[2], message[3]))
            for rank in sorted(dead.keys() - errors.keys()):
                summary = _describe_exit(dead[rank], self._processes[rank].pid)
                return StageError(rank, self.stages, summary)
            settled = len(dead.keys() | errors.keys()) == self.stages
            if errors and (settled or time.monotonic() > deadline):
                rank = next(iter(errors))
                return StageError(rank, self.stages, *errors[rank])

    def close(self, force: bool = False) -> None:
        """Stop the processes: ask them to finish (or, with ``force``, terminate them at
        once), then terminate and kill whatever is left, and reap them all."""
        if self.closed:
            return
        self.closed = True
        if not force:
            for inbox, process in zip(self._inboxes, self._processes, strict=True):
                if process.is_alive():
                    inbox.put(None)
            for process in self._processes:
                process.join(timeout=10)
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        for channel in (self._outbox, *self._inboxes):
            channel.cancel_join_thread()
            channel.close()
        del self._store


def _worker_main(
    parent: int, rank: int, stages: int, port: int, backend: str, inbox: Any, outbox: Any
) -> None:
    """A stage process: join the process group, then train the jobs it is handed until it
    gets None. Any failure goes to the parent with its traceback, and the process exits."""
    die_with_parent(parent, signal.SIGKILL, 1)  # no orphan blocked in a collective
    try:
        store = dist.TCPStore(  # type: ignore[attr-defined]
            "127.0.0.1", port, is_master=False, timeout=timedelta(minutes=5)
        )
        dist.init_process_group(backend, store=store, rank=rank, world_size=stages)

        def emit(hook: str, *args: Any, **kwargs: Any) -> None:
            outbox.put(("emit", hook, args, kwargs))

        while (payload := inbox.get()) is not None:
            job: _Job = pickle.loads(payload)
            outcome = _train_stage(job, emit=emit, everyone=False)
            result = pickle.dumps(outcome, protocol=5) if outcome is not None else None
            outbox.put(("finished", rank, result))
        dist.destroy_process_group()
    except BaseException as exc:
        outbox.put(("error", rank, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        outbox.close()
        outbox.join_thread()
        raise SystemExit(1) from None


def _describe_exit(code: int, pid: int | None) -> str:
    if code < 0:
        return f"its process (pid {pid}) was killed by {signal.Signals(-code).name}"
    return f"its process (pid {pid}) exited with code {code} without a traceback"


# --- checks ----------------------------------------------------------------------------------


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_devices(devices: Sequence[str] | None, stages: int) -> None:
    if devices is None:
        return
    if isinstance(devices, str) or len(devices) != stages:
        raise ValueError(f"devices must list one device per stage ({stages}), got {devices!r}")
    kinds = {torch.device(d).type for d in devices}
    if len(kinds) != 1 or not kinds <= {"cpu", "cuda"}:
        raise ValueError(f"devices must be all 'cpu' or all CUDA devices, got {list(devices)}")
    if kinds == {"cuda"}:
        count = torch.cuda.device_count()
        missing = [d for d in devices if (torch.device(d).index or 0) >= count]
        if missing:
            raise ValueError(f"devices {missing} are not among the {count} visible CUDA devices")
        indices = [torch.device(d).index or 0 for d in devices]
        if len(set(indices)) != len(indices):
            raise ValueError(f"devices {list(devices)} repeat a GPU; NCCL needs one GPU per stage")


def _check_unshared(modules: list[nn.Sequential]) -> None:
    """Stages train separate copies of their parameters, so a parameter shared between
    stages (tied weights) would silently become two; refuse such a split."""
    owner: dict[int, tuple[int, str]] = {}
    for s, module in enumerate(modules):
        for name, parameter in module.named_parameters():
            seen = owner.setdefault(id(parameter), (s, name))
            if seen[0] != s:
                raise ValueError(
                    f"parameter {name} (stage {s}) is the same tensor as {seen[1]} (stage "
                    f"{seen[0]}); tied weights must stay in one stage: choose a balance that "
                    f"keeps those layers together"
                )


def _destroy_process_group() -> None:
    """Destroy the default process group if one is still up (an ``atexit`` hook)."""
    if dist.is_initialized():
        dist.destroy_process_group()
