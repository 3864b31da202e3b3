"""Metrics and pictures of a trained classifier."""

from __future__ import annotations

import numpy as np
import pytest

from mlsys.training.evaluate import (
    METRICS,
    classification_metrics,
    cross_validate,
    decide,
    metric_score,
    per_class_report,
    plot_confusion,
    plot_history,
    stratified_splits,
    tune_threshold,
)


def test_metrics_on_a_hand_checked_case() -> None:
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]], dtype=np.float32)
    metrics = classification_metrics(y, proba)
    assert metrics["accuracy"] == 0.5
    assert metrics["f1"] == pytest.approx(0.5)  # class 1: precision 1/2, recall 1/2
    expected = -np.mean(np.log([0.9, 0.8, 0.4, 0.4]))
    assert metrics["log_loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["rows"] == 4


def test_bad_shapes_and_labels_are_named() -> None:
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        classification_metrics(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\], got values \[0, 2\]"):
        classification_metrics(np.array([0, 2]), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="no rows"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 2)))


def test_plots_draw_what_they_say() -> None:
    fig = plot_confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), ["ham", "spam"], title="t")
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0", "1", "1", "1"]
    history = [{"epoch": 0, "loss": 0.7}, {"epoch": 1, "loss": 0.3, "val_accuracy": 0.9}]
    curve = plot_history(history, title="loss")
    assert list(curve.axes[0].lines[0].get_ydata()) == [0.7, 0.3]
    assert len(curve.axes) == 2  # the validation series gets its own axis
    with pytest.raises(ValueError, match="history is empty"):
        plot_history([], title="x")


def test_f1_is_the_positive_class_for_two_classes_and_macro_for_more() -> None:
    y = np.array([0, 0, 0, 1])
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    as_class_1 = classification_metrics(y, proba)
    as_class_0 = classification_metrics(y, proba, positive=0)
    assert as_class_1["f1"] == pytest.approx(2 / 3)  # class 1: P 1/2, R 1
    assert as_class_0["f1"] == pytest.approx(0.8)  # class 0: P 1, R 2/3
    assert as_class_1["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    y3 = np.array([0, 1, 2, 2])
    pred3 = np.array([0, 1, 1, 2])
    macro = metric_score("macro_f1", y3, pred3, k=3)
    assert metric_score("f1", y3, pred3, k=3) == macro == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_a_threshold_decides_the_positive_class() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.7, 0.3], [0.65, 0.35], [0.2, 0.8]])
    assert classification_metrics(y, proba)["f1"] == pytest.approx(2 / 3)
    assert classification_metrics(y, proba, threshold=0.33)["f1"] == pytest.approx(1.0)
    np.testing.assert_array_equal(decide(proba, threshold=0.33), [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got 1.5"):
        classification_metrics(y, proba, threshold=1.5)
    with pytest.raises(ValueError, match="needs two classes, got k = 3"):
        decide(np.full((2, 3), 1 / 3), threshold=0.5)


def test_abstain_predictions_count_as_misses() -> None:
    y = np.array([1, 1, 0])
    pred = np.array([1, -1, 0])
    assert metric_score("accuracy", y, pred, k=2) == pytest.approx(2 / 3)
    assert metric_score("f1", y, pred, k=2) == pytest.approx(2 / 3)  # P 1, R 1/2


def test_bad_metric_and_positive_are_named() -> None:
    y = np.array([0, 1])
    with pytest.raises(ValueError, match=r"unknown metric 'auc'; choose one of accuracy"):
        metric_score("auc", y, y, k=2)
    with pytest.raises(ValueError, match=r"positive must be a class index in \[0, 1\], got 3"):
        metric_score("f1", y, y, k=2, positive=3)
    with pytest.raises(ValueError, match=r"positive must be a class index in \[0, 1\], got 2"):
        classification_metrics(y, np.full((2, 2), 0.5), positive=2)
    assert METRICS == ("accuracy", "f1", "macro_f1")


def test_tune_threshold_maximizes_f1_and_prefers_the_cut_nearest_one_half() -> None:
    y = np.array([0, 0, 0, 1, 1, 0])
    score = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.9])
    t = tune_threshold(y, score, metric="f1")
    assert 0.2 < t <= 0.3  # positives are the 0.3 and 0.4 rows; the 0.9 row costs less
    pred = (score >= t).astype(int)
    assert metric_score("f1", y, pred, k=2) == pytest.approx(0.8)
    # Separable scores: every cut between 0.2 and 0.7 is perfect; the midpoint nearest 0.5.
    assert tune_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.9]),
                          metric="f1") == pytest.approx(0.45)  # fmt: skip


def test_cross_validation_scores_out_of_fold_predictions() -> None:
    y = np.array([0, 1] * 20)
    splits = stratified_splits(y, folds=4, repeats=2, seed=1)
    assert len(splits) == 2 and all(len(repeat) == 4 for repeat in splits)
    assert sorted(np.concatenate(splits[0]).tolist()) == list(range(40))
    # A "procedure" that memorizes the labels it may see and guesses 0 elsewhere.
    scores = cross_validate(lambda fit: np.where(fit, y, 0), y, splits, k=2)
    assert scores["accuracy"] == pytest.approx(0.5)
    assert stratified_splits(np.array([0, 1, 1]), folds=5) == []


def test_per_class_report_has_one_row_per_class() -> None:
    report = per_class_report(np.array([0, 1, 1, 2]), np.array([0, 1, -1, 1]), ["a", "b", "c"])
    assert report["class"].tolist() == ["a", "b", "c"]
    assert report["precision"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert report["recall"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert report["support"].tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match=r"gold labels must be in \[0, 1\]"):
        per_class_report(np.array([0, 2]), np.array([0, 1]), ["a", "b"])
