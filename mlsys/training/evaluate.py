"""Scores and pictures of a trained classifier: metrics on gold rows, the score every choice
is made by, a per-class report, confusion matrix, loss curve."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, log_loss
from sklearn.model_selection import StratifiedKFold

__all__ = [
    "METRICS",
    "Metric",
    "check_metric",
    "classification_metrics",
    "cross_validate",
    "decide",
    "metric_score",
    "per_class_report",
    "plot_confusion",
    "plot_history",
    "stratified_splits",
    "tune_threshold",
]

Metric = Literal["accuracy", "f1", "macro_f1"]
METRICS: tuple[str, ...] = ("accuracy", "f1", "macro_f1")
"""The metrics a dataset can be judged by, and so every choice made on its dev rows:

- ``accuracy``: the share of rows predicted right;
- ``f1``: the F1 of the positive class for two classes, the macro F1 for more;
- ``macro_f1``: the unweighted mean of every class's F1.

A prediction that is not a class (ABSTAIN, -1) is wrong for every metric: a miss of the
row's true class that counts as no class's false positive."""


def check_metric(metric: str, *, k: int, positive: int = 1) -> Metric:
    """``metric`` as a :data:`Metric`, after checking it and ``positive`` against ``k``
    classes; the ValueError names the bad value and what is allowed."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise ValueError(f"the number of classes k must be an int >= 2, got {k!r}")
    if (
        isinstance(positive, bool)
        or not isinstance(positive, int | np.integer)
        or not 0 <= positive < k
    ):
        raise ValueError(f"positive must be a class index in [0, {k - 1}], got {positive!r}")
    return metric  # type: ignore[return-value]


def _class_counts(
    y: np.ndarray, pred: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and false negatives of each class, shape (k,) each.
    A prediction outside [0, k-1] (ABSTAIN) is a false negative of the true class only."""
    right = pred == y
    tp = np.bincount(y[right], minlength=k)[:k]
    valid = (pred >= 0) & (pred < k)
    predicted = np.bincount(pred[valid], minlength=k)[:k]
    support = np.bincount(y, minlength=k)[:k]
    return tp, predicted - tp, support - tp


def _label_pair(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gold ``y`` and predicted ``pred`` classes as int64, checked to be 1-D of one length."""
    gold = np.asarray(y).astype(np.int64, copy=False)
    guess = np.asarray(pred).astype(np.int64, copy=False)
    if gold.shape != guess.shape or gold.ndim != 1:
        raise ValueError(
            f"y and pred must be 1-D of the same length, got shapes {gold.shape} and {guess.shape}"
        )
    return gold, guess


def _f1s(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def metric_score(
    metric: str, y: np.ndarray, pred: np.ndarray, *, k: int, positive: int = 1
) -> float:
    """The ``metric`` of predicted classes ``pred`` against gold ``y`` (both (n,) ints).

    ``f1`` is the F1 of class ``positive`` when ``k`` = 2 and the macro F1 otherwise; a
    class absent from both ``y`` and ``pred`` has F1 0 in the macro average (labels
    ``0..k-1`` are always all counted, as scikit-learn does with ``labels=range(k)``).

    Raises:
        ValueError: an unknown metric, ``positive`` outside [0, k-1], ``y`` and ``pred`` of
            different lengths, no rows, or a gold label outside [0, k-1].
    """
    name = check_metric(metric, k=k, positive=positive)
    gold, guess = _label_pair(y, pred)
    if len(gold) == 0:
        raise ValueError("no rows to score")
    if gold.min() < 0 or gold.max() >= k:
        raise ValueError(
            f"gold labels must be in [0, {k - 1}], got values {sorted(set(gold.tolist()))[:10]}"
        )
    if name == "accuracy":
        return float((gold == guess).mean())
    f1 = _f1s(*_class_counts(gold, guess, k))
    if name == "f1" and k == 2:
        return float(f1[positive])
    return float(f1.mean())


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    positive: int = 1,
    threshold: float | None = None,
) -> dict[str, float]:
    """Accuracy, F1, macro F1, log loss and row count of class probabilities ``proba``.

    ``proba`` is (n, k); the prediction is its argmax, or, with a ``threshold`` (two classes
    only), class ``positive`` wherever ``proba[:, positive] >= threshold`` and the other
    class elsewhere. ``f1`` is class ``positive``'s F1 for two classes and the macro F1 for
    more (see :func:`metric_score`).

    Raises:
        ValueError: shapes that do not match, no rows, labels outside [0, k-1],
            ``positive`` outside [0, k-1], or a threshold outside [0, 1] or with k > 2.
    """
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
    check_metric("f1", k=k, positive=positive)
    pred = decide(p, positive=positive, threshold=threshold)
    return {
        "accuracy": metric_score("accuracy", y, pred, k=k, positive=positive),
        "f1": metric_score("f1", y, pred, k=k, positive=positive),
        "macro_f1": metric_score("macro_f1", y, pred, k=k, positive=positive),
        "log_loss": float(log_loss(y, np.clip(p, 1e-12, 1.0), labels=list(range(k)))),
        "rows": float(len(y)),
    }


def decide(proba: np.ndarray, *, positive: int = 1, threshold: float | None = None) -> np.ndarray:
    """Predicted classes of probabilities ``proba`` (n, k): the argmax (lowest class on a
    tie), or with a ``threshold`` (k = 2 only) ``positive`` where
    ``proba[:, positive] >= threshold``, else the other class."""
    p = np.asarray(proba)
    k = p.shape[1]
    if threshold is None:
        out: np.ndarray = p.argmax(axis=1).astype(np.int64)
        return out
    if k != 2:
        raise ValueError(f"a decision threshold needs two classes, got k = {k}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    check_metric("f1", k=k, positive=positive)
    return np.where(p[:, positive] >= threshold, positive, 1 - positive).astype(np.int64)


def per_class_report(y: np.ndarray, pred: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per class: ``class``, ``precision``, ``recall``, ``f1`` and ``support`` (gold
    rows of the class), ready for an MLflow table (``log_table(data=report, ...)``).

    A prediction outside the classes (ABSTAIN, -1) lowers the recall of the row's class and
    nobody's precision; a class never predicted has precision 0.
    """
    k = len(class_names)
    gold, guess = _label_pair(y, pred)
    if k < 2:
        raise ValueError(f"class_names needs at least 2 names, got {list(class_names)}")
    if len(gold) and (gold.min() < 0 or gold.max() >= k):
        raise ValueError(
            f"gold labels must be in [0, {k - 1}] ({k} class names), got values "
            f"{sorted(set(gold.tolist()))[:10]}"
        )
    tp, fp, fn = _class_counts(gold, guess, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    return pd.DataFrame(
        {
            "class": [str(name) for name in class_names],
            "precision": precision.astype(np.float64),
            "recall": recall.astype(np.float64),
            "f1": _f1s(tp, fp, fn).astype(np.float64),
            "support": (tp + fn).astype(np.int64),
        }
    )


def tune_threshold(y: np.ndarray, score: np.ndarray, *, metric: str, positive: int = 1) -> float:
    """The decision threshold on ``score`` = P(class ``positive``) of two-class rows that
    maximizes ``metric`` on gold ``y``: predict ``positive`` where ``score >= threshold``.

    Every distinct cut is tried at once (the rows sorted by score, counts accumulated):
    thresholds are midpoints between consecutive distinct scores, plus 0 (all positive) and
    a value above the largest score (none positive), so a new row's score falls on the
    side of the cut its neighbours in ``y`` fell on. Among cuts that score the same, the
    one nearest 0.5, the argmax's own cut, wins.

    Raises:
        ValueError: an unknown metric, ``positive`` not 0 or 1, or ``y`` and ``score`` of
            different lengths or empty.
    """
    name = check_metric(metric, k=2, positive=positive)
    s = np.asarray(score, dtype=np.float64)
    gold = np.asarray(y)
    if s.ndim != 1 or s.shape != gold.shape or len(s) == 0:
        raise ValueError(
            f"y and score must be 1-D, non-empty and of the same length, got shapes "
            f"{gold.shape} and {s.shape}"
        )
    values = np.unique(s)
    cuts = np.concatenate([[0.0], (values[:-1] + values[1:]) / 2, [(values[-1] + 1.0) / 2]])
    cuts = np.clip(cuts, 0.0, 1.0)
    is_pos = gold == positive
    # Rows at or above each cut: counts from the top of the sorted distinct scores.
    position = np.searchsorted(values, s)
    pos_at = np.bincount(position, weights=is_pos, minlength=len(values))
    all_at = np.bincount(position, minlength=len(values)).astype(np.float64)
    above_pos = np.concatenate([np.cumsum(pos_at[::-1])[::-1], [0.0]])
    above_all = np.concatenate([np.cumsum(all_at[::-1])[::-1], [0.0]])
    n, n_pos = float(len(s)), float(is_pos.sum())
    tp = above_pos
    fp = above_all - above_pos
    fn = n_pos - tp
    tn = n - n_pos - fp
    f1_pos = _f1s(tp, fp, fn)
    if name == "accuracy":
        value = (tp + tn) / n
    elif name == "f1":
        value = f1_pos
    else:
        value = (f1_pos + _f1s(tn, fn, fp)) / 2
    best = np.flatnonzero(value >= value.max() - 1e-12)
    return float(cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]])


def stratified_splits(
    y: np.ndarray, *, folds: int = 5, repeats: int = 3, seed: int = 123
) -> list[list[np.ndarray]]:
    """Held-out row indices of repeated stratified k-fold cross-validation over labels ``y``:
    one list of ``folds`` index arrays per repeat, each repeat shuffled by ``seed + repeat``.

    ``folds`` shrinks to ``len(y) // 2`` on small ``y``; below 2 folds there is nothing to
    hold out and the result is ``[]``. A class with fewer rows than folds is spread over
    as many folds as it has rows.
    """
    gold = np.asarray(y)
    n_folds = min(folds, len(gold) // 2)
    if n_folds < 2:
        return []
    out = []
    for repeat in range(max(repeats, 1)):
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed + repeat)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class" notice
            out.append([held for _, held in splitter.split(np.zeros(len(gold)), gold)])
    return out


def cross_validate(
    procedure: Callable[[np.ndarray], np.ndarray],
    y: np.ndarray,
    splits: list[list[np.ndarray]],
    *,
    k: int,
    positive: int = 1,
) -> dict[str, float]:
    """Out-of-fold scores of a selection ``procedure`` over gold ``y``.

    ``procedure(fit_rows)`` gets a boolean mask of the rows it may estimate anything on
    (priors, weights, a threshold) and returns a predicted class for every row; the rows
    of each held-out fold are taken from the call that did not see them. Each repeat's
    out-of-fold predictions are scored on all rows together (so a tiny fold never makes an
    F1 of its own); the result is the mean over repeats of ``accuracy``, ``f1`` and
    ``macro_f1``, and their standard deviations ``<metric>_std``. Without splits (too few
    rows), the procedure is scored on the rows it was estimated on.
    """
    gold = np.asarray(y)
    runs: list[dict[str, float]] = []
    for repeat in splits or [[]]:
        pred = np.full(len(gold), -1, dtype=np.int64)
        if not repeat:
            pred = np.asarray(procedure(np.ones(len(gold), dtype=bool)))
        for held in repeat:
            fit_rows = np.ones(len(gold), dtype=bool)
            fit_rows[held] = False
            pred[held] = np.asarray(procedure(fit_rows))[held]
        runs.append({m: metric_score(m, gold, pred, k=k, positive=positive) for m in METRICS})
    out: dict[str, float] = {}
    for m in METRICS:
        values = np.array([run[m] for run in runs])
        out[m] = float(values.mean())
        out[f"{m}_std"] = float(values.std())
    return out


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
