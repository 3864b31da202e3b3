"""Model selection: the grid's points and the ranking of candidates."""

from __future__ import annotations

import math

import pytest

from mlsys.training.selection import GridPoint, expand_grid, rank


def test_grid_is_every_combination_with_one_linear_model_per_rate() -> None:
    points = expand_grid([0.01, 0.1], [16, 64], [0, 2])
    assert [p.name for p in points] == [
        "lr0.01-linear",
        "lr0.01-w16-d2",
        "lr0.01-w64-d2",
        "lr0.1-linear",
        "lr0.1-w16-d2",
        "lr0.1-w64-d2",
    ]
    assert points[1].hidden == [16, 16]
    assert points[0].hidden == []


@pytest.mark.parametrize(
    ("lrs", "widths", "depths", "message"),
    [
        ([], [16], [1], "lrs is empty"),
        ([0.1], [16], [], "depths is empty"),
        ([0.0], [16], [1], "lrs: 0.0 is not a positive learning rate"),
        ([math.nan], [16], [1], "lrs: nan is not a positive learning rate"),
        ([0.1], [0], [1], "widths: 0 is not a positive integer"),
        ([0.1], [16.5], [1], "widths: 16.5 is not a positive integer"),
        ([0.1], [16], [-1], "depths: -1 is not an integer >= 0"),
        ([0.1, 0.1], [16], [1], r"lrs lists \[0.1\] more than once"),
    ],
)
def test_bad_grid_values_are_named(
    lrs: list[float], widths: list[int], depths: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        expand_grid(lrs, widths, depths)


def test_rank_orders_by_metric_then_tie_breaker_and_puts_failures_last() -> None:
    candidates = [
        {"model": "a", "dev_accuracy": 0.90, "dev_log_loss": 0.30},
        {"model": "failed", "error": "boom"},
        {"model": "b", "dev_accuracy": 0.95, "dev_log_loss": 0.40},
        {"model": "c", "dev_accuracy": 0.95, "dev_log_loss": 0.20},
        {"model": "nan", "dev_accuracy": math.nan},
    ]
    ranked = rank(candidates, "dev_accuracy", tie_breaker="dev_log_loss")
    assert [(c["model"], c["rank"]) for c in ranked] == [
        ("c", 1),
        ("b", 2),
        ("a", 3),
        ("failed", None),
        ("nan", None),
    ]
    lowest = rank(candidates, "dev_log_loss", higher_is_better=False)
    assert [c["model"] for c in lowest][:3] == ["c", "a", "b"]
    # The input is left as it was.
    assert "rank" not in candidates[0]


def test_grid_point_names_are_stable() -> None:
    assert GridPoint(0.003, 32, 1).name == "lr0.003-w32-d1"
