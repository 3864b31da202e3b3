"""The shard planner shared by Spill and SHARP: what each layer of an ``nn.Sequential``
needs on the device while it trains (:func:`layer_footprints`), what a run of consecutive
layers needs as one shard (:func:`shard_footprint`, :func:`shard_resident`), and where to
cut the model so that every shard fits a budget (:func:`pack`, :class:`ShardPlan`).
:class:`~mlsys.training.spill.Spill` plans with it for one device, and
:func:`~mlsys.training.sharp.train_many` for each of its jobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from mlsys.training.balance import stage_bounds
from mlsys.training.fit import OptimizerFactory
from mlsys.training.shards.store import tensor_nbytes as _nbytes

__all__ = [
    "LayerFootprint",
    "ShardPlan",
    "is_meta",
    "layer_footprints",
    "pack",
    "shard_footprint",
    "shard_resident",
]


@dataclass(frozen=True)
class LayerFootprint:
    """Device bytes one layer needs while it trains, for one mini-batch of the planned size.

    ``optimizer_state`` is measured, not guessed: the optimizer is built over meta-device
    copies of the layer's parameters and takes one step on zero gradients, so whatever state
    it keeps (nothing for plain SGD, one buffer for momentum, two for Adam, three with
    ``amsgrad``) is counted from the tensors it creates. Activation sizes come from running
    the layer on the meta device with the full batch shape: shapes without memory."""

    index: int
    name: str
    kind: str
    params: int
    buffers: int
    grads: int
    optimizer_state: int
    largest_param: int
    input_bytes: int
    output_bytes: int

    @property
    def total(self) -> int:
        """The footprint of this layer as a shard of its own."""
        return shard_footprint([self])

    def breakdown(self) -> str:
        return (
            f"parameters {self.params}, gradients {self.grads}, optimizer state "
            f"{self.optimizer_state}, buffers {self.buffers}, step scratch "
            f"{2 * self.largest_param}, activations {_activation_bytes([self])}"
        )


def shard_footprint(layers: Sequence[LayerFootprint]) -> int:
    """Device bytes while a shard of these consecutive layers trains: its weights
    (parameters and buffers), gradients and optimizer state; scratch for the optimizer step
    (two tensors the size of its largest parameter: Adam's denominator takes that); its
    input and the input's gradient, every layer's output (kept for backward) and two
    gradient buffers the size of the largest output."""
    weights = sum(layer.params + layer.buffers for layer in layers)
    grads = sum(layer.grads for layer in layers)
    state = sum(layer.optimizer_state for layer in layers)
    scratch = 2 * max(layer.largest_param for layer in layers)
    return weights + grads + state + scratch + _activation_bytes(layers)


def shard_resident(layers: Sequence[LayerFootprint]) -> int:
    """Bytes a shard occupies while it moves between the tier and the device: weights,
    optimizer state and its input activation."""
    return sum(layer.params + layer.buffers + layer.optimizer_state for layer in layers) + (
        layers[0].input_bytes
    )


def _activation_bytes(layers: Sequence[LayerFootprint]) -> int:
    outputs = [layer.output_bytes for layer in layers]
    return 2 * layers[0].input_bytes + sum(outputs) + 2 * max(outputs)


@dataclass(frozen=True)
class ShardPlan:
    """The layers' footprints and how many consecutive layers each shard holds."""

    layers: tuple[LayerFootprint, ...]
    counts: tuple[int, ...]
    budget: int

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` layer index ranges of the shards."""
        return stage_bounds(self.counts)

    def shard_layers(self, shard: int) -> tuple[LayerFootprint, ...]:
        start, stop = self.bounds[shard]
        return self.layers[start:stop]

    def footprint(self, shard: int) -> int:
        return shard_footprint(self.shard_layers(shard))

    def resident(self, shard: int) -> int:
        return shard_resident(self.shard_layers(shard))

    def overlaps(self, running: int, moving: int) -> bool:
        """Whether ``moving`` may be in transit while ``running`` computes."""
        return self.footprint(running) + self.resident(moving) <= self.budget

    def peak(self, *, prefetch: bool) -> int:
        """The most device bytes the schedule holds at once: a running shard's footprint,
        plus, with prefetch, the resident bytes of a neighbour moving meanwhile (when both
        fit; otherwise the move waits)."""
        out = 0
        for s in range(len(self.counts)):
            moving = [
                self.resident(t)
                for t in (s - 1, s + 1)
                if prefetch and 0 <= t < len(self.counts) and self.overlaps(s, t)
            ]
            out = max(out, self.footprint(s) + max(moving, default=0))
        return out

    def describe(self) -> str:
        """One line per shard: its layers, footprint and resident bytes."""
        lines = []
        for s, (start, stop) in enumerate(self.bounds):
            lines.append(
                f"shard {s}: layers {start}..{stop - 1}, footprint {self.footprint(s)} B, "
                f"resident {self.resident(s)} B"
            )
        return "\n".join(lines)


def layer_footprints(
    model: nn.Sequential, sample: torch.Tensor, optimizer: OptimizerFactory, *, batch_size: int
) -> list[LayerFootprint]:
    """Each layer's :class:`LayerFootprint` for mini-batches of ``batch_size`` inputs shaped
    like ``sample[0]``. Nothing is allocated: shapes come from the meta device. A layer that
    fails there (an op without a meta kernel) is run for real on two zero inputs and its
    output size scaled linearly to ``batch_size``; a layer still on the meta device can't
    be, and raises."""
    x = torch.empty((batch_size, *sample.shape[1:]), dtype=sample.dtype, device="meta")
    state_bytes: dict[Any, int] = {}
    out: list[LayerFootprint] = []
    for index, (name, layer) in enumerate(model._modules.items()):
        assert layer is not None
        params = list(layer.parameters())
        buffers = [b for b in layer.buffers()]
        y = _infer_output(index, layer, x)
        signature = tuple((tuple(p.shape), p.dtype, p.requires_grad) for p in params)
        if signature not in state_bytes:
            state_bytes[signature] = _optimizer_state_bytes(optimizer, params, index, layer)
        out.append(
            LayerFootprint(
                index=index,
                name=name,
                kind=type(layer).__name__,
                params=sum(_nbytes(p) for p in params),
                buffers=sum(_nbytes(b) for b in buffers),
                grads=sum(_nbytes(p) for p in params if p.requires_grad),
                optimizer_state=state_bytes[signature],
                largest_param=max((_nbytes(p) for p in params), default=0),
                input_bytes=_nbytes(x),
                output_bytes=_nbytes(y),
            )
        )
        x = y
    return out


def pack(footprints: Sequence[LayerFootprint], budget: int, *, prefetch: bool) -> list[int]:
    """Layers per shard: consecutive layers, filled greedily while the shard's footprint
    stays within ``budget`` (half of it with ``prefetch``, which holds two shards at once).
    A layer between half the budget and the budget gets a shard of its own; a layer over
    the budget can't train and raises ValueError naming it and its size."""
    if not footprints:
        raise ValueError("the model has no layers")
    for layer in footprints:
        if layer.total > budget:
            raise ValueError(
                f"layer {layer.index} ({layer.kind}) needs {layer.total} bytes on the device "
                f"({layer.breakdown()}) but budget_bytes={budget}; a shard holds at least "
                f"one layer: raise the budget to {layer.total} or more, or make the batch "
                f"smaller"
            )
    cap = budget // 2 if prefetch else budget
    counts: list[int] = []
    current: list[LayerFootprint] = []
    for layer in footprints:
        if current and shard_footprint([*current, layer]) > cap:
            counts.append(len(current))
            current = []
        current.append(layer)
    counts.append(len(current))
    return counts


def _infer_output(index: int, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    tensors = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*layer.named_parameters(), *layer.named_buffers()]
    }
    try:
        y = functional_call(layer, tensors, (x,))
    except Exception as meta_error:
        if is_meta(layer):
            raise ValueError(
                f"layer {index} ({type(layer).__name__}) fails on the meta device on an "
                f"input of shape {tuple(x.shape)} ({x.dtype}), so its activation size "
                f"can't be inferred: {meta_error}"
            ) from meta_error
        y = _probe_output(index, layer, x)
    if not isinstance(y, torch.Tensor):
        raise ValueError(
            f"layer {index} ({type(layer).__name__}) returns {type(y).__name__}; Spill "
            f"passes one tensor between layers"
        )
    return y.to("meta")


def _probe_output(index: int, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output shape of a layer the meta device can't run: two real zero inputs, with
    copies of the buffers (so batch-norm statistics don't move) and a forked RNG."""
    probe = torch.zeros((2, *x.shape[1:]), dtype=x.dtype)
    tensors = {
        **dict(layer.named_parameters()),
        **{name: b.clone() for name, b in layer.named_buffers()},
    }
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            y = functional_call(layer, tensors, (probe,))
    except Exception as exc:
        raise ValueError(
            f"layer {index} ({type(layer).__name__}) fails on an input of shape "
            f"{tuple(probe.shape)} ({x.dtype}): {exc}"
        ) from exc
    if not isinstance(y, torch.Tensor):
        return y  # type: ignore[no-any-return]
    return torch.empty((x.shape[0], *y.shape[1:]), dtype=y.dtype, device="meta")


def _optimizer_state_bytes(
    optimizer: OptimizerFactory, params: list[nn.Parameter], index: int, layer: nn.Module
) -> int:
    """Bytes of optimizer state for ``params``: one dry step over meta copies (exact, no
    memory); if the optimizer can't step on the meta device, one step over 64-element CPU
    stand-ins, scaling state the size of a stand-in to the real parameter."""
    if not params:
        return 0
    try:
        stand_ins = [
            _stand_in(p, torch.empty(p.shape, dtype=p.dtype, device="meta")) for p in params
        ]
        return sum(_nbytes(t) for t in _dry_step(optimizer, stand_ins))
    except Exception:  # the optimizer can't step on meta tensors: stand-ins below
        pass
    try:
        small = [_stand_in(p, torch.zeros(64, dtype=p.dtype)) for p in params]
        total = 0
        dry = _dry_step_per_param(optimizer, small)
        for param, tensors in zip(params, dry, strict=True):
            for t in tensors:
                total += _nbytes(t) * param.numel() // 64 if t.numel() == 64 else _nbytes(t)
        return total
    except Exception as exc:
        raise ValueError(
            f"the optimizer fails a dry step over the parameters of layer {index} "
            f"({type(layer).__name__}): {exc}; Spill measures optimizer state that way, and "
            f"calls step() without a closure, like every strategy"
        ) from exc


def _stand_in(param: nn.Parameter, data: torch.Tensor) -> nn.Parameter:
    stand_in = nn.Parameter(data, requires_grad=param.requires_grad)
    if param.requires_grad:
        stand_in.grad = torch.zeros_like(data)
    return stand_in


def _dry_step(optimizer: OptimizerFactory, params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [t for tensors in _dry_step_per_param(optimizer, params) for t in tensors]


def _dry_step_per_param(
    optimizer: OptimizerFactory, params: list[nn.Parameter]
) -> list[list[torch.Tensor]]:
    opt = optimizer(params)
    opt.step()
    return [
        [v for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor)] for p in params
    ]


def is_meta(layer: nn.Module) -> bool:
    """Whether any of ``layer``'s parameters or buffers is on the meta device."""
    return any(t.is_meta for t in [*layer.parameters(), *layer.buffers()])
