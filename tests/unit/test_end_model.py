"""The end model: trained on weak targets, chosen on gold dev rows by the dataset's metric."""

from __future__ import annotations

import numpy as np
import pytest

from mlsys.labeling.end_model import (
    EndModelConfig,
    _class_weights,
    default_end_model_grid,
    select_end_model,
)
from mlsys.models.text import HashingFeaturizer

FEATURES = HashingFeaturizer(n_features=256)
WORDS = {0: "lovely song great voice", 1: "buy cheap pills now", 2: "visit my channel today"}


def texts_of(y: np.ndarray, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    noise = ["the", "a", "this", "really", "so", "and"]
    return [f"{WORDS[int(c)]} {rng.choice(noise)} {rng.choice(noise)}" for c in y]


def test_soft_targets_train_a_model_that_is_chosen_on_dev_by_the_metric() -> None:
    rng = np.random.default_rng(0)
    y_train = rng.integers(0, 3, 120)
    # The label model is right on 80% of rows, with probability 0.6 on its class.
    wrong = (y_train + rng.integers(1, 3, 120)) % 3
    guess = np.where(rng.random(120) < 0.8, y_train, wrong)
    soft = np.full((120, 3), 0.2)
    soft[np.arange(120), guess] = 0.6
    y_dev = rng.integers(0, 3, 30)
    grid = [
        EndModelConfig(lr=0.05, hidden=(), epochs=4, batch_size=16),
        EndModelConfig(lr=0.05, hidden=(8,), epochs=4, batch_size=16, targets="hard"),
    ]
    choice = select_end_model(
        texts_of(y_train, 1), soft, None, texts_of(y_dev, 2), y_dev,
        n_classes=3, metric="macro_f1", featurizer=FEATURES, grid=grid,
    )  # fmt: skip
    assert choice.dev["macro_f1"] == 1.0
    assert choice.threshold is None  # three classes: the argmax
    assert 1 <= choice.epochs <= 4
    assert [t["selected"] for t in choice.trials].count(True) == 1
    assert all(len(t["dev_macro_f1_by_epoch"]) == 4 for t in choice.trials)
    y_test = np.array([0, 1, 2, 2])
    np.testing.assert_array_equal(choice.predict(texts_of(y_test, 3)), y_test)


def test_binary_f1_gets_a_threshold_tuned_on_dev() -> None:
    rng = np.random.default_rng(4)
    y_train = (rng.random(200) < 0.15).astype(np.int64)
    y_dev = (rng.random(60) < 0.15).astype(np.int64)
    texts = {0: "lovely song great voice", 1: "buy cheap pills now"}
    train = [texts[int(c)] for c in y_train]
    dev = [texts[int(c)] for c in y_dev]
    grid = [EndModelConfig(lr=0.05, hidden=(), epochs=2, batch_size=32, balance="uniform")]
    choice = select_end_model(
        train, y_train, None, dev, y_dev, n_classes=2, metric="f1",
        featurizer=FEATURES, grid=grid,
    )  # fmt: skip
    assert choice.threshold is not None and 0.0 <= choice.threshold <= 1.0
    assert choice.dev["f1"] == 1.0
    scores = choice.scores(dev, y_dev)
    assert scores["f1"] == 1.0 and "macro_f1" in scores


def test_uniform_balance_gives_every_class_the_same_total_weight() -> None:
    soft = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    weights = np.ones(4)
    factors = _class_weights(soft, weights, "uniform")
    mass = (soft * (weights * factors)[:, None]).sum(axis=0)
    assert mass[0] == pytest.approx(mass[1])
    np.testing.assert_allclose(_class_weights(soft, weights, "none"), 1.0)


def test_default_grid_balances_classes_only_for_f1_metrics() -> None:
    assert {c.balance for c in default_end_model_grid("accuracy")} == {"none"}
    assert {c.balance for c in default_end_model_grid("macro_f1")} == {"none", "uniform"}
    assert all(c.targets == "soft" for c in default_end_model_grid("f1"))


@pytest.mark.parametrize(
    ("targets", "kwargs", "message"),
    [
        (np.array([0, 3]), {}, r"train_targets\[1\] = 3 is outside \[0, 2\]"),
        (np.full((2, 2), 0.5), {}, r"\(n, k\) = \(2, 3\) probability matrix, got shape \(2, 2\)"),
        (np.array([[0.5, 0.6, 0.0], [1, 0, 0]]), {}, r"train_targets\[0\].*not a probability"),
        (np.array([0, 1]), {"metric": "auc"}, "unknown metric 'auc'"),
        (np.array([0, 1]), {"positive": 5}, r"positive must be a class index in \[0, 2\]"),
        (np.array([0, 1]), {"grid": []}, "grid is empty"),
    ],
)
def test_bad_arguments_are_named(
    targets: np.ndarray, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"n_classes": 3, "metric": "accuracy", "featurizer": FEATURES}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        select_end_model(["a b", "c d"], targets, None, ["a"], np.array([0]), **args)  # type: ignore[arg-type]


def test_config_rejects_bad_values_naming_them() -> None:
    with pytest.raises(ValueError, match="targets must be 'soft' or 'hard', got 'fuzzy'"):
        EndModelConfig(targets="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_decay must be non-negative, got -1"):
        EndModelConfig(weight_decay=-1)
