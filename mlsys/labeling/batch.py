"""A whole batch through weak labeling: evaluate the labelers, build the labeled batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlsys.labeling.label_model import Labeler, TuningResult, weak_label_frame
from mlsys.labeling.merge import MergeResult, Weighting, WeightModel, merge_labels

QUARANTINE_REASON = "quarantine_reason"
TRAIN_SPLITS = ("train", "dev")
"""Splits a model learns from: weak labels on train rows, gold labels on dev rows."""


def split_unlabelable(
    df: pd.DataFrame, fields: tuple[str, ...] = ("text",)
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows the LFs can read, and the rest with a ``quarantine_reason`` naming the field.

    LFs read ``fields``; a row missing one of them (None, NaN, <NA>) cannot be labeled, so
    it goes to quarantine instead of failing the batch. ``len(ok) + len(quarantined) ==
    len(df)``; both keep ``df``'s columns and index labels.
    """
    missing_fields = [f for f in fields if f not in df.columns]
    if missing_fields:
        raise ValueError(
            f"batch has no column(s) {', '.join(map(repr, missing_fields))}; "
            f"columns: {', '.join(map(str, df.columns))}"
        )
    reason = pd.Series(pd.NA, index=df.index, dtype="string")
    for field in reversed(fields):
        reason[df[field].isna().to_numpy()] = f"missing {field}"
    bad = reason.notna().to_numpy()
    quarantined = df[bad].assign(**{QUARANTINE_REASON: reason[bad]})
    return df[~bad], quarantined


def lf_fields(kept: Sequence[str]) -> tuple[str, ...]:
    """The fields labeling functions may read: ``text`` and the dataset's ``kept`` columns."""
    return ("text", *kept)


def lf_view(
    df: pd.DataFrame, kept: Sequence[str], id_column: str | None = None
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """What labeling functions see of a batch, and the fields they may read: ``text`` and
    the dataset's ``kept`` columns (a missing kept value as ""; text must be present, see
    :func:`split_unlabelable`), plus the id column for error messages."""
    fields = lf_fields(kept)
    view = df[list(fields)].copy()
    for column in kept:
        view[column] = view[column].astype("string").fillna("")
    if id_column is not None and id_column not in fields:
        view[id_column] = df[id_column]
    return view, fields


def gold_array(df: pd.DataFrame, label_column: str = "label") -> np.ndarray:
    """Gold labels as int64 with -1 where a row has none."""
    return df[label_column].to_numpy(dtype=np.int64, na_value=-1)


def evaluate_labelers(
    tuning: TuningResult, L: np.ndarray, df: pd.DataFrame, splits: tuple[str, ...] = ("dev", "test")
) -> dict[str, float]:
    """Accuracy, F1, macro F1 and coverage of the chosen labeler, the label model and majority vote
    on each gold split, as flat metric names (``label_model_test_accuracy`` …)."""
    y = gold_array(df)
    candidates: dict[str, Labeler | None] = {
        "selected": tuning.best,
        "weighted_vote": tuning.weighted_vote,
        "label_model": tuning.label_model,
        "majority_vote": tuning.majority_vote,
    }
    metrics: dict[str, float] = {
        "lf_coverage_train": vote_coverage(L[(df["split"] == "train").to_numpy()])
    }
    for split in splits:
        mask = (df["split"] == split).to_numpy()
        if not mask.any():
            continue
        for name, labeler in candidates.items():
            if labeler is None:
                continue
            scores = labeler.metrics(L[mask], y[mask])
            for key in ("accuracy", "f1", "macro_f1", "coverage"):
                if key in scores:
                    metrics[f"{name}_{split}_{key}"] = float(scores[key])
    return metrics


def vote_coverage(L: np.ndarray) -> float:
    """The share of rows of ``L`` that at least one LF voted on (0 without rows)."""
    return float((L != -1).any(axis=1).mean()) if len(L) else 0.0


def build_labeled_batch(
    df: pd.DataFrame,
    L: np.ndarray,
    labeler: Labeler,
    *,
    weighting: Weighting | WeightModel = "calibrated",
    gold_splits: tuple[str, ...] = ("dev",),
) -> MergeResult:
    """The labeled batch: every row of ``df`` with its weak label, class probabilities,
    confidence, final ``label`` (gold where the row is in ``gold_splits``, else weak),
    ``label_source`` and training ``weight``.

    The raw label column becomes ``gold_label``, kept only for gold rows (dev and test):
    train rows' labels stay hidden. Test rows are labeled weakly like train rows, so a
    trainer that takes ``split in {train, dev}`` never sees test gold labels. A fitted
    ``weighting`` (a WeightModel, e.g. fitted on a batch's dev rows when it is labeled in
    partitions) is used as is.
    """
    weak = weak_label_frame(L, labeler, index=df.index)
    is_gold_row = df["split"].isin(gold_splits)
    gold = df["label"].where(is_gold_row).astype("Int64")
    merged = merge_labels(weak, gold, weighting=weighting, dev_mask=is_gold_row)
    base = df.drop(columns=["label"]).copy()
    base["gold_label"] = df["label"].where(df["split"] != "train").astype("Int64")
    frame = pd.concat([base, merged.frame], axis=1)
    return MergeResult(frame=frame, counts=merged.counts, weight_model=merged.weight_model)


def jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with NaN -> None and numpy scalars -> Python, for table artifacts."""
    out = []
    for row in rows:
        clean: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and value != value:
                value = None
            if isinstance(value, tuple):
                value = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value)
            clean[key] = value
        out.append(clean)
    return out


def training_rows(df: pd.DataFrame, use_weights: bool) -> pd.DataFrame:
    """Rows a model learns from: train and dev rows with a label (weak or gold)."""
    rows = df[df["split"].isin(TRAIN_SPLITS) & df["label"].notna()].copy()
    if rows.empty:
        raise ValueError("the labeled batch has no labeled train or dev rows to learn from")
    if not use_weights:
        rows["weight"] = 1.0
    return rows


def class_probabilities(rows: pd.DataFrame, n_classes: int) -> np.ndarray:
    """The labeler's class probabilities of labeled-batch ``rows`` (``proba_0`` ..
    ``proba_{k-1}``), (n, k), each row summing to 1 (Parquet keeps float64 sums within
    rounding; an end model's soft targets need them exact)."""
    proba = rows[[f"proba_{c}" for c in range(n_classes)]].to_numpy(dtype=np.float64)
    return np.asarray(proba / proba.sum(axis=1, keepdims=True))


def selection_rows(df: pd.DataFrame, use_weights: bool) -> dict[str, pd.DataFrame]:
    """Train rows with a (weak) label to learn from; gold dev rows to choose by; gold test
    rows to report."""
    train = df[(df["split"] == "train") & df["label"].notna()].copy()
    if not use_weights:
        train["weight"] = 1.0
    dev = df[(df["split"] == "dev") & df["gold_label"].notna()]
    test = df[(df["split"] == "test") & df["gold_label"].notna()]
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        if rows.empty:
            raise ValueError(
                f"the labeled batch has no {'labeled' if name == 'train' else 'gold'} "
                f"{name} rows: model selection needs train, dev and test rows"
            )
    return {"train": train, "dev": dev, "test": test}
