"""LF summary numbers on a hand-computed matrix, agreement with Snorkel, and the plot."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from snorkel.labeling import LFAnalysis

from mlsys.labeling.analysis import lf_summary, plot_lf_summary

# Rows x LFs a, b, c. Row 2 has no votes; a and b disagree on row 3.
L = np.array(
    [
        [0, 0, -1],
        [1, -1, 1],
        [-1, -1, -1],
        [0, 1, -1],
    ]
)
Y = np.array([0, 1, 1, 0])


def test_summary_matches_hand_computed_numbers() -> None:
    summary = lf_summary(L, ["a", "b", "c"], L_dev=L, y_dev=Y)
    assert summary.index.tolist() == ["a", "b", "c"]
    assert summary["polarity"].tolist() == [[0, 1], [0, 1], [1]]
    np.testing.assert_allclose(summary["coverage"], [0.75, 0.5, 0.25])
    np.testing.assert_allclose(summary["overlaps"], [0.75, 0.5, 0.25])
    np.testing.assert_allclose(summary["conflicts"], [0.25, 0.25, 0.0])
    np.testing.assert_allclose(summary["dev_coverage"], [0.75, 0.5, 0.25])
    assert summary["dev_correct"].tolist() == [3, 1, 1]
    assert summary["dev_incorrect"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(summary["dev_accuracy"], [1.0, 0.5, 1.0])


def test_summary_without_dev_has_no_dev_columns() -> None:
    summary = lf_summary(L, ["a", "b", "c"])
    assert list(summary.columns) == ["polarity", "coverage", "overlaps", "conflicts"]


def test_summary_agrees_with_snorkel_lf_analysis_on_a_random_matrix() -> None:
    rng = np.random.default_rng(0)
    big = rng.choice([-1, -1, 0, 1, 2], size=(300, 6))
    y = rng.integers(0, 3, 300)
    ours = lf_summary(big, [f"lf{i}" for i in range(6)], L_dev=big, y_dev=y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = LFAnalysis(big).lf_summary(Y=y)
    np.testing.assert_allclose(ours["coverage"], theirs["Coverage"])
    np.testing.assert_allclose(ours["overlaps"], theirs["Overlaps"])
    np.testing.assert_allclose(ours["conflicts"], theirs["Conflicts"])
    np.testing.assert_allclose(ours["dev_accuracy"], theirs["Emp. Acc."])


def test_an_lf_silent_on_dev_has_no_dev_accuracy() -> None:
    dev = np.array([[0, -1, 1], [1, -1, 1]])
    summary = lf_summary(L, ["a", "b", "c"], L_dev=dev, y_dev=np.array([0, 1]))
    assert np.isnan(summary.loc["b", "dev_accuracy"])
    assert summary.loc["b", "dev_coverage"] == 0.0


def test_names_must_match_the_columns_and_be_unique() -> None:
    with pytest.raises(ValueError, match=r"2 name\(s\) but L has 3"):
        lf_summary(L, ["a", "b"])
    with pytest.raises(ValueError, match="duplicates: a"):
        lf_summary(L, ["a", "a", "c"])
    with pytest.raises(ValueError, match="both L_dev and y_dev"):
        lf_summary(L, ["a", "b", "c"], L_dev=L)


def test_plot_shows_every_lf_and_metric_and_saves(tmp_path: Path) -> None:
    summary = lf_summary(L, ["keyword_my", "regex_check_out", "short_comment"], L_dev=L, y_dev=Y)
    fig = plot_lf_summary(summary)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == list(summary.index)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "coverage",
        "overlaps",
        "conflicts",
        "dev accuracy",
    ]
    path = tmp_path / "lfs.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000


def test_plot_without_dev_leaves_out_the_accuracy_bars() -> None:
    fig = plot_lf_summary(lf_summary(L, ["a", "b", "c"]))
    assert len(fig.legends[0].get_texts()) == 3


def test_weights_plot_draws_curve_reliability_and_histograms(tmp_path: Path) -> None:
    import pandas as pd

    from mlsys.labeling.analysis import plot_weights
    from mlsys.labeling.merge import merge_labels

    rng = np.random.default_rng(0)
    n = 200
    confidence = rng.uniform(0.5, 1.0, n)
    weak_label = rng.integers(0, 2, n)
    # Weak labels are right with probability = confidence.
    truth = np.where(rng.uniform(size=n) < confidence, weak_label, 1 - weak_label)
    weak = pd.DataFrame({"weak_label": weak_label, "confidence": confidence})
    gold = pd.Series(pd.array([pd.NA] * n, dtype="Int64"))
    gold[:80] = truth[:80]
    merged = merge_labels(weak, gold, weighting="calibrated")
    frame = merged.frame.assign(gold_label=gold)
    fig = plot_weights(frame, merged.weight_model)
    curve, hist = fig.axes
    assert len(curve.lines) == 1 and len(curve.collections) == 1  # curve + reliability dots
    assert len(hist.patches) == 40  # 20 bins for gold, 20 for weak
    fig.savefig(tmp_path / "weights.png")
    assert (tmp_path / "weights.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="lacks column\\(s\\) gold_label"):
        plot_weights(merged.frame, merged.weight_model)
