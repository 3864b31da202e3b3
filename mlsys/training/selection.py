"""Model selection over a grid: the grid's points, and candidates ranked by a metric on
held-out rows."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GridPoint", "expand_grid", "rank"]


@dataclass(frozen=True)
class GridPoint:
    """One model of the grid: Adam's learning rate, hidden width and number of hidden
    layers."""

    lr: float
    width: int
    depth: int

    @property
    def name(self) -> str:
        if self.depth == 0:
            return f"lr{self.lr:g}-linear"
        return f"lr{self.lr:g}-w{self.width}-d{self.depth}"

    @property
    def hidden(self) -> list[int]:
        return [self.width] * self.depth


def expand_grid(
    lrs: Iterable[float], widths: Iterable[int], depths: Iterable[int]
) -> list[GridPoint]:
    """Every (lr, width, depth) combination, in the order given.

    Raises:
        ValueError: a list is empty, or holds a value out of range (learning rates must be
            positive and finite, widths positive integers, depths integers >= 0; depth 0 is
            a linear model) or twice; the message names it.
    """
    lr_list, width_list, depth_list = list(lrs), list(widths), list(depths)
    groups: tuple[tuple[str, list[Any]], ...] = (
        ("lrs", lr_list),
        ("widths", width_list),
        ("depths", depth_list),
    )
    for name, values in groups:
        if not values:
            raise ValueError(f"{name} is empty: the grid needs at least one value of each")
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"{name} lists {duplicates} more than once")
    for lr in lr_list:
        if (
            isinstance(lr, bool)
            or not isinstance(lr, int | float)
            or not (math.isfinite(lr) and lr > 0)
        ):
            raise ValueError(f"lrs: {lr!r} is not a positive learning rate")
    for width in width_list:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"widths: {width!r} is not a positive integer")
    for depth in depth_list:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depths: {depth!r} is not an integer >= 0")
    points = [
        GridPoint(float(lr), width, depth)
        for lr, width, depth in itertools.product(lr_list, width_list, depth_list)
    ]
    # A linear model has no width: one per learning rate (named lr<lr>-linear).
    seen: set[str] = set()
    out = []
    for point in points:
        if point.name not in seen:
            seen.add(point.name)
            out.append(point)
    return out


def rank(
    candidates: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    tie_breaker: str | None = None,
    higher_is_better: bool = True,
) -> list[dict[str, Any]]:
    """Candidates sorted best first by ``metric`` (then by ``tie_breaker``, lower first,
    then by their original order), each with its 1-based ``rank``. Candidates without the
    metric (failed ones) come last, unranked (``rank`` None)."""
    scored = [dict(c) for c in candidates if _number(c.get(metric)) is not None]
    unscored = [dict(c) for c in candidates if _number(c.get(metric)) is None]
    sign = -1.0 if higher_is_better else 1.0

    def key(item: tuple[int, dict[str, Any]]) -> tuple[float, float, int]:
        index, c = item
        tie = _number(c.get(tie_breaker)) if tie_breaker else None
        return (sign * float(c[metric]), tie if tie is not None else math.inf, index)

    ordered = [c for _, c in sorted(enumerate(scored), key=key)]
    for position, c in enumerate(ordered, start=1):
        c["rank"] = position
    for c in unscored:
        c["rank"] = None
    return ordered + unscored


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
