"""Per-LF statistics of a label matrix (coverage, overlaps, conflicts, dev accuracy) and a plot."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mlsys.labeling.label_model import ABSTAIN, check_gold, check_label_matrix
from mlsys.labeling.merge import WeightModel

__all__ = ["lf_summary", "plot_lf_summary", "plot_weights"]

_PLOTTED = ("coverage", "overlaps", "conflicts", "dev_accuracy")


def lf_summary(
    L: np.ndarray,
    lf_names: Sequence[str],
    *,
    L_dev: np.ndarray | None = None,
    y_dev: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per labeling function, indexed by its name (index name ``lf``).

    On ``L`` (fractions of its rows):

    - ``polarity``: the sorted labels the LF emits (a list of ints);
    - ``coverage``: rows the LF labels;
    - ``overlaps``: rows the LF labels and at least one other LF labels too;
    - ``conflicts``: rows the LF labels and another LF labels differently.

    With ``L_dev`` and ``y_dev`` (gold labels): ``dev_coverage``, ``dev_correct``,
    ``dev_incorrect`` and ``dev_accuracy`` = correct / labeled on dev (NaN where the LF labels
    no dev row). Snorkel's ``LFAnalysis`` reports the same numbers (as Coverage, Overlaps,
    Conflicts, Emp. Acc.); computing them here avoids its SciPy sparse path.
    """
    names = list(lf_names)
    matrix = _matrix(L, "L")
    if len(names) != matrix.shape[1]:
        raise ValueError(
            f"lf_names has {len(names)} name(s) but L has {matrix.shape[1]} labeling functions"
        )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"lf_names has duplicates: {', '.join(duplicated)}")

    votes = matrix != ABSTAIN
    n_votes = votes.sum(axis=1, keepdims=True)
    # Votes in the row for the class each cell voted for (its own vote included).
    same = np.zeros_like(matrix)
    for c in np.unique(matrix[votes]):
        same += (matrix == c).sum(axis=1, keepdims=True) * (matrix == c)
    summary = pd.DataFrame(
        {
            "polarity": [
                sorted(int(v) for v in np.unique(col[col != ABSTAIN])) for col in matrix.T
            ],
            "coverage": votes.mean(axis=0),
            "overlaps": (votes & (n_votes > 1)).mean(axis=0),
            "conflicts": (votes & (n_votes > same)).mean(axis=0),
        },
        index=pd.Index(names, name="lf"),
    )
    if L_dev is None and y_dev is None:
        return summary
    if L_dev is None or y_dev is None:
        raise ValueError("pass both L_dev and y_dev, or neither")
    dev = _matrix(L_dev, "L_dev")
    if dev.shape[1] != matrix.shape[1]:
        raise ValueError(
            f"L_dev has {dev.shape[1]} labeling functions (columns) but L has {matrix.shape[1]}"
        )
    gold = check_gold(
        y_dev, max(int(np.max(y_dev, initial=0)) + 1, 2), rows=dev.shape[0], name="y_dev"
    )
    labeled = dev != ABSTAIN
    correct = (labeled & (dev == gold[:, None])).sum(axis=0)
    n_labeled = labeled.sum(axis=0)
    summary["dev_coverage"] = labeled.mean(axis=0)
    summary["dev_correct"] = correct.astype(np.int64)
    summary["dev_incorrect"] = (n_labeled - correct).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        summary["dev_accuracy"] = np.where(n_labeled > 0, correct / n_labeled, np.nan)
    return summary


def _matrix(L: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(L)
    # Any number of classes: the top label seen sets the cardinality for the range check.
    top = int(np.max(values, initial=1)) if values.size and values.dtype.kind in "iuf" else 1
    return check_label_matrix(values, max(top + 1, 2), name=name, min_lfs=1)


def plot_lf_summary(summary: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Horizontal grouped bars per LF: coverage, overlaps, conflicts and, when present, dev
    accuracy. Built on a bare ``Figure`` (Agg canvas, no pyplot state); save it with
    ``fig.savefig(path)``.
    """
    metrics = [m for m in _PLOTTED if m in summary.columns and summary[m].notna().any()]
    if not metrics or summary.empty:
        raise ValueError(
            f"summary needs rows and at least one of {', '.join(_PLOTTED)}; "
            f"got {len(summary)} row(s) and columns {', '.join(map(str, summary.columns))}"
        )
    names = [str(n) for n in summary.index]
    n = len(names)
    fig = Figure(figsize=(8.0, 1.6 + 0.22 * n * len(metrics)), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(metrics)
    positions = np.arange(n)
    for i, metric in enumerate(metrics):
        values = summary[metric].to_numpy(dtype=np.float64, na_value=np.nan)
        offset = (i - (len(metrics) - 1) / 2) * height
        ax.barh(
            positions + offset, np.nan_to_num(values), height=height, label=metric.replace("_", " ")
        )
    ax.set_yticks(positions, labels=names)
    ax.invert_yaxis()  # first LF on top, as in the table
    ax.set_xlim(0.0, 1.02)
    ax.set_xlabel("fraction of rows (dev accuracy: of the dev rows the LF labels)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=len(metrics), fontsize="small")
    ax.set_title(title or f"Labeling functions ({n})")
    return fig


def plot_weights(frame: pd.DataFrame, weight_model: WeightModel, *, bins: int = 10) -> Figure:
    """How weak labels are weighted: the weight model's curve over confidence, the accuracy
    of weak labels on gold rows per confidence bin (reliability), and the weight histogram
    per label source.

    ``frame`` is a labeled batch (``build_labeled_batch``): ``confidence``, ``weak_label``,
    ``label_source``, ``weight`` and ``gold_label`` (gold rows' labels, <NA> elsewhere).
    """
    needed = {"confidence", "weak_label", "label_source", "weight", "gold_label"}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise ValueError(f"frame lacks column(s) {', '.join(missing)} of a labeled batch")
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    curve, hist = fig.subplots(1, 2)
    conf = frame["confidence"].to_numpy(dtype=np.float64)
    lo = float(np.nanmin(conf)) if len(conf) else 0.5
    grid = np.linspace(min(lo, 0.5), 1.0, 101)
    curve.plot(grid, weight_model.weights(grid), label=f"weight ({weight_model.method})")
    gold = frame["gold_label"].to_numpy(dtype=np.float64, na_value=np.nan)
    weak = frame["weak_label"].to_numpy(dtype=np.int64)
    scored = ~np.isnan(gold) & (weak != ABSTAIN)
    if scored.any():
        edges = np.linspace(grid[0], 1.0, bins + 1)
        which = np.clip(np.digitize(conf[scored], edges) - 1, 0, bins - 1)
        correct = weak[scored] == gold[scored]
        centers, accuracy, sizes = [], [], []
        for b in range(bins):
            in_bin = which == b
            if in_bin.any():
                centers.append((edges[b] + edges[b + 1]) / 2)
                accuracy.append(correct[in_bin].mean())
                sizes.append(int(in_bin.sum()))
        curve.scatter(
            centers,
            accuracy,
            s=[10 + 2 * n for n in sizes],
            alpha=0.6,
            color="tab:orange",
            label="weak-label accuracy on gold dev+test rows (size: rows)",
        )
    curve.set_xlabel("label-model confidence")
    curve.set_ylabel("weight / accuracy")
    curve.set_ylim(0.0, 1.05)
    curve.grid(alpha=0.3)
    curve.legend(fontsize="small", loc="lower right")
    curve.set_title("Weak-label weight vs. confidence")
    for source in ("gold", "weak"):
        values = frame.loc[frame["label_source"] == source, "weight"].to_numpy(np.float64)
        if len(values):
            hist.hist(
                values, bins=20, range=(0.0, 1.0), alpha=0.6, label=f"{source} ({len(values)})"
            )
    hist.set_xlabel("training weight")
    hist.set_ylabel("rows")
    hist.legend(fontsize="small")
    hist.set_title("Training weights by label source")
    return fig
