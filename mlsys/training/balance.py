"""Balance: cut an ``nn.Sequential`` into contiguous pipeline stages of even cost.

A pipeline runs at the pace of its slowest stage, so the partition that matters is the one
that minimises the largest stage cost. :func:`partition` finds it exactly by dynamic
programming over the cut points (greedy filling can miss it by a whole layer). The costs
come from :func:`profile`: each layer's forward+backward time on a sample micro-batch
(``by="time"``), or its parameter bytes plus output activation bytes (``by="size"``).

    costs = profile(model, sample_microbatch, by="time").costs
    counts = partition(costs, stages=2)          # e.g. [5, 3]: layers per stage
    stage_modules = split(model, counts)         # keeps the model's layer names
"""

from __future__ import annotations

import copy
import statistics
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["Profile", "check_balance", "partition", "profile", "split", "stage_bounds"]

CostKind = Literal["time", "size"]


@dataclass(frozen=True)
class Profile:
    """One cost per layer, and the model's output on the sample (for checking the loss)."""

    costs: list[float]
    output: torch.Tensor


def partition(costs: Sequence[float], stages: int) -> list[int]:
    """Layers per stage for ``stages`` contiguous, non-empty stages whose largest total cost
    is as small as possible (exact).

    ``best[k][i]`` is the smallest achievable maximum when the first ``i`` layers form ``k``
    stages: ``min over j < i of max(best[k-1][j], cost(j..i))``; O(stages * n^2) for n
    layers, which is nothing next to training.
    """
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot split {n} layers into {stages} non-empty stages")
    bad = [(i, c) for i, c in enumerate(costs) if not c >= 0]
    if bad:
        raise ValueError(
            f"layer costs must be non-negative numbers, got {bad[0][1]} at {bad[0][0]}"
        )
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + float(cost))
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        # i layers in k stages needs i >= k, and leaves >= stages - k layers for the rest.
        for i in range(k, n - (stages - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    counts: list[int] = []
    end = n
    for k in range(stages, 0, -1):
        start = cut[k][end]
        counts.append(end - start)
        end = start
    return counts[::-1]


def check_balance(balance: Sequence[int], stages: int, n_layers: int) -> None:
    """Raise ValueError naming the values unless ``balance`` gives ``stages`` positive
    layer counts that add up to ``n_layers``."""
    counts = list(balance)
    if len(counts) != stages:
        raise ValueError(f"balance {counts} has {len(counts)} entries but stages={stages}")
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise ValueError(f"balance {counts} must hold positive integers (layers per stage)")
    if sum(counts) != n_layers:
        raise ValueError(
            f"balance {counts} sums to {sum(counts)} but the model has {n_layers} layers"
        )


def stage_bounds(balance: Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` layer index ranges of the stages."""
    bounds, start = [], 0
    for count in balance:
        bounds.append((start, start + count))
        start += count
    return bounds


def split(model: nn.Sequential, balance: Sequence[int]) -> list[nn.Sequential]:
    """The stages as ``nn.Sequential``s over the model's own layer objects, keeping their
    names ("3", "4", ...), so a stage's state dict keys are the full model's keys and the
    stages' state dicts merge back into the model's without renaming."""
    check_balance(balance, len(balance), len(model))
    names = list(model._modules)
    return [
        nn.Sequential(OrderedDict((name, model._modules[name]) for name in names[a:b]))
        for a, b in stage_bounds(balance)
    ]


def profile(
    model: nn.Sequential, sample: torch.Tensor, *, by: CostKind, repeats: int = 5
) -> Profile:
    """Each layer's cost on ``sample`` (one micro-batch), layer by layer.

    ``"time"``: median forward+backward seconds of ``repeats`` runs after one warm-up.
    ``"size"``: parameter bytes + output activation bytes, from one forward pass.

    Layers run as deep copies in their current mode and under a forked RNG, so profiling
    changes neither the weights, nor buffers such as batch-norm statistics, nor the random
    stream training will draw. A layer that fails on its input raises ValueError naming the
    layer and the input shape: a model whose layers do not chain can't be pipelined.
    """
    if by not in ("time", "size"):
        raise ValueError(f'by must be "time" or "size", got {by!r}')
    costs: list[float] = []
    x = sample
    # A layer computes its input's gradient only if something before it has parameters
    # (or the sample itself needs one): the first layer's backward is cheaper.
    needs_grad = sample.requires_grad
    with torch.random.fork_rng(devices=[]):
        for index, layer in enumerate(model):
            probe = copy.deepcopy(layer).to(x.device)
            try:
                if by == "time":
                    cost, out = _time_layer(probe, x, needs_grad, repeats)
                else:
                    with torch.no_grad():
                        out = probe(x)
                    cost = float(_nbytes(probe) + _tensor_bytes(out))
            except Exception as exc:
                raise ValueError(
                    f"layer {index} ({type(layer).__name__}) fails on an input of shape "
                    f"{tuple(x.shape)} ({x.dtype}): {exc}"
                ) from exc
            if not isinstance(out, torch.Tensor):
                raise ValueError(
                    f"layer {index} ({type(layer).__name__}) returns {type(out).__name__}; "
                    f"pipeline stages pass one tensor between layers"
                )
            costs.append(cost)
            needs_grad = needs_grad or any(p.requires_grad for p in probe.parameters())
            x = out.detach()
    return Profile(costs=costs, output=x)


def _time_layer(
    layer: nn.Module, x: torch.Tensor, needs_grad: bool, repeats: int
) -> tuple[float, torch.Tensor]:
    """Median seconds of forward + backward of ``layer`` on ``x``, and its output."""
    times = []
    out = x
    for _ in range(repeats + 1):
        inp = x.detach().requires_grad_(needs_grad and x.is_floating_point())
        layer.zero_grad(set_to_none=True)
        _synchronize(x.device)
        started = time.perf_counter()
        out = layer(inp)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.backward(torch.ones_like(out))  # type: ignore[no-untyped-call]
        _synchronize(x.device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]), out


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nbytes(layer: nn.Module) -> int:
    return sum(_tensor_bytes(p) for p in layer.parameters())


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
