"""Majority vote, the tuned Snorkel LabelModel, explicit abstains and input errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from snorkel.labeling.model import LabelModel, MajorityLabelVoter

from mlsys.labeling.label_model import (
    ABSTAIN,
    LabelModelConfig,
    class_prior,
    fit_label_model,
    fit_labeler,
    majority_vote,
    weak_label_frame,
)
from mlsys.training.evaluate import metric_score

FAST_GRID = [
    LabelModelConfig("label_model", n_epochs=100),
    LabelModelConfig("label_model", n_epochs=500),
]


def synthetic(
    n: int, accuracies: list[float], coverages: list[float], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Binary gold labels and a label matrix whose LF j votes on a coverages[j] share of rows,
    correctly with probability accuracies[j], independently of the others."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    L = np.full((n, len(accuracies)), ABSTAIN, dtype=np.int64)
    for j, (acc, cov) in enumerate(zip(accuracies, coverages, strict=True)):
        votes = rng.random(n) < cov
        right = rng.random(n) < acc
        L[votes, j] = np.where(right[votes], y[votes], 1 - y[votes])
    return L, y


# Three good LFs and four near-random ones: majority vote lets the noisy ones outvote.
ACCURACIES = [0.95, 0.92, 0.9, 0.6, 0.58, 0.56, 0.55]
COVERAGES = [0.4, 0.4, 0.4, 0.8, 0.8, 0.8, 0.8]


def test_majority_vote_gives_vote_shares_and_uniform_for_rows_without_votes() -> None:
    L = np.array([[1, 1, 0], [0, -1, -1], [-1, -1, -1], [2, 2, 2]])
    proba = majority_vote(L, cardinality=3)
    np.testing.assert_allclose(
        proba, [[1 / 3, 2 / 3, 0], [1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1]]
    )


def test_majority_vote_agrees_with_snorkel_majority_label_voter() -> None:
    L, _ = synthetic(300, ACCURACIES, COVERAGES, seed=1)
    ours = majority_vote(L).argmax(axis=1)
    theirs = MajorityLabelVoter(cardinality=2).predict_proba(L)
    decided = np.abs(theirs[:, 0] - theirs[:, 1]) > 0
    np.testing.assert_array_equal(ours[decided], theirs[decided].argmax(axis=1))


def test_label_model_beats_majority_vote_when_lf_accuracies_differ() -> None:
    L_train, _ = synthetic(2000, ACCURACIES, COVERAGES, seed=2)
    L_dev, y_dev = synthetic(150, ACCURACIES, COVERAGES, seed=3)
    L_test, y_test = synthetic(1000, ACCURACIES, COVERAGES, seed=4)
    result = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev, grid=FAST_GRID)
    assert result.label_model is not None
    lm = result.label_model.metrics(L_test, y_test)["accuracy"]
    mv = result.majority_vote.metrics(L_test, y_test)["accuracy"]
    assert lm >= mv + 0.02, (lm, mv)
    assert result.best.config.kind == "label_model"


def test_rows_without_votes_get_abstain_and_uniform_probabilities() -> None:
    L_train, _ = synthetic(500, ACCURACIES, COVERAGES, seed=5)
    L = np.array([[1, 1, 1, -1, -1, -1, -1], [-1] * 7, [0, 0, -1, -1, -1, 0, -1]])
    for config in (LabelModelConfig("majority_vote"), LabelModelConfig("label_model")):
        labeler = fit_label_model(L_train, config)
        np.testing.assert_array_equal(labeler.predict(L), [1, ABSTAIN, 0])
        np.testing.assert_allclose(labeler.predict_proba(L)[1], [0.5, 0.5])


def test_uncovered_rows_stay_uniform_even_with_a_skewed_class_prior() -> None:
    L_train, _ = synthetic(500, ACCURACIES, COVERAGES, seed=6)
    config = LabelModelConfig("label_model", n_epochs=100, class_balance=(0.9, 0.1))
    labeler = fit_label_model(L_train, config)
    np.testing.assert_allclose(labeler.predict_proba(np.full((2, 7), ABSTAIN)), 0.5)


def test_metrics_follow_snorkel_random_tie_break_and_name_abstain_conventions() -> None:
    L = np.array([[1, 1, -1], [0, 0, 0], [-1, -1, -1], [0, 0, 1], [-1, 1, -1], [-1, -1, -1]])
    y = np.array([1, 0, 1, 1, 1, 0])
    labeler = fit_label_model(L, LabelModelConfig("majority_vote"))
    scores = labeler.metrics(L, y)
    snorkel = MajorityLabelVoter(cardinality=2).score(L, y, tie_break_policy="random")
    assert scores["accuracy"] == pytest.approx(snorkel["accuracy"])
    assert scores["coverage"] == pytest.approx(4 / 6)
    assert scores["accuracy_covered"] == pytest.approx(3 / 4)  # row 3 is wrong
    assert scores["accuracy_abstain_wrong"] == pytest.approx(3 / 6)
    # Class 1: TP rows 0 and 4, FN row 3 (voted 0) and row 2 (abstained), no FP.
    assert scores["f1_abstain_wrong"] == pytest.approx(2 * 2 / (2 * 2 + 2))


def test_predict_can_abstain_on_tied_votes_instead_of_breaking_them() -> None:
    L = np.array([[0, 1, -1], [1, 1, 0]])
    labeler = fit_label_model(L, LabelModelConfig("majority_vote"))
    assert labeler.predict(L, tie_break="abstain").tolist() == [ABSTAIN, 1]
    assert labeler.predict(L)[0] in (0, 1)


def test_fit_labeler_records_every_trial_and_selects_the_best_on_dev() -> None:
    L_train, _ = synthetic(800, ACCURACIES, COVERAGES, seed=7)
    L_dev, y_dev = synthetic(120, ACCURACIES, COVERAGES, seed=8)
    grid = [*FAST_GRID, LabelModelConfig("label_model", n_epochs=200, l2=0.1)]
    result = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev, grid=grid)
    assert [t["kind"] for t in result.trials] == ["majority_vote"] + ["label_model"] * 3
    assert sum(t["selected"] for t in result.trials) == 1
    best_dev = max(t["dev_accuracy"] for t in result.trials)
    chosen = next(t for t in result.trials if t["selected"])
    assert chosen["dev_accuracy"] == best_dev
    assert result.majority_vote_dev["accuracy"] == result.trials[0]["dev_accuracy"]
    assert result.label_model_dev is not None
    assert result.label_model_dev["accuracy"] == max(t["dev_accuracy"] for t in result.trials[1:])


def test_dev_ties_go_to_majority_vote_then_to_fewer_epochs() -> None:
    # Perfect LFs: every config scores 1.0 on dev.
    L_train, _ = synthetic(300, [1.0] * 4, [0.9] * 4, seed=9)
    L_dev, y_dev = synthetic(50, [1.0] * 4, [1.0] * 4, seed=10)
    grid = [LabelModelConfig("label_model", n_epochs=e) for e in (500, 100, 300)]
    result = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev, grid=grid)
    assert result.best.config.kind == "majority_vote"
    assert result.label_model is not None
    assert result.label_model.config.n_epochs == 100


def test_default_grid_tries_weighted_votes_and_label_models_with_and_without_dev_prior() -> None:
    L_train, _ = synthetic(300, ACCURACIES, COVERAGES, seed=11)
    L_dev = L_train[:40]
    y_dev = np.array([0] * 10 + [1] * 30)
    result = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev)
    kinds = [t["kind"] for t in result.trials]
    assert kinds[0] == "majority_vote"
    assert {"weighted_vote", "label_model"} <= set(kinds)
    for kind in ("weighted_vote", "label_model"):
        assert {t["dev_prior"] for t in result.trials if t["kind"] == kind} == {False, True}
    # The LabelModel's fit prior never comes from dev: uniform, or majority vote's on train.
    balances = {
        None if t["class_balance"] is None else tuple(t["class_balance"])
        for t in result.trials
        if t["kind"] == "label_model"
    }
    assert None in balances and (0.25, 0.75) not in balances
    assert result.cv_folds == 5 and result.cv_repeats == 3
    assert all(not np.isnan(t["dev_accuracy"]) for t in result.trials)


def test_fitting_leaves_the_global_random_generators_alone() -> None:
    L_train, _ = synthetic(200, ACCURACIES, COVERAGES, seed=12)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    fit_label_model(L_train, LabelModelConfig("label_model", n_epochs=10))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_label_model_matches_snorkel_fit_with_the_same_settings() -> None:
    L_train, _ = synthetic(500, ACCURACIES, COVERAGES, seed=13)
    ours = fit_label_model(L_train, LabelModelConfig("label_model", n_epochs=200, seed=7))
    theirs = LabelModel(cardinality=2, verbose=False)
    theirs.fit(L_train, n_epochs=200, seed=7, progress_bar=False)
    covered = (L_train != ABSTAIN).any(axis=1)
    np.testing.assert_allclose(
        ours.predict_proba(L_train)[covered], theirs.predict_proba(L_train)[covered], atol=1e-6
    )


def test_weak_label_frame_has_labels_probabilities_and_confidence() -> None:
    L = np.array([[1, 1, -1], [-1, -1, -1], [0, 0, 1]])
    labeler = fit_label_model(L, LabelModelConfig("majority_vote"))
    frame = weak_label_frame(L, labeler)
    assert list(frame.columns) == ["weak_label", "proba_0", "proba_1", "confidence"]
    assert frame["weak_label"].tolist() == [1, ABSTAIN, 0]
    assert str(frame["weak_label"].dtype) == "int64"
    np.testing.assert_allclose(frame["confidence"], [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(frame[["proba_0", "proba_1"]].sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("L", "message"),
    [
        (np.empty((0, 4), dtype=int), r"at least one row.*\(0, 4\)"),
        (np.zeros((5, 2), dtype=int), "2 labeling function"),
        (np.array([[0, 1, -1], [1, 0, 2]]), r"L_train\[1, 2\] = 2 is outside \[-1, 1\]"),
        (np.array([[0, 1, -2], [1, 0, 0]]), r"L_train\[0, 2\] = -2"),
        (np.array([[0.0, 1.5, 1.0]] * 2), r"L_train\[0, 1\] = 1.5 is not a whole number"),
    ],
)
def test_bad_label_matrix_is_rejected_naming_the_value(L: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_labeler(L, L_dev=np.zeros((2, 3), dtype=int), y_dev=np.array([0, 1]))


def test_dev_rows_and_gold_labels_must_match() -> None:
    L = np.zeros((5, 3), dtype=int)
    with pytest.raises(ValueError, match=r"y_dev has 3 label.*4 rows"):
        fit_labeler(L, L_dev=np.zeros((4, 3), dtype=int), y_dev=np.array([0, 1, 0]))
    with pytest.raises(ValueError, match=r"y_dev\[1\] = 3 is outside \[0, 1\]"):
        fit_labeler(L, L_dev=np.zeros((2, 3), dtype=int), y_dev=np.array([0, 3]))


def test_labeler_rejects_a_matrix_with_another_number_of_lfs() -> None:
    labeler = fit_label_model(np.zeros((4, 3), dtype=int), LabelModelConfig("majority_vote"))
    with pytest.raises(ValueError, match=r"4 labeling function.*fitted on 3"):
        labeler.predict(np.zeros((2, 4), dtype=int))


def test_config_rejects_a_class_balance_that_does_not_sum_to_one() -> None:
    with pytest.raises(ValueError, match=r"\(0.5, 0.6\)"):
        LabelModelConfig("label_model", class_balance=(0.5, 0.6))


def synthetic_k(
    n: int, k: int, accuracies: list[float], coverages: list[float], prior: list[float], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """k-class gold labels drawn from ``prior`` and a label matrix whose LF j votes on a
    coverages[j] share of rows, right with probability accuracies[j], else a wrong class
    drawn uniformly."""
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=prior)
    L = np.full((n, len(accuracies)), ABSTAIN, dtype=np.int64)
    for j, (acc, cov) in enumerate(zip(accuracies, coverages, strict=True)):
        votes = rng.random(n) < cov
        right = rng.random(n) < acc
        wrong = (y + rng.integers(1, k, n)) % k
        L[votes, j] = np.where(right[votes], y[votes], wrong[votes])
    return L, y


# k = 3: two accurate LFs with little coverage, four noisy ones that often outvote them.
K3_ACCURACIES = [0.95, 0.93, 0.45, 0.45, 0.45, 0.45]
K3_COVERAGES = [0.5, 0.5, 0.7, 0.7, 0.7, 0.7]
K3_PRIOR = [0.5, 0.3, 0.2]


def test_weighted_vote_beats_majority_vote_on_three_classes() -> None:
    L_train, _ = synthetic_k(600, 3, K3_ACCURACIES, K3_COVERAGES, K3_PRIOR, seed=20)
    L_dev, y_dev = synthetic_k(150, 3, K3_ACCURACIES, K3_COVERAGES, K3_PRIOR, seed=21)
    L_test, y_test = synthetic_k(2000, 3, K3_ACCURACIES, K3_COVERAGES, K3_PRIOR, seed=22)
    grid = [LabelModelConfig("weighted_vote", smoothing=4.0)]
    result = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev, cardinality=3, grid=grid)
    assert result.weighted_vote is not None
    weights = result.weighted_vote.lf_weights
    assert weights is not None and weights[:2].min() > weights[2:].max()
    wv = result.weighted_vote.metrics(L_test, y_test)["accuracy"]
    mv = result.majority_vote.metrics(L_test, y_test)["accuracy"]
    assert wv >= mv + 0.05, (wv, mv)
    assert result.best.config.kind == "weighted_vote"
    assert result.weighted_vote_dev is not None
    assert result.weighted_vote_dev["accuracy"] > result.majority_vote_dev["accuracy"]


def test_weighted_vote_gives_lfs_without_dev_votes_the_pooled_accuracy() -> None:
    L_dev = np.array([[0, 1, -1], [1, 1, -1], [2, 2, -1], [0, 0, -1]])
    y_dev = np.array([0, 1, 2, 1])
    config = LabelModelConfig("weighted_vote", smoothing=2.0)
    labeler = fit_label_model(L_dev, config, cardinality=3, L_dev=L_dev, y_dev=y_dev)
    weights = labeler.lf_weights
    assert weights is not None
    pooled = (5 + 1) / (8 + 2)  # 5 of 8 dev votes right, add-one smoothed
    assert weights[2] == pytest.approx(np.log(pooled * 2 / (1 - pooled)))
    assert weights[0] > weights[2] > weights[1]  # LF 0: 3/4 right; LF 1: 2/4 right


def test_rows_without_votes_take_the_dev_class_prior() -> None:
    L_train, _ = synthetic_k(400, 3, K3_ACCURACIES, K3_COVERAGES, K3_PRIOR, seed=23)
    L_dev, y_dev = synthetic_k(200, 3, K3_ACCURACIES, K3_COVERAGES, K3_PRIOR, seed=24)
    expected = class_prior(y_dev, 3)
    np.testing.assert_allclose(expected, (np.bincount(y_dev, minlength=3) + 1) / (200 + 3))
    result = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev, cardinality=3)
    uncovered = np.full((4, L_train.shape[1]), ABSTAIN)
    for labeler in (result.best, result.majority_vote):
        np.testing.assert_allclose(labeler.predict_proba(uncovered), np.tile(expected, (4, 1)))
        # predict still marks them uncovered; metrics guess the prior's most likely class.
        assert labeler.predict(uncovered).tolist() == [ABSTAIN] * 4
        assert labeler.metrics(uncovered, np.zeros(4, dtype=int))["accuracy"] == 1.0
    frame = weak_label_frame(uncovered, result.best)
    assert frame["weak_label"].tolist() == [ABSTAIN] * 4
    np.testing.assert_allclose(frame["confidence"], expected.max())


def imbalanced(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary rows with 10% positives; LFs that vote 1 are noisy, so the label model's
    P(positive) is rarely above 0.5 even for positive rows."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(np.int64)
    L = np.full((n, 5), ABSTAIN, dtype=np.int64)
    for j in range(5):
        votes = rng.random(n) < 0.6
        # Votes 1 on 70% of positives and 25% of negatives it covers, else 0.
        ones = rng.random(n) < np.where(y == 1, 0.7, 0.25)
        L[votes, j] = ones[votes].astype(np.int64)
    return L, y


def test_threshold_tuned_for_f1_beats_the_argmax_on_an_imbalanced_binary_set() -> None:
    L_train, _ = imbalanced(1000, seed=30)
    L_dev, y_dev = imbalanced(300, seed=31)
    L_test, y_test = imbalanced(3000, seed=32)
    grid = [LabelModelConfig("weighted_vote", dev_prior=True)]
    result = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev, metric="f1", grid=grid)
    tuned = result.best
    assert result.metric == "f1"
    assert tuned.threshold is not None and result.threshold == tuned.threshold
    argmax = tuned.with_threshold(None)
    f1_tuned = tuned.metrics(L_test, y_test)["f1"]
    f1_argmax = argmax.metrics(L_test, y_test)["f1"]
    assert f1_tuned >= f1_argmax + 0.05, (f1_tuned, f1_argmax)
    # predict and the weak-label frame decide by the same threshold.
    proba = tuned.predict_proba(L_test)
    covered = (L_test != ABSTAIN).any(axis=1)
    expected = np.where(proba[:, 1] >= tuned.threshold, 1, 0)
    np.testing.assert_array_equal(tuned.predict(L_test)[covered], expected[covered])
    frame = weak_label_frame(L_test, tuned)
    np.testing.assert_array_equal(frame["weak_label"].to_numpy()[covered], expected[covered])
    chosen = frame["weak_label"].to_numpy()[covered]
    np.testing.assert_allclose(frame["confidence"].to_numpy()[covered], proba[covered, chosen])


def test_accuracy_metric_keeps_the_argmax() -> None:
    L_train, _ = imbalanced(500, seed=33)
    L_dev, y_dev = imbalanced(200, seed=34)
    result = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev, grid=FAST_GRID)
    assert result.best.threshold is None
    assert all(t["threshold"] is None for t in result.trials)


def test_trials_hold_the_cross_validated_dev_metric_of_the_choice() -> None:
    L_train, _ = synthetic_k(300, 3, K3_ACCURACIES, K3_COVERAGES, K3_PRIOR, seed=40)
    L_dev, y_dev = synthetic_k(90, 3, K3_ACCURACIES, K3_COVERAGES, K3_PRIOR, seed=41)
    grid = [LabelModelConfig("weighted_vote", smoothing=s) for s in (1.0, 16.0)]
    result = fit_labeler(
        L_train, L_dev=L_dev, y_dev=y_dev, cardinality=3, metric="macro_f1", grid=grid
    )
    chosen = next(t for t in result.trials if t["selected"])
    assert chosen["dev_macro_f1"] == max(t["dev_macro_f1"] for t in result.trials)
    assert "dev_macro_f1_std" in chosen
    # Cross-validated, not scored on the rows the weights were estimated on.
    in_sample = metric_score("macro_f1", y_dev, result.best.predict(L_dev), k=3)
    assert chosen["dev_macro_f1"] != in_sample


def test_progress_reports_each_fit() -> None:
    L_train, _ = synthetic(300, ACCURACIES, COVERAGES, seed=42)
    L_dev, y_dev = synthetic(60, ACCURACIES, COVERAGES, seed=43)
    lines: list[str] = []
    fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev, grid=FAST_GRID, progress=lines.append)
    assert any("fitting 1/2" in line for line in lines)
    assert any("fitting 2/2" in line for line in lines)
    assert "chose" in lines[-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "auc"}, r"unknown metric 'auc'; choose one of accuracy, f1, macro_f1"),
        ({"positive": 2}, r"positive must be a class index in \[0, 1\], got 2"),
    ],
)
def test_bad_metric_and_positive_class_are_named(kwargs: dict[str, object], message: str) -> None:
    L, y = synthetic(50, ACCURACIES, COVERAGES, seed=44)
    with pytest.raises(ValueError, match=message):
        fit_labeler(L, L_dev=L, y_dev=y, grid=FAST_GRID, **kwargs)  # type: ignore[arg-type]


def test_weighted_vote_needs_dev_rows() -> None:
    L, _ = synthetic(50, ACCURACIES, COVERAGES, seed=45)
    with pytest.raises(ValueError, match="pass L_dev and y_dev"):
        fit_label_model(L, LabelModelConfig("weighted_vote"))
