"""What a dataset's labeling functions do on its data, without running a flow: coverage,
overlaps, conflicts on the train rows and accuracy on the gold dev rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlsys.data.definition import DEFAULT_LF_SET, DatasetDefinition
from mlsys.labeling.analysis import lf_summary
from mlsys.labeling.apply import Progress, apply_lfs
from mlsys.labeling.batch import gold_array, lf_view, split_unlabelable
from mlsys.labeling.label_model import majority_vote
from mlsys.labeling.split import gold_split

__all__ = ["LFReport", "lf_report"]


@dataclass(frozen=True)
class LFReport:
    """One LF set on one dataset's data.

    ``summary`` is :func:`~mlsys.labeling.analysis.lf_summary` (one row per LF; train rows,
    accuracy on the gold dev rows) with ``polarity`` as class names; ``rows`` counts rows
    per split and unreadable ones; ``majority_vote_dev`` is majority vote's accuracy on
    the dev rows no LF left uncovered, and ``coverage_train`` the share of train rows
    at least one LF votes on.
    """

    dataset: str
    lf_set: str
    summary: pd.DataFrame
    rows: dict[str, int]
    coverage_train: float
    majority_vote_dev: float | None
    seconds: float

    def table(self) -> str:
        """The summary as aligned text for a terminal."""
        shown = self.summary.copy()
        shown["polarity"] = shown["polarity"].map(lambda names: ",".join(names) or "-")
        numbers = [c for c in shown.columns if c != "polarity"]
        formats: dict[str, Any] = {c: _fmt for c in numbers}
        return shown.to_string(formatters=formats)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "-" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def lf_report(
    definition: DatasetDefinition,
    df: pd.DataFrame,
    *,
    lf_set: str = DEFAULT_LF_SET,
    n_jobs: int | None = None,
    progress: Progress | None = None,
) -> LFReport:
    """Apply the dataset's LF set ``lf_set`` to ``df`` (a batch as ``read_dataset`` gives
    it), split as the dataset's gold policy says, and summarize each LF.

    Raises:
        DatasetError: no such LF set, or an LF votes something that is not a class.
        ValueError: the batch or the gold policy leaves nothing to summarize.
    """
    lfs = definition.lf_set(lf_set)
    ok, unreadable = split_unlabelable(df)
    split = gold_split(ok, definition.gold)
    view, fields = lf_view(split, definition.lf_columns, definition.id_column)
    result = apply_lfs(
        view, lfs, fields=fields, n_jobs=n_jobs, id_column=definition.id_column, progress=progress
    )
    L, y = result.matrix, gold_array(split)
    train = (split["split"] == "train").to_numpy()
    dev = (split["split"] == "dev").to_numpy()
    summary = lf_summary(L[train], result.lf_names, L_dev=L[dev], y_dev=y[dev])
    summary["polarity"] = summary["polarity"].map(
        lambda indices: [definition.classes[i] for i in indices]
    )
    covered = (L[dev] != -1).any(axis=1)
    mv_dev = None
    if covered.any():
        shares = majority_vote(L[dev][covered], definition.k)
        mv_dev = float((shares.argmax(axis=1) == y[dev][covered]).mean())
    rows = {name: int((split["split"] == name).sum()) for name in ("train", "dev", "test")}
    rows["unreadable"] = len(unreadable)
    return LFReport(
        dataset=definition.name,
        lf_set=lf_set,
        summary=summary,
        rows=rows,
        coverage_train=float((L[train] != -1).any(axis=1).mean()) if train.any() else 0.0,
        majority_vote_dev=mv_dev,
        seconds=result.seconds,
    )
