"""Scores and pictures of a trained classifier: metrics on gold rows, confusion matrix,
loss curve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss

__all__ = ["classification_metrics", "plot_confusion", "plot_history"]


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 (class 1 for two classes, macro otherwise), log loss and row count.

    ``proba`` is (n, k) class probabilities; the prediction is its argmax."""
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(
            f"proba must be (n, k) with n = {len(y)} rows of y_true, got shape {p.shape}"
        )
    if len(y) == 0:
        raise ValueError("no rows to evaluate on")
    # float32 softmax rows sum to 1 only within ~1e-7; log_loss wants exact probabilities.
    p = p / p.sum(axis=1, keepdims=True)
    k = p.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be in [0, {k - 1}], got values {sorted(set(y.tolist()))}")
    pred = p.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, average="binary" if k == 2 else "macro", zero_division=0)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-12, 1.0), labels=list(range(k)))),
        "rows": float(len(y)),
    }


def plot_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], *, title: str
) -> Figure:
    """Counts of (true, predicted) pairs as an annotated heat map."""
    labels = list(range(len(class_names)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    fig = Figure(figsize=(4.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(labels, labels=list(class_names))
    ax.set_yticks(labels, labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (gold)")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in labels:
        for j in labels:
            color = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    ax.set_title(title)
    return fig


def plot_history(history: Sequence[dict[str, Any]], *, title: str) -> Figure:
    """Training loss per epoch (and any other numeric series in the records, e.g. a
    validation accuracy, on a second axis)."""
    if not history:
        raise ValueError("history is empty: nothing to plot")
    epochs = [int(r["epoch"]) + 1 for r in history]
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, [float(r["loss"]) for r in history], marker="o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted loss")
    ax.grid(alpha=0.3)
    extra = sorted(
        {k for r in history for k, v in r.items() if k.startswith("val_") and _number(v)}
    )
    if extra:
        twin = ax.twinx()
        for key in extra:
            twin.plot(epochs, [r.get(key, np.nan) for r in history], marker="s", ls="--", label=key)
        twin.set_ylabel("validation")
        twin.legend(loc="upper right", fontsize="small")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title)
    return fig


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
