"""Balance: exact partitioning (against brute force), layer profiles, splitting, errors."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

from mlsys.training.balance import check_balance, partition, profile, split


def brute_force(costs: list[float], stages: int) -> float:
    """The smallest largest-stage cost over every way to cut ``costs`` into ``stages``."""
    n = len(costs)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), stages - 1):
        bounds = [0, *cuts, n]
        best = min(best, max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


def test_partition_is_optimal_against_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 9)
        stages = rng.randint(1, n)
        costs = [rng.choice([rng.random(), float(rng.randint(0, 5))]) for _ in range(n)]
        counts = partition(costs, stages)
        assert len(counts) == stages and sum(counts) == n and min(counts) >= 1
        bounds = [0, *itertools.accumulate(counts)]
        worst = max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))
        assert worst == pytest.approx(brute_force(costs, stages), abs=1e-12)


def test_partition_beats_greedy_filling() -> None:
    # Filling each stage up to the average (7/2) would give [1, 1, 1] + [4] ... or worse;
    # the optimum isolates the heavy layer.
    assert partition([1, 1, 1, 4], 2) == [3, 1]
    assert partition([5, 1, 1, 1, 1, 1], 2) == [1, 5]
    assert partition([1.0] * 6, 3) == [2, 2, 2]


@pytest.mark.parametrize(
    ("costs", "stages", "message"),
    [
        ([1.0, 2.0], 3, "cannot split 2 layers into 3 non-empty stages"),
        ([1.0, 2.0], 0, "cannot split 2 layers into 0"),
        ([1.0, -2.0], 1, "non-negative numbers, got -2.0 at 1"),
        ([float("nan")], 1, "got nan at 0"),
    ],
)
def test_partition_errors_name_the_values(costs: list[float], stages: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition(costs, stages)


@pytest.mark.parametrize(
    ("balance", "message"),
    [
        ([2, 2], r"balance \[2, 2\] sums to 4 but the model has 5 layers"),
        ([5], r"balance \[5\] has 1 entries but stages=2"),
        ([5, 0], r"balance \[5, 0\] must hold positive integers"),
        ([4.0, 1], r"balance \[4.0, 1\] must hold positive integers"),
    ],
)
def test_check_balance_names_the_values(balance: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_balance(balance, 2, 5)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def test_split_keeps_layer_objects_and_names() -> None:
    model = mlp()
    stages = split(model, [2, 3])
    assert [list(s._modules) for s in stages] == [["0", "1"], ["2", "3", "4"]]
    assert stages[1][0] is model[2]
    merged = {k: v for s in stages for k, v in s.state_dict().items()}
    assert merged.keys() == model.state_dict().keys()
    x = torch.randn(3, 4)
    torch.testing.assert_close(stages[1](stages[0](x)), model(x))


def test_profile_by_size_counts_parameter_and_activation_bytes() -> None:
    model = mlp()
    costs = profile(model, torch.randn(3, 4), by="size").costs
    linear_4_8 = (4 * 8 + 8) * 4 + 3 * 8 * 4
    relu = 3 * 8 * 4
    last = (8 * 2 + 2) * 4 + 3 * 2 * 4
    assert costs == [linear_4_8, relu, (8 * 8 + 8) * 4 + 3 * 8 * 4, relu, last]


def test_profile_by_time_sees_the_heavy_layer() -> None:
    # About 1.1G multiply-adds against three ReLUs: tens of milliseconds against a
    # fraction of one. One thread, so that the Linear does not wait on a second core other
    # work holds; and up to three profiles, since on a machine busy with other work a
    # scheduling hiccup can still land in most of one profile's runs of a ReLU (one took
    # 8 ms with both cores taken). A profile that never sees the Linear fails every try.
    model = nn.Sequential(nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.ReLU())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ratios = []
        for _ in range(3):
            result = profile(model, torch.randn(1024, 1024), by="time", repeats=5)
            assert len(result.costs) == 4
            assert result.output.shape == (1024, 1024)
            ratios.append(result.costs[1] / max(result.costs[0], result.costs[2], result.costs[3]))
            if ratios[-1] > 3:
                break
    finally:
        torch.set_num_threads(threads)
    assert max(ratios) > 3, f"the Linear never took 3x the slowest ReLU: ratios {ratios}"


def test_profile_changes_neither_the_model_nor_the_rng() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sample = torch.randn(6, 4)
    rng = torch.get_rng_state()
    for by in ("time", "size"):
        profile(model, sample, by=by)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_profile_names_the_layer_that_does_not_chain() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"layer 2 \(Linear\) fails on an input of shape \(3, 8\)"):
        profile(model, torch.randn(3, 4), by="size")
    with pytest.raises(ValueError, match='by must be "time" or "size"'):
        profile(model, torch.randn(3, 4), by="bytes")  # type: ignore[arg-type]
