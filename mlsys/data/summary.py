"""Summaries of a raw batch: row counts per file and label, missing values, and a chart."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class BatchSummary:
    """What a batch holds, in numbers a person checks first."""

    rows: int
    files: dict[str, int]
    labels: dict[str, int]
    missing: dict[str, int] = field(default_factory=dict)

    @property
    def labeled(self) -> int:
        return sum(n for label, n in self.labels.items() if label != "missing")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labeled": self.labeled}


def summarize_batch(df: pd.DataFrame, label_column: str | None = "label") -> BatchSummary:
    """Count rows per source file and per label value (missing labels counted apart)."""
    files: dict[str, int] = {}
    if "source_file" in df.columns:
        files = {str(k): int(v) for k, v in df["source_file"].value_counts(sort=False).items()}
    labels: dict[str, int] = {}
    if label_column is not None and label_column in df.columns:
        counts = df[label_column].value_counts(dropna=False, sort=False)
        labels = {_label_name(k): int(v) for k, v in counts.items()}
    missing = {str(c): int(n) for c, n in df.isna().sum().items() if n}
    return BatchSummary(
        rows=len(df), files=dict(sorted(files.items())), labels=labels, missing=missing
    )


def add_summaries(parts: list[BatchSummary]) -> BatchSummary:
    """The summary of a batch from the summaries of its parts (counts add up)."""

    def add(dicts: list[dict[str, int]]) -> dict[str, int]:
        total: dict[str, int] = {}
        for d in dicts:
            for key, n in d.items():
                total[key] = total.get(key, 0) + n
        return total

    return BatchSummary(
        rows=sum(p.rows for p in parts),
        files=dict(sorted(add([p.files for p in parts]).items())),
        labels=add([p.labels for p in parts]),
        missing=add([p.missing for p in parts]),
    )


def _label_name(value: object) -> str:
    return "missing" if value is None or value is pd.NA or value != value else str(value)


def plot_batch_summary(summary: BatchSummary, title: str = "raw batch") -> Any:
    """A bar chart of rows per source file, stacked by label where labels exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    names = list(summary.files) or ["(all)"]
    counts = list(summary.files.values()) or [summary.rows]
    ax.barh(names, counts, color="#4C72B0")
    for y, n in enumerate(counts):
        ax.text(n, y, f" {n}", va="center", fontsize=8)
    ax.set_xlabel("rows")
    labels = ", ".join(f"{k}: {v}" for k, v in sorted(summary.labels.items()))
    ax.set_title(
        f"{title}: {summary.rows} rows" + (f" (labels {labels})" if labels else ""), fontsize=9
    )
    ax.invert_yaxis()
    return fig
