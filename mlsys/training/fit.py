"""One call trains an ``nn.Sequential`` with any strategy: ``fit(model, data, strategy=...)``.

The contract every strategy keeps (docs/trainers.md describes the strategies):

- ``data`` is a map-style ``Dataset`` of ``(x, y)`` or ``(x, y, weight)`` items. Each epoch
  cuts it into mini-batches by :func:`epoch_batches` (in order, or shuffled by
  ``seed + epoch``), the same for every strategy.
- ``loss(outputs, targets)`` returns per-example losses; the mini-batch loss is their
  weighted mean ``sum(w_i * l_i) / sum(w_i)`` over the whole mini-batch (weights 1 when the
  items carry none), so per-example weights from weak labeling reach the gradient.
- ``optimizer(params)`` builds a ``torch.optim.Optimizer`` (each pipeline stage or spilled
  shard builds its own over its parameters).
- The result holds the trained model on CPU and one history record per epoch, at least
  ``{"epoch", "loss", "examples", "seconds"}``; every strategy gives the parameters plain
  training gives on the same data and seed, within float tolerance.
- Callbacks see the run begin, every optimizer step, every epoch and the end.
- With ``checkpoint_dir`` a checkpoint is written after every epoch; ``resume=True``
  continues from the newest one there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from mlsys.atomic import atomic_write

__all__ = [
    "Callback",
    "EpochMeter",
    "FitResult",
    "FitSpec",
    "LossFn",
    "OptimizerFactory",
    "Strategy",
    "checkpoint_path",
    "collate",
    "epoch_batches",
    "fit",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "weighted_mean",
]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Callback:
    """Hooks a trainer calls; override what you need. Called in the process that called
    ``fit`` (strategies with worker processes forward their events to it)."""

    def on_train_begin(self, *, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        """Before the first step; ``start_epoch`` > 0 when resuming."""

    def on_step_end(self, *, epoch: int, step: int, loss: float) -> None:
        """After each optimizer step; ``step`` counts from 0 within the epoch."""

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """After each epoch, with its history record."""

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        """After the checkpoint of ``epoch`` is written to ``path``."""

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        """After the last epoch."""


@dataclass(frozen=True)
class FitSpec:
    """Everything ``fit`` was asked to do, as handed to a strategy."""

    optimizer: OptimizerFactory
    loss: LossFn
    epochs: int
    batch_size: int
    seed: int
    shuffle: bool
    drop_last: bool
    checkpoint_dir: Path | None
    resume: bool
    callbacks: tuple[Callback, ...] = ()

    def batches(self, n_items: int, epoch: int) -> list[torch.Tensor]:
        """The mini-batches of ``epoch`` over ``n_items`` items (see :func:`epoch_batches`)."""
        return epoch_batches(
            n_items,
            self.batch_size,
            epoch=epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
        )

    def emit(self, hook: str, *args: Any, **kwargs: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args, **kwargs)


@dataclass
class FitResult:
    """The trained model (on CPU) and one history record per epoch."""

    model: nn.Sequential
    history: list[dict[str, Any]] = field(default_factory=list)


@runtime_checkable
class Strategy(Protocol):
    """A way of training: ``GPipe(...)``, ``Spill(...)``; ``"plain"`` is built in."""

    def check(self, model: nn.Sequential, spec: FitSpec, n_items: int) -> None:
        """Raise ValueError naming the bad value before any work starts."""

    def run(self, model: nn.Sequential, data: Dataset[Any], spec: FitSpec) -> FitResult:
        """Train and return the result; ``model`` may be modified in place."""


def fit(
    model: nn.Sequential,
    data: Dataset[Any],
    *,
    strategy: str | Strategy = "plain",
    optimizer: OptimizerFactory,
    loss: LossFn,
    epochs: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    shuffle: bool = False,
    drop_last: bool = False,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` on ``data`` and return the trained model and per-epoch history.

        result = fit(model, data, strategy=GPipe(stages=2, microbatches=8),
                     optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                     loss=nn.CrossEntropyLoss(reduction="none"), epochs=3, batch_size=64)

    Args:
        model: an ``nn.Sequential`` on CPU; plain training updates it in place.
        data: a map-style dataset of ``(x, y)`` or ``(x, y, weight)`` items.
        strategy: ``"plain"`` (this process), or a strategy object such as ``GPipe(...)``.
        optimizer: ``params -> Optimizer``, e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``.
        loss: ``(outputs, targets) -> per-example losses`` (``reduction="none"``).
        epochs: passes over ``data``.
        batch_size: examples per optimizer step (the last batch may be smaller unless
            ``drop_last``).
        seed: seeds the shuffle order and torch's RNG (dropout) for the run.
        shuffle: shuffle each epoch (order from ``seed + epoch``); else in index order.
        drop_last: drop the last, smaller batch of an epoch.
        checkpoint_dir: write ``epoch-NNNN.pt`` there after every epoch.
        resume: continue from the newest checkpoint in ``checkpoint_dir``, if any.
        callbacks: see :class:`Callback`.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model must be an nn.Sequential (a trainer splits it between layers), "
            f"got {type(model).__name__}"
        )
    if len(model) == 0:
        raise ValueError("model is an empty nn.Sequential")
    n_items = _dataset_len(data)
    if n_items == 0:
        raise ValueError("data is empty: nothing to train on")
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    if drop_last and batch_size > n_items:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {n_items} examples and drop_last "
            f"is set: no batch would remain"
        )
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")
    spec = FitSpec(
        optimizer=optimizer,
        loss=loss,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_last=drop_last,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        resume=resume,
        callbacks=tuple(callbacks),
    )
    if isinstance(strategy, str):
        if strategy != "plain":
            raise ValueError(
                f'strategy must be "plain" or a strategy object (GPipe(...), Spill(...)), '
                f"got {strategy!r}"
            )
        return _fit_plain(model, data, spec)
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be 'plain' or a Strategy, got {strategy!r}")
    strategy.check(model, spec, n_items)
    return strategy.run(model, data, spec)


# --- the pieces every strategy shares ------------------------------------------------------


def epoch_batches(
    n_items: int, batch_size: int, *, epoch: int, seed: int, shuffle: bool, drop_last: bool
) -> list[torch.Tensor]:
    """Indices of each mini-batch of ``epoch``: in order, or a permutation drawn from
    ``seed + epoch`` (a private generator; the global RNG is untouched)."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n_items, generator=generator)
    else:
        order = torch.arange(n_items)
    batches = list(torch.split(order, batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def collate(data: Dataset[Any], indices: torch.Tensor) -> Batch:
    """Stack the items at ``indices`` into ``(x, y, weight)``; weight is 1 where the items
    carry none. Errors name the index of a malformed item."""
    if type(data) is TensorDataset and len(data.tensors) in (2, 3):  # not a subclass
        return _collate_tensors(data.tensors, indices)
    xs, ys, ws = [], [], []
    for index in indices.tolist():
        item = data[index]
        if not isinstance(item, tuple | list) or len(item) not in (2, 3):
            raise ValueError(
                f"data[{index}] must be (x, y) or (x, y, weight), got {type(item).__name__}"
                + (f" of length {len(item)}" if isinstance(item, tuple | list) else "")
            )
        xs.append(torch.as_tensor(item[0]))
        ys.append(torch.as_tensor(item[1]))
        ws.append(torch.as_tensor(item[2] if len(item) == 3 else 1.0, dtype=torch.float32))
    return torch.stack(xs), torch.stack(ys), _checked_weights(torch.stack(ws), indices)


def _collate_tensors(tensors: Sequence[torch.Tensor], indices: torch.Tensor) -> Batch:
    """``collate`` of a TensorDataset: one gather per tensor instead of one item at a time
    (the same batch: an item of it is its tensors' rows)."""
    x, y = tensors[0][indices], tensors[1][indices]
    if len(tensors) == 3:
        weights = tensors[2][indices].to(torch.float32)
    else:
        weights = torch.ones(len(indices), dtype=torch.float32)
    return x, y, _checked_weights(weights, indices)


def _checked_weights(weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    weights = weights.reshape(-1)
    bad = ~(weights > 0) | ~torch.isfinite(weights)
    if bool(bad.any()):
        position = int(bad.nonzero()[0])
        raise ValueError(
            f"data[{int(indices[position])}] has weight {float(weights[position])}; "
            f"weights must be positive and finite"
        )
    return weights


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w * l) / sum(w)``: the loss of a mini-batch from its per-example losses."""
    if losses.shape != weights.shape:
        raise ValueError(
            f"loss must return one value per example: got shape {tuple(losses.shape)} "
            f"for {weights.numel()} examples (use reduction='none')"
        )
    return (losses * weights).sum() / weights.sum()


def checkpoint_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:04d}.pt"


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest ``epoch-NNNN.pt`` in ``folder``, or None."""
    found = sorted(folder.glob("epoch-[0-9][0-9][0-9][0-9].pt")) if folder.is_dir() else []
    return found[-1] if found else None


def save_checkpoint(
    folder: Path,
    *,
    epoch: int,
    model_state: dict[str, torch.Tensor],
    optimizer_states: list[dict[str, Any]],
    history: list[dict[str, Any]],
    strategy: str,
) -> Path:
    """Write the state after ``epoch`` (0-based) atomically; returns its path.

    ``model_state`` is the full ``nn.Sequential``'s state dict; ``optimizer_states`` holds
    one optimizer state per part the strategy trained separately (one for plain)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, epoch)
    with atomic_write(path) as file:
        torch.save(
            {
                "epoch": epoch,
                "model": model_state,
                "optimizers": optimizer_states,
                "history": history,
                "strategy": strategy,
                "rng": torch.get_rng_state(),
            },
            file,
        )
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    missing = {"epoch", "model", "optimizers", "history"} - set(state)
    if missing:
        raise ValueError(f"{path} is not an mlsys checkpoint (missing {sorted(missing)})")
    return state


class EpochMeter:
    """The running loss of one epoch, weighted like the mini-batch losses, and its history
    record. Strategies call ``add`` after each step (raising on a non-finite loss)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.started = time.perf_counter()
        self.total = 0.0
        self.weight = 0.0
        self.examples = 0

    def add(self, loss: float, weights: torch.Tensor, *, step: int) -> None:
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at epoch {self.epoch}, step {step}; lower the learning "
                f"rate or check the inputs"
            )
        batch_weight = float(weights.sum())
        self.total += loss * batch_weight
        self.weight += batch_weight
        self.examples += int(weights.numel())

    def record(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": self.total / self.weight,
            "examples": self.examples,
            "seconds": time.perf_counter() - self.started,
        }


def _dataset_len(data: Dataset[Any]) -> int:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"data must be a map-style Dataset with __len__, got {type(data).__name__}"
        ) from None


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# --- plain: one process, one optimizer ----------------------------------------------------


def _fit_plain(model: nn.Sequential, data: Dataset[Any], spec: FitSpec) -> FitResult:
    n_items = _dataset_len(data)
    torch.manual_seed(spec.seed)
    model.train()
    optimizer = spec.optimizer(model.parameters())
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if spec.resume and spec.checkpoint_dir is not None:
        found = latest_checkpoint(spec.checkpoint_dir)
        if found is not None:
            state = load_checkpoint(found)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizers"][0])
            history = list(state["history"])
            start_epoch = int(state["epoch"]) + 1
            if "rng" in state:
                torch.set_rng_state(state["rng"])
    steps = len(spec.batches(n_items, 0))
    spec.emit("on_train_begin", epochs=spec.epochs, steps_per_epoch=steps, start_epoch=start_epoch)
    for epoch in range(start_epoch, spec.epochs):
        meter = EpochMeter(epoch)
        for step, indices in enumerate(spec.batches(n_items, epoch)):
            x, y, w = collate(data, indices)
            optimizer.zero_grad(set_to_none=True)
            loss = weighted_mean(spec.loss(model(x), y), w)
            value = float(loss.detach())
            meter.add(value, w, step=step)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            spec.emit("on_step_end", epoch=epoch, step=step, loss=value)
        record = meter.record()
        history.append(record)
        spec.emit("on_epoch_end", record)
        if spec.checkpoint_dir is not None:
            path = save_checkpoint(
                spec.checkpoint_dir,
                epoch=epoch,
                model_state=model.state_dict(),
                optimizer_states=[optimizer.state_dict()],
                history=history,
                strategy="plain",
            )
            spec.emit("on_checkpoint", path, epoch)
    spec.emit("on_train_end", history)
    return FitResult(model=model.cpu(), history=history)
