"""Weak labeling of a batch that never sits in one process: the pieces each row partition
computes where it is, and what the driver decides from the small parts they send back.

A batch labeled in partitions takes three passes over its row ranges (each pass a task per
partition, see the ``weak_label`` flow):

1. the raw suite's checks (:mod:`mlsys.validation.partitioned`), merged into one verdict;
2. per partition, the rows that pass, less those the LFs cannot read: their LF votes
   (kept beside the partition) and the **gold candidates**: the rows the dataset's gold
   policy could keep gold (:func:`gold_candidates`), sent to the driver with their votes;
3. per partition, the labeled rows (:func:`label_partition`) and the training suite's
   checks.

The driver splits the gold candidates as the gold policy splits a whole batch
(:func:`assign_gold`: same dev and test rows, in the same order), fits the labelers on
the train rows' votes (all of them up to :data:`TRAIN_SAMPLE_ROWS`, else a seeded sample)
and the dev rows, and fits the weights on the dev rows: the same choices as one pass over
the batch, from a few columns of a few rows. Rows keep the raw batch's order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlsys.labeling.batch import build_labeled_batch
from mlsys.labeling.label_model import weak_label_frame
from mlsys.labeling.merge import Weighting, WeightModel, fit_weight_model
from mlsys.labeling.split import SPLITS, SplitCounts, gold_split

if TYPE_CHECKING:
    from mlsys.data.definition import GoldPolicy
    from mlsys.labeling.label_model import Labeler

__all__ = [
    "PART",
    "ROW",
    "TRAIN_SAMPLE_ROWS",
    "GoldRows",
    "add_label_counts",
    "assign_gold",
    "candidate_columns",
    "gold_candidates",
    "label_partition",
    "splits_by_partition",
    "train_sample",
    "vote_columns",
]

PART = "_part"
ROW = "_row"
"""Columns naming a gold candidate's partition and its row within the partition."""
TRAIN_SAMPLE_ROWS = 200_000
"""Train rows whose votes the label models are fitted on: every train row of a batch up
to this many (the fit is then the one-pass fit), else a seeded uniform sample of about
this many. Fitting the candidates on 200,000 rows of 25 LFs takes about 260 MB and 3 s
here, on 1M rows about 1 GB; a few LF accuracies per class are estimated as well from
the sample. The LF summary's train statistics and the train coverage are the sample's."""


def candidate_columns(policy: GoldPolicy, label_column: str = "label") -> list[str]:
    """The columns :func:`assign_gold` reads of a candidate under ``policy``."""
    if policy.by == "file":
        return [label_column, "source_file", "source_row"]
    if policy.by == "column":
        from mlsys.data.definition import kept_name

        return [label_column, kept_name(str(policy.column))]
    return [label_column]


def gold_candidates(
    df: pd.DataFrame, policy: GoldPolicy, label_column: str = "label"
) -> np.ndarray:
    """Which rows of a partition the gold policy could keep gold (a boolean mask): the gold
    files' rows (``file``; labeled or not: an unlabeled one is an error the driver reports
    as one pass does), labeled rows marked dev or test (``column``), labeled rows
    (``fraction``). Every other row is a train row whatever the rest of the batch holds.

    Raises:
        ValueError: the partition lacks a column the policy reads, naming it.
    """
    missing = [c for c in candidate_columns(policy, label_column) if c not in df.columns]
    if missing:
        raise ValueError(
            f"gold policy by {policy.by} reads column(s) {missing}, not in the batch; "
            f"columns: {list(df.columns)}"
        )
    if policy.by == "file":
        return df["source_file"].isin(list(policy.files)).to_numpy(dtype=bool)
    labeled = df[label_column].notna().to_numpy(dtype=bool)
    if policy.by == "column":
        column = candidate_columns(policy, label_column)[1]
        values = df[column].astype("string").str.strip()
        marked = values.isin([*policy.dev, *policy.test]).fillna(False).to_numpy(dtype=bool)
        return marked & labeled
    return labeled


def assign_gold(candidates: pd.DataFrame, policy: GoldPolicy) -> pd.DataFrame:
    """The gold policy's dev and test rows among the ``candidates`` of every partition
    (concatenated in partition order, each with :data:`PART` and :data:`ROW`), in the order
    one pass of :func:`~mlsys.labeling.split.gold_split` over the batch gives them, with
    their ``split``; candidates left to train are not returned.

    Only candidates decide the split: by file, each gold file is shuffled on its own and
    the gold rows split by label; by fraction, the seeded draw ranks labeled rows by their
    order, which candidates keep. So the rows and their order equal one pass's.
    """
    split = gold_split(candidates.reset_index(drop=True), policy)
    gold = split[split["split"] != "train"]
    return gold.reset_index(drop=True)


@dataclass(frozen=True)
class GoldRows:
    """The batch's gold rows as :func:`assign_gold` gives them (``frame``, with ``split``),
    their LF votes (n, m), gold labels (-1: none) and which are dev rows."""

    frame: pd.DataFrame
    votes: np.ndarray
    labels: np.ndarray
    dev: np.ndarray

    @classmethod
    def of(cls, candidates: pd.DataFrame, policy: GoldPolicy, lfs: int) -> GoldRows:
        """The gold rows among every partition's ``candidates`` (with their votes under
        :func:`vote_columns` of ``lfs`` LFs)."""
        frame = assign_gold(candidates, policy)
        return cls(
            frame=frame,
            votes=frame[vote_columns(range(lfs))].to_numpy(dtype=np.int64),
            labels=frame["label"].to_numpy(dtype=np.int64, na_value=-1),
            dev=(frame["split"] == "dev").to_numpy(),
        )

    def weights(self, labeler: Labeler, weighting: Weighting) -> WeightModel:
        """How weak rows are weighted, fitted on the dev rows as
        :func:`~mlsys.labeling.batch.build_labeled_batch` fits it on a whole batch."""
        weak = weak_label_frame(self.votes, labeler)
        dev_gold = self.frame["label"].where(self.frame["split"] == "dev").astype("Int64")
        dev = pd.Series(self.dev, index=weak.index)
        return fit_weight_model(weak, dev_gold, weighting=weighting, dev_mask=dev)


def add_label_counts(
    tables: Sequence[pd.DataFrame],
) -> tuple[pd.DataFrame, SplitCounts, dict[str, int]]:
    """The partitions' rows per (split, label source) tables added up, with the rows per
    split and per label source."""
    table = (
        pd.concat(list(tables))
        .groupby(["split", "label_source"], observed=True)["rows"]
        .sum()
        .reset_index()
    )
    per_split = table.groupby("split")["rows"].sum()
    sources = table.groupby("label_source")["rows"].sum()
    return (
        table,
        SplitCounts(*(int(per_split.get(s, 0)) for s in SPLITS)),
        {s: int(sources.get(s, 0)) for s in ("gold", "weak", "none")},
    )


def train_sample(rows: int, total: int, part: int, seed: int) -> np.ndarray:
    """Which of a partition's ``rows`` train rows the label models are fitted on, when the
    batch has ``total`` train rows: all of them up to :data:`TRAIN_SAMPLE_ROWS`, else each
    with probability ``TRAIN_SAMPLE_ROWS / total``, drawn from (seed, partition), so a
    rerun draws the same rows."""
    if total <= TRAIN_SAMPLE_ROWS:
        return np.ones(rows, dtype=bool)
    rng = np.random.default_rng([seed, part])
    return rng.random(rows) < TRAIN_SAMPLE_ROWS / total


def label_partition(
    df: pd.DataFrame,
    votes: np.ndarray,
    splits: Mapping[int, str],
    labeler: Labeler,
    weights: WeightModel,
) -> pd.DataFrame:
    """One partition's labeled rows, as :func:`~mlsys.labeling.batch.build_labeled_batch`
    gives them for a whole batch: ``splits`` maps a row (0..n-1) to ``dev`` or ``test``
    (the driver's :func:`assign_gold`), every other row is ``train``; ``weights`` is the
    weight model fitted on the batch's dev rows."""
    if len(votes) != len(df):
        raise ValueError(f"{len(votes)} rows of votes for a partition of {len(df)} rows")
    split = np.full(len(df), "train", dtype=object)
    for row, name in splits.items():
        split[row] = name
    rows = df.reset_index(drop=True)
    rows["split"] = pd.Series(split, dtype="string")
    return build_labeled_batch(rows, votes, labeler, weighting=weights).frame


def splits_by_partition(gold: pd.DataFrame, partitions: int) -> list[dict[int, str]]:
    """:func:`assign_gold`'s rows as one ``{row: split}`` per partition."""
    out: list[dict[int, str]] = [{} for _ in range(partitions)]
    for part, row, name in zip(gold[PART], gold[ROW], gold["split"], strict=True):
        out[int(part)][int(row)] = str(name)
    return out


def vote_columns(lfs: Sequence[object]) -> list[str]:
    """Names under which a candidate's votes of ``lfs`` (names, or any sequence of their
    length) travel beside its columns."""
    return [f"_vote_{i}" for i in range(len(lfs))]
