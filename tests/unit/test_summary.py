"""Batch summary: counts per file and label, missing values, chart."""

from __future__ import annotations

import pandas as pd

from mlsys.data.summary import plot_batch_summary, summarize_batch


def _batch() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": pd.array(["a", "b", None, "d"], dtype="string"),
            "label": pd.array([1, 0, 1, None], dtype="Int64"),
            "source_file": pd.array(["b.csv", "a.csv", "a.csv", "b.csv"], dtype="string"),
        }
    )


def test_counts_per_file_and_label() -> None:
    summary = summarize_batch(_batch())
    assert summary.rows == 4
    assert summary.files == {"a.csv": 2, "b.csv": 2}
    assert summary.labels == {"1": 2, "0": 1, "missing": 1}
    assert summary.labeled == 3
    assert summary.missing == {"text": 1, "label": 1}


def test_unlabeled_batch_has_no_label_counts() -> None:
    summary = summarize_batch(_batch().drop(columns="label"))
    assert summary.labels == {}
    assert summary.labeled == 0


def test_chart_has_one_bar_per_file() -> None:
    fig = plot_batch_summary(summarize_batch(_batch()), title="t")
    ax = fig.axes[0]
    assert len(ax.patches) == 2
    assert "4 rows" in ax.get_title()
