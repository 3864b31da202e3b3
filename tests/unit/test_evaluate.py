"""Metrics and pictures of a trained classifier."""

from __future__ import annotations

import numpy as np
import pytest

from mlsys.training.evaluate import classification_metrics, plot_confusion, plot_history


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
