"""Krypton-style incremental CNN inference: recompute only the part of a frame that changed.

Consecutive video frames share most of their pixels, so most of a CNN's intermediate
activations are the same from one frame to the next. Krypton (Nakandala, Kumar and
Papakonstantinou, "Incremental and Approximate Inference for Faster Occlusion-based Deep
CNN Explanations", SIGMOD 2019; "Incremental and approximate computations for accelerating
deep CNN inference", TODS 2020) treats those activations as materialised views: run the
network once on a base frame and keep the input of every spatial layer; for each next
frame, find the box of changed pixels, map it through each layer by receptive-field
arithmetic, recompute only the output positions whose window touches the changed region
(from the stored, already updated input), paste them into the stored output and reuse the
rest. The head (Flatten / Linear / ...) is small and is recomputed in full.

How a changed span ``[a, b)`` of input rows (likewise columns) maps through a layer with
kernel ``k``, stride ``s``, top padding ``p`` and ``n`` output rows. Output row ``o`` reads
input rows ``[o*s - p, o*s - p + k)``, so it must be recomputed when that window meets
``[a, b)``::

    first = max(0, floor((a + p - k) / s) + 1)
    last  = min(n, ceil((b + p) / s))            # exclusive

    e.g. k=3, s=1, p=1 (a 3x3 "same" conv): rows [10, 12) -> [9, 13)  (grows by 1 a side)
         k=2, s=2, p=0 (a 2x2 max pool):    rows [9, 13)  -> [4, 7)   (halves, rounded out)

The recomputed outputs ``[first, last)`` read rows ``[first*s, (last-1)*s + k)`` of the
input padded once at the start (padding is stored with the activation: zeros for
convolutions and average pools, -inf for max pools), so a layer on a slice computes with
padding 0 and borders need no special case. A span can become empty (a stride-2, 1x1 conv
skips odd rows): then nothing downstream changes. Pointwise layers (eval-mode batch norm,
activations) run on each recomputed box right after the spatial layer before them, so only
the inputs of spatial layers (convolutions and pools) and the trunk's output are stored.

With ``max_regions > 1``, separate changes (two objects moving apart) may be planned as
separate boxes, found by XY cuts of the changed-pixel mask; each stage recomputes every
box from its own stored input before the next stage starts, and boxes that come to
overlap merge.

A cost model decides per frame: the work of the planned recomputation is the sum over
spatial layers of recomputed output positions times the multiply-adds per position
(``C_in/groups * C_out * kh * kw`` for a convolution, ``C * kh * kw`` for a pool, plus
``C`` per pointwise layer); when it exceeds ``max_recompute_fraction`` of the work of the
full trunk, the frame is run in full and becomes the new base frame.

Why one module: the geometry (spans, boxes, cuts), the layer stages and the cost model serve
`IncrementalCNN` only; a good part of the length is this docstring and the class's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Box", "FrameStats", "IncrementalCNN", "IncrementalStats", "Mode"]

Box = tuple[int, int, int, int]
"""A region of a feature map as ``(top, bottom, left, right)``, half-open: rows
``top:bottom``, columns ``left:right``."""

Mode = Literal["prime", "cached", "incremental", "full"]
"""How a frame was computed: ``prime`` (a base frame given to ``prime``), ``cached`` (no
pixel changed: the stored output is returned), ``incremental`` (only the changed region was
recomputed), ``full`` (the planned recomputation was too large: the whole trunk was run)."""

Pair = tuple[int, int]

# What recomputing one more box costs beyond its multiply-adds (slicing, a copy, a few
# kernel launches: some 10-20 us), in multiply-adds of one core at about 30 GMAC/s. Only
# the choice between separate boxes and their bounding box counts it: it keeps a small
# network from splitting a change into boxes that save less time than they cost.
_BOX_OVERHEAD = 500_000

# Layers that act on each position independently: a changed region stays the same region.
_POINTWISE: tuple[type[nn.Module], ...] = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
# Layers that end the trunk and start the head; the head is computed in full.
_HEAD_START: tuple[type[nn.Module], ...] = (
    nn.Flatten,
    nn.Linear,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_HEAD: tuple[type[nn.Module], ...] = (
    *_HEAD_START,
    *_POINTWISE,
    nn.BatchNorm1d,
    nn.Softmax,
    nn.LogSoftmax,
)
_SUPPORTED = (
    "Conv2d, MaxPool2d, AvgPool2d, BatchNorm2d and pointwise activations / dropout in the "
    "trunk; Flatten, Linear, AdaptiveAvgPool2d, AdaptiveMaxPool2d, BatchNorm1d, Softmax, "
    "LogSoftmax, activations and dropout in the head"
)


@dataclass(frozen=True)
class FrameStats:
    """What one ``prime`` / ``infer`` call did.

    Attributes:
        mode: how the frame was computed (see :data:`Mode`).
        recomputed_fraction: trunk work done over the work of a full trunk pass: 0 for an
            identical frame, 1 for a full pass (``prime`` or a fallback).
        planned_fraction: the work the incremental plan would have taken, as a fraction; it
            equals ``recomputed_fraction`` unless the frame fell back to a full pass.
        fell_back: the plan exceeded ``max_recompute_fraction`` and the trunk ran in full.
        changed_box: the bounding box of the changed input pixels, or None when nothing
            changed (and for ``prime``).
        regions: the boxes of changed pixels whose consequences were planned separately:
            ``(changed_box,)``, or up to ``max_regions`` smaller boxes when separate changes
            (two moving objects) are cheaper to recompute apart; empty when nothing changed.
        seconds: wall time of the call.
    """

    mode: Mode
    recomputed_fraction: float
    planned_fraction: float
    fell_back: bool
    changed_box: Box | None
    regions: tuple[Box, ...]
    seconds: float


@dataclass
class IncrementalStats:
    """Running totals over every frame an :class:`IncrementalCNN` has computed."""

    frames: int = 0
    primes: int = 0
    cached: int = 0
    incremental: int = 0
    full: int = 0
    recomputed_work: float = 0.0
    """Sum of the frames' ``recomputed_fraction``: in units of full trunk passes."""
    seconds: float = 0.0

    @property
    def mean_recomputed_fraction(self) -> float:
        """Average fraction of the trunk recomputed per frame (0 before any frame)."""
        return self.recomputed_work / self.frames if self.frames else 0.0

    def add(self, stats: FrameStats) -> None:
        """Count one frame."""
        self.frames += 1
        self.recomputed_work += stats.recomputed_fraction
        self.seconds += stats.seconds
        if stats.mode == "prime":
            self.primes += 1
        elif stats.mode == "cached":
            self.cached += 1
        elif stats.mode == "incremental":
            self.incremental += 1
        else:
            self.full += 1


@dataclass(frozen=True)
class _Stage:
    """One spatial layer with the pointwise layers after it, which run on its output region.

    ``kind == "identity"`` is a stage of pointwise layers only (those before the first
    spatial layer): a 1x1 window with stride 1.
    """

    name: str
    kind: Literal["conv", "max", "avg", "identity"]
    layers: tuple[nn.Module, ...]  # every layer of the stage, in order, for a full pass
    pointwise: tuple[nn.Module, ...]
    kernel: Pair  # the extent of a window, dilation included
    stride: Pair
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    fill: float  # the value of padding: 0, or -inf for a max pool
    divide_by_count: bool = False  # an average pool that leaves padding out of its divisor
    any_inplace: bool = False


@dataclass
class _Geometry:
    """The stored activations of one stage for the current base-frame size."""

    buffer: torch.Tensor  # the stage's input, padded: (1, C, top + H + bottom, left + W + right)
    interior: torch.Tensor  # the unpadded input: a view into ``buffer``
    out_hw: Pair
    cost: int  # multiply-adds per output position
    counts: torch.Tensor | None  # (1, 1, Ho, Wo) divisors of an avg pool without padding


def _pair(value: int | tuple[int, ...], what: str, name: str) -> Pair:
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ValueError(f"layer {name} has {what}={value!r}; expected an int or a pair")
    return int(value[0]), int(value[1])


def _span(a: int, b: int, kernel: int, stride: int, pad: int, n_out: int) -> Pair:
    """Output positions whose window meets input positions ``[a, b)`` (see module doc)."""
    first = max(0, (a + pad - kernel) // stride + 1)
    last = min(n_out, -(-(b + pad) // stride))
    return first, last


def _area(box: Box) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def _tight(pixels: np.ndarray, top: int, bottom: int, left: int, right: int) -> Box:
    """The smallest box holding the set pixels of ``pixels[top:bottom, left:right]``."""
    sub = pixels[top:bottom, left:right]
    rows = np.flatnonzero(sub.any(axis=1))
    cols = np.flatnonzero(sub.any(axis=0))
    return (
        top + int(rows[0]),
        top + int(rows[-1]) + 1,
        left + int(cols[0]),
        left + int(cols[-1]) + 1,
    )


def _widest_cut(pixels: np.ndarray, box: Box) -> tuple[int, Box, Box] | None:
    """The widest band of unchanged rows or columns across a tight ``box``, as (width,
    the tight box before it, the tight box after it), or None when there is none."""
    top, bottom, left, right = box
    sub = pixels[top:bottom, left:right]
    best: tuple[int, Box, Box] | None = None
    for axis in (1, 0):  # axis 1: a band of rows; 0: of columns
        used = np.flatnonzero(sub.any(axis=axis))
        if len(used) < 2:
            continue
        gaps = np.diff(used) - 1
        k = int(gaps.argmax())
        if gaps[k] == 0 or (best is not None and gaps[k] <= best[0]):
            continue
        end, start = int(used[k]) + 1, int(used[k + 1])
        if axis == 1:
            parts = (
                _tight(pixels, top, top + end, left, right),
                _tight(pixels, top + start, bottom, left, right),
            )
        else:
            parts = (
                _tight(pixels, top, bottom, left, left + end),
                _tight(pixels, top, bottom, left + start, right),
            )
        best = (int(gaps[k]), *parts)
    return best


def _cut_regions(pixels: np.ndarray, box: Box, max_regions: int) -> list[Box]:
    """Split the changed pixels (``pixels``, H x W bool; ``box`` their bounding box) into
    up to ``max_regions`` tight boxes by recursive XY cuts: repeatedly cut the box with
    the widest band of unchanged rows or columns across it (Nagy and Seth, "Hierarchical
    representation of optically scanned documents", 1984)."""
    regions = [box]
    cuts = [_widest_cut(pixels, box)]
    while len(regions) < max_regions:
        widths = [cut[0] if cut is not None else 0 for cut in cuts]
        i = int(np.argmax(widths))
        cut = cuts[i]
        if cut is None:
            break
        _, first, second = cut
        regions[i : i + 1] = [first, second]
        cuts[i : i + 1] = [_widest_cut(pixels, first), _widest_cut(pixels, second)]
    return regions


def _merge_overlapping(boxes: list[Box]) -> list[Box]:
    """Replace any two boxes that overlap, or whose bounding box is no larger than the two
    together, by that bounding box, until no such pair is left."""
    merged = list(boxes)
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                (t1, b1, l1, r1), (t2, b2, l2, r2) = merged[i], merged[j]
                union = (min(t1, t2), max(b1, b2), min(l1, l2), max(r1, r2))
                overlap = min(b1, b2) > max(t1, t2) and min(r1, r2) > max(l1, l2)
                if overlap or _area(union) <= _area(merged[i]) + _area(merged[j]):
                    merged[i] = union
                    del merged[j]
                    changed = True
                    break
            if changed:
                break
    return merged


def _flatten(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The leaf layers of nested ``nn.Sequential``s with their dotted indices."""
    for name, child in model.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _flatten(child, f"{full}.")
        else:
            yield full, child


def _conv_stage(name: str, conv: nn.Conv2d) -> _Stage:
    if conv.padding_mode != "zeros":
        raise ValueError(
            f"layer {name} (Conv2d) has padding_mode={conv.padding_mode!r}; only 'zeros' "
            f"is supported"
        )
    kernel = _pair(conv.kernel_size, "kernel_size", name)
    dilation = _pair(conv.dilation, "dilation", name)
    extent = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            pad = (0, 0, 0, 0)
        else:  # "same": PyTorch puts the odd extra row/column at the bottom/right
            th, tw = extent[0] - 1, extent[1] - 1
            pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        ph, pw = _pair(conv.padding, "padding", name)
        pad = (ph, ph, pw, pw)
    return _Stage(
        name=name,
        kind="conv",
        layers=(conv,),
        pointwise=(),
        kernel=extent,
        stride=_pair(conv.stride, "stride", name),
        pad=pad,
        fill=0.0,
    )


def _pool_stage(name: str, pool: nn.MaxPool2d | nn.AvgPool2d) -> _Stage:
    kind = type(pool).__name__
    if pool.ceil_mode:
        raise ValueError(f"layer {name} ({kind}) has ceil_mode=True; only False is supported")
    kernel = _pair(pool.kernel_size, "kernel_size", name)
    stride = _pair(pool.stride if pool.stride is not None else kernel, "stride", name)
    ph, pw = _pair(pool.padding, "padding", name)
    if isinstance(pool, nn.MaxPool2d):
        if pool.return_indices:
            raise ValueError(f"layer {name} (MaxPool2d) has return_indices=True; unsupported")
        dilation = _pair(pool.dilation, "dilation", name)
        extent = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        return _Stage(name, "max", (pool,), (), extent, stride, (ph, ph, pw, pw), -math.inf)
    divide_by_count = not pool.count_include_pad and (ph or pw) and pool.divisor_override is None
    return _Stage(
        name, "avg", (pool,), (), kernel, stride, (ph, ph, pw, pw), 0.0, bool(divide_by_count)
    )


class IncrementalCNN:
    """Incremental inference of a CNN over a stream of frames (Krypton).

    Usage::

        inc = IncrementalCNN(model.eval(), max_recompute_fraction=0.5)
        out = inc.prime(video[0])             # == model(video[0:1]); stores activations
        for frame in video[1:]:
            out = inc.infer(frame)            # == model(frame[None]), recomputing only
            inc.last_stats.recomputed_fraction   # the changed region; 0.0 .. 1.0
        inc.stats.mean_recomputed_fraction

        outs, stats = IncrementalCNN(model).infer_many(video)   # the same, in one call

    The paper: Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference
    for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019. The algorithm and the
    cost model are described in this module's docstring.

    The model is an ``nn.Sequential`` (nested ones are flattened) made of a *trunk* of
    ``Conv2d`` (any kernel, stride, padding including ``"same"``, groups and dilation;
    ``padding_mode="zeros"``), ``MaxPool2d``, ``AvgPool2d`` (``ceil_mode=False``; either
    ``count_include_pad``), ``BatchNorm2d`` and pointwise activations or dropout, then a
    *head* starting at the first ``Flatten``, ``Linear``, ``AdaptiveAvgPool2d`` or
    ``AdaptiveMaxPool2d``, computed in full. Any other layer raises ValueError naming its
    index and type.

    Batch norm and dropout must be in eval mode: a layer in training mode raises ValueError
    naming it (at construction, and again at every ``prime`` and ``infer``), because with
    batch statistics or random masks ``model(frame)`` is not a function of the frame alone;
    call ``model.eval()``. The model is used, not copied: change its weights and call
    ``prime`` again.

    A frame is ``(C, H, W)`` or ``(1, C, H, W)`` and is always computed as a batch of one:
    every call returns what ``model(frame.reshape(1, C, H, W))`` returns, with its batch
    dimension of 1, as a new tensor the caller owns. All later frames must have the base
    frame's shape, dtype and device. Work runs under ``torch.inference_mode``. Outputs
    equal the full model's up to float rounding: recomputed boxes run the same kernels on
    smaller inputs (differences of about 1e-7 on VGG-11 in float32).

    Args:
        model: the network, in eval mode.
        threshold: a pixel has changed when ``|new - stored| > threshold`` in any channel.
            0 (the default) is exact: any difference counts. With a larger threshold,
            changes up to it are ignored; the stored frame keeps the old pixels there, so a
            slow drift is still caught once it exceeds the threshold.
        max_recompute_fraction: in [0, 1]; when the planned recomputation would cost more
            than this fraction of a full trunk pass, the trunk is run in full instead and the
            frame becomes the new base frame. 1 never falls back; 0 always does on change.
        max_regions: how many separate boxes of changed pixels a frame may be split into
            (two objects moving apart change two small boxes, whose bounding box is large).
            1 (the default) is Krypton's single changed box. With more, boxes are found by
            XY cuts, kept apart only while the cost model says that is cheaper than their
            bounding box, and merged once their regions overlap deeper in the network. It
            pays off on large networks; on a small one (a few million multiply-adds) the
            extra per-box overhead eats the saving.
    """

    def __init__(
        self,
        model: nn.Sequential,
        *,
        threshold: float = 0.0,
        max_recompute_fraction: float = 0.5,
        max_regions: int = 1,
    ) -> None:
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
        if not (isinstance(threshold, int | float) and 0 <= threshold < math.inf):
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
        if not (
            isinstance(max_recompute_fraction, int | float) and 0 <= max_recompute_fraction <= 1
        ):
            raise ValueError(
                f"max_recompute_fraction must be in [0, 1], got {max_recompute_fraction!r}"
            )
        self.model = model
        self.threshold = float(threshold)
        self.max_recompute_fraction = float(max_recompute_fraction)
        if isinstance(max_regions, bool) or not isinstance(max_regions, int) or max_regions < 1:
            raise ValueError(f"max_regions must be an int >= 1, got {max_regions!r}")
        self.max_regions = max_regions
        self._stages, self._head = self._split(model)
        self._modal = [
            (name, layer)
            for name, layer in _flatten(model)
            if isinstance(layer, nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd)
        ]
        self._check_modes()
        # An in-place layer in the head would overwrite the stored trunk output.
        self._head_inplace = any(getattr(layer, "inplace", False) for layer in self._head)
        self._geometry: list[_Geometry] = []
        self._trunk_out: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._shape: tuple[int, ...] = ()
        self._given_shape: tuple[int, ...] = ()
        self._dtype = torch.float32
        self._device = torch.device("cpu")
        self._full_cost = 0
        self.last_stats: FrameStats | None = None
        self.stats = IncrementalStats()

    # --- construction ---------------------------------------------------------------------

    @staticmethod
    def _split(model: nn.Sequential) -> tuple[list[_Stage], list[nn.Module]]:
        """Group the trunk into stages and return them with the head's layers."""
        stages: list[_Stage] = []
        head: list[nn.Module] = []
        for name, layer in _flatten(model):
            kind = type(layer).__name__
            if head or isinstance(layer, _HEAD_START):
                if not isinstance(layer, _HEAD):
                    raise ValueError(
                        f"layer {name} ({kind}) is not supported in the head; supported: "
                        f"{_SUPPORTED}"
                    )
                head.append(layer)
            elif isinstance(layer, nn.Conv2d):
                stages.append(_conv_stage(name, layer))
            elif isinstance(layer, nn.MaxPool2d | nn.AvgPool2d):
                stages.append(_pool_stage(name, layer))
            elif isinstance(layer, _POINTWISE):
                if not stages:  # pointwise layers before the first spatial one: a 1x1 stage
                    stages.append(
                        _Stage(name, "identity", (), (), (1, 1), (1, 1), (0, 0, 0, 0), 0.0)
                    )
                last = stages[-1]
                stages[-1] = replace(
                    last,
                    layers=(*last.layers, layer),
                    pointwise=(*last.pointwise, layer),
                    any_inplace=last.any_inplace or bool(getattr(layer, "inplace", False)),
                )
            else:
                raise ValueError(f"layer {name} ({kind}) is not supported; supported: {_SUPPORTED}")
        if not stages:
            raise ValueError(
                "model has no spatial layers before its head (Flatten/Linear/adaptive pool): "
                "there is nothing to compute incrementally"
            )
        return stages, head

    # --- public calls -----------------------------------------------------------------------

    @property
    def primed(self) -> bool:
        """Whether a base frame has been given (``prime`` or a first ``infer_many`` frame)."""
        return self._output is not None

    def prime(self, frame: torch.Tensor) -> torch.Tensor:
        """Run the model in full on ``frame`` and store its activations as the base.

        Returns ``model(frame)`` for a ``(1, C, H, W)`` frame, or ``model(frame[None])`` for
        a ``(C, H, W)`` one (batch dimension 1 either way). Priming again, with a frame of
        any size, replaces the base.
        """
        start = time.perf_counter()
        x = self._as_batch(frame)
        self._check_modes()
        try:
            with torch.inference_mode():
                self._full(x, allocate=True)
        except BaseException:
            self._output = None  # a half-built base is no base
            raise
        self._shape = tuple(x.shape)
        self._given_shape = tuple(frame.shape)
        self._dtype, self._device = x.dtype, x.device
        return self._finish("prime", 1.0, 1.0, None, start, ())

    def infer(self, frame: torch.Tensor) -> torch.Tensor:
        """``model(frame)`` for the next frame, recomputing only what changed since the last.

        The stored activations are brought up to date with ``frame``; ``last_stats`` says
        how much was recomputed. Raises RuntimeError before ``prime`` and ValueError for a
        frame whose shape, dtype or device differs from the base frame's.
        """
        start = time.perf_counter()
        if not self.primed:
            raise RuntimeError("infer() needs a base frame: call prime(frame) first")
        x = self._as_batch(frame)
        self._check_same(x, frame)
        self._check_modes()
        with torch.inference_mode():
            box, regions = self._changed_regions(x)
            mode: Mode = "cached"
            fraction = planned = 0.0
            if box is not None:
                plan, work = self._plan(regions)
                if len(regions) > 1:  # keep the split only where the cost model prefers it
                    one_plan, one_work = self._plan([box])
                    extra_boxes = sum(map(len, plan)) - len(one_plan)
                    if one_work <= work + extra_boxes * _BOX_OVERHEAD:
                        regions, plan, work = [box], one_plan, one_work
                fraction = planned = work / self._full_cost
                if planned > self.max_recompute_fraction:
                    self._full(x, allocate=False)
                    mode, fraction = "full", 1.0
                else:
                    self._update(x, regions, plan)
                    mode = "incremental"
        return self._finish(mode, fraction, planned, box, start, tuple(regions))

    def infer_many(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[FrameStats]]:
        """Run ``frames`` (``N x C x H x W``) one after the other, each incrementally against
        the one before; before any ``prime``, the first frame primes.

        Returns the outputs stacked along the batch dimension (``model(frames)`` for a
        model without batch-dependent layers) and each frame's stats.
        """
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or len(frames) == 0:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames)
            raise ValueError(f"frames must be a non-empty N x C x H x W tensor, got {shape}")
        outputs: list[torch.Tensor] = []
        stats: list[FrameStats] = []
        for i in range(len(frames)):
            frame = frames[i : i + 1]
            outputs.append(self.infer(frame) if self.primed else self.prime(frame))
            assert self.last_stats is not None
            stats.append(self.last_stats)
        return torch.cat(outputs), stats

    def reset_stats(self) -> None:
        """Zero the running totals in ``stats``."""
        self.stats = IncrementalStats()

    # --- checks -----------------------------------------------------------------------------

    @staticmethod
    def _as_batch(frame: torch.Tensor) -> torch.Tensor:
        if not isinstance(frame, torch.Tensor):
            raise TypeError(f"frame must be a torch.Tensor, got {type(frame).__name__}")
        if not frame.is_floating_point():
            raise ValueError(f"frame must be a floating-point tensor, got {frame.dtype}")
        if frame.dim() == 3:
            return frame.unsqueeze(0)
        if frame.dim() == 4 and frame.shape[0] == 1:
            return frame
        raise ValueError(
            f"frame must be C x H x W or 1 x C x H x W, got shape {tuple(frame.shape)}; "
            f"use infer_many() for a batch of frames"
        )

    def _check_same(self, x: torch.Tensor, frame: torch.Tensor) -> None:
        if tuple(x.shape) != self._shape:
            raise ValueError(
                f"frame shape {tuple(frame.shape)} does not match the base frame's shape "
                f"{self._given_shape}; call prime() with a frame of the new shape"
            )
        if x.dtype != self._dtype or x.device != self._device:
            raise ValueError(
                f"frame is {x.dtype} on {x.device} but the base frame is {self._dtype} on "
                f"{self._device}"
            )

    def _check_modes(self) -> None:
        for name, layer in self._modal:
            if layer.training:
                raise ValueError(
                    f"layer {name} ({type(layer).__name__}) is in training mode, where "
                    f"model(frame) depends on more than the frame; call model.eval() first"
                )

    # --- computation ------------------------------------------------------------------------

    def _finish(
        self,
        mode: Mode,
        fraction: float,
        planned: float,
        box: Box | None,
        start: float,
        regions: tuple[Box, ...],
    ) -> torch.Tensor:
        assert self._output is not None
        out = self._output.clone()  # outside inference mode: a normal tensor, the caller's
        stats = FrameStats(
            mode=mode,
            recomputed_fraction=fraction,
            planned_fraction=planned,
            fell_back=mode == "full",
            changed_box=box,
            regions=regions,
            seconds=time.perf_counter() - start,
        )
        self.last_stats = stats
        self.stats.add(stats)
        return out

    def _full(self, x: torch.Tensor, *, allocate: bool) -> None:
        """Run the whole model on ``x``, storing every stage's input (and, with ``allocate``,
        laying out the buffers and costs for ``x``'s size)."""
        if allocate:
            self._geometry = []
            self._full_cost = 0
        for i, stage in enumerate(self._stages):
            if allocate:
                top, bottom, left, right = stage.pad
                n, c, h, w = x.shape
                buffer = x.new_full((n, c, top + h + bottom, left + w + right), stage.fill)
                interior = buffer[:, :, top : top + h, left : left + w]
            else:
                interior = self._geometry[i].interior
            interior.copy_(x)
            y = x.clone() if stage.any_inplace and stage.kind == "identity" else x
            for layer in stage.layers:
                y = layer(y)
            if allocate:
                out_hw = (int(y.shape[2]), int(y.shape[3]))
                cost = self._cost(stage, int(x.shape[1]), int(y.shape[1]))
                counts = None
                if stage.divide_by_count:
                    valid = x.new_zeros((1, 1, *buffer.shape[2:]))
                    valid[:, :, top : top + h, left : left + w] = 1.0
                    counts = F.avg_pool2d(valid, stage.kernel, stage.stride, divisor_override=1)
                self._geometry.append(_Geometry(buffer, interior, out_hw, cost, counts))
                self._full_cost += out_hw[0] * out_hw[1] * cost
            x = y
        if allocate or self._trunk_out is None:
            self._trunk_out = x.clone(memory_format=torch.contiguous_format)
        else:
            self._trunk_out.copy_(x)
        self._output = self._run_head(x)

    @staticmethod
    def _cost(stage: _Stage, c_in: int, c_out: int) -> int:
        """Multiply-adds per output position of a stage (pointwise layers count one each)."""
        pointwise = c_out * len(stage.pointwise)
        if stage.kind == "conv":
            conv = stage.layers[0]
            assert isinstance(conv, nn.Conv2d)
            kh, kw = _pair(conv.kernel_size, "kernel_size", stage.name)
            return c_in // conv.groups * c_out * kh * kw + pointwise
        if stage.kind == "identity":
            return max(pointwise, c_out)
        return c_out * stage.kernel[0] * stage.kernel[1] + pointwise

    def _run_head(self, trunk_out: torch.Tensor) -> torch.Tensor:
        x = trunk_out.clone() if self._head_inplace else trunk_out
        for layer in self._head:
            x = layer(x)
        return x if x is not trunk_out else x.clone()

    def _changed_regions(self, x: torch.Tensor) -> tuple[Box | None, list[Box]]:
        """The bounding box of the pixels that differ from the stored frame (None if none)
        and up to ``max_regions`` boxes that cover them (see :func:`_cut_regions`)."""
        reference = self._geometry[0].interior
        if self.threshold == 0:
            changed = x[0] != reference[0]
        else:
            changed = (x[0] - reference[0]).abs_() > self.threshold
        pixels = changed.any(dim=0)  # H x W
        rows = pixels.any(dim=1).nonzero()
        if rows.numel() == 0:
            return None, []
        cols = pixels.any(dim=0).nonzero()
        box = int(rows[0, 0]), int(rows[-1, 0]) + 1, int(cols[0, 0]), int(cols[-1, 0]) + 1
        if self.max_regions == 1:
            return box, [box]
        return box, _cut_regions(pixels.cpu().numpy(), box, self.max_regions)

    def _plan(self, regions: list[Box]) -> tuple[list[list[Box]], int]:
        """Each stage's output boxes for input changes ``regions``, until none is left, and
        the multiply-adds of recomputing them. Boxes that come to overlap are merged."""
        plan: list[list[Box]] = []
        work = 0
        for stage, geometry in zip(self._stages, self._geometry, strict=True):
            (kh, kw), (sh, sw) = stage.kernel, stage.stride
            (rows, cols), pad = geometry.out_hw, stage.pad
            boxes: list[Box] = []
            for top, bottom, left, right in regions:
                top, bottom = _span(top, bottom, kh, sh, pad[0], rows)
                left, right = _span(left, right, kw, sw, pad[2], cols)
                if top < bottom and left < right:
                    boxes.append((top, bottom, left, right))
            if not boxes:
                break
            regions = _merge_overlapping(boxes) if len(boxes) > 1 else boxes
            plan.append(regions)
            work += sum(_area(box) for box in regions) * geometry.cost
        return plan, work

    def _update(self, x: torch.Tensor, regions: list[Box], plan: list[list[Box]]) -> None:
        """Copy the changed pixels in, recompute each stage's planned boxes from its stored
        input and paste them into the next stage's input (the trunk output for the last).

        A stage reads only its own input and writes only the next stage's, so its boxes may
        be computed in any order, and boxes from two regions never see each other's
        half-updated values."""
        reference = self._geometry[0].interior
        for top, bottom, left, right in regions:
            reference[:, :, top:bottom, left:right] = x[:, :, top:bottom, left:right]
        last = len(self._stages) - 1
        for i, boxes in enumerate(plan):
            target = self._geometry[i + 1].interior if i < last else self._trunk_out
            assert target is not None
            for o0, o1, q0, q1 in boxes:
                y = self._recompute(self._stages[i], self._geometry[i], o0, o1, q0, q1)
                target[:, :, o0:o1, q0:q1] = y
        if len(plan) == len(self._stages):  # otherwise the trunk output did not change
            assert self._trunk_out is not None
            self._output = self._run_head(self._trunk_out)

    @staticmethod
    def _recompute(
        stage: _Stage, geometry: _Geometry, o0: int, o1: int, q0: int, q1: int
    ) -> torch.Tensor:
        """Outputs ``[o0, o1) x [q0, q1)`` of a stage, from the slice of its padded input
        their windows read."""
        (kh, kw), (sh, sw) = stage.kernel, stage.stride
        window = geometry.buffer[:, :, o0 * sh : (o1 - 1) * sh + kh, q0 * sw : (q1 - 1) * sw + kw]
        # oneDNN runs a strided view up to 100x slower than a contiguous copy of it.
        window = window.contiguous()
        layer = stage.layers[0]
        y: torch.Tensor
        if stage.kind == "conv":
            assert isinstance(layer, nn.Conv2d)
            y = F.conv2d(
                window, layer.weight, layer.bias, stage.stride, 0, layer.dilation, layer.groups
            )
        elif stage.kind == "max":
            assert isinstance(layer, nn.MaxPool2d)
            y = F.max_pool2d(window, layer.kernel_size, stage.stride, 0, layer.dilation)
        elif stage.kind == "avg":
            assert isinstance(layer, nn.AvgPool2d)
            if geometry.counts is not None:
                y = F.avg_pool2d(window, layer.kernel_size, stage.stride, divisor_override=1)
                y = y / geometry.counts[:, :, o0:o1, q0:q1]
            else:
                y = F.avg_pool2d(
                    window, layer.kernel_size, stage.stride, divisor_override=layer.divisor_override
                )
        else:
            y = window.clone() if stage.any_inplace else window
        for pointwise in stage.pointwise:
            y = pointwise(y)
        return y
