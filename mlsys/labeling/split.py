"""Split a labeled raw batch into hidden-label train rows, gold dev rows and gold test rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from sklearn.model_selection import train_test_split

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class SplitCounts:
    train: int
    dev: int
    test: int


def holdout_split(
    df: pd.DataFrame,
    *,
    holdout_files: Sequence[str] | None = None,
    test_size: int | float = 250,
    seed: int = 123,
    label_column: str = "label",
) -> pd.DataFrame:
    """Add a ``split`` column the way the Snorkel spam tutorial splits YouTube.

    Each source file is shuffled with ``seed``; rows of ``holdout_files`` (default: the
    last file in name order) keep their gold labels and are split, stratified by label,
    into ``test`` (``test_size`` rows) and ``dev`` (the rest); every other row is
    ``train``, whose labels the weak-labeling stage must not see. Row order follows the
    per-file shuffles (train files first), as in the tutorial. No row is dropped.
    """
    if "source_file" not in df.columns:
        raise ValueError("holdout_split needs a source_file column (a raw batch from ingest)")
    files = sorted(df["source_file"].dropna().unique())
    if not files:
        raise ValueError("holdout_split got an empty batch")
    holdout = list(holdout_files) if holdout_files else [files[-1]]
    unknown = sorted(set(holdout) - set(files))
    if unknown:
        raise ValueError(f"holdout file(s) {', '.join(unknown)} not in the batch; files: {files}")
    shuffled = []
    for name in files:
        part = df[df["source_file"] == name]
        if "source_row" in part.columns:
            part = part.sort_values("source_row", kind="stable")
        shuffled.append(part.sample(frac=1, random_state=seed))
    train = pd.concat([p for p, n in zip(shuffled, files, strict=True) if n not in holdout])
    gold = pd.concat([p for p, n in zip(shuffled, files, strict=True) if n in holdout])
    missing = gold[label_column].isna() if label_column in gold.columns else None
    if missing is None or bool(missing.any()):
        count = len(gold) if missing is None else int(missing.sum())
        raise ValueError(f"{count} holdout row(s) in {holdout} have no gold {label_column!r}")
    dev, test = train_test_split(
        gold, test_size=test_size, random_state=seed, stratify=gold[label_column]
    )
    out: pd.DataFrame = pd.concat(
        [train.assign(split="train"), dev.assign(split="dev"), test.assign(split="test")]
    )
    out["split"] = out["split"].astype("string")
    return out.reset_index(drop=True)


def split_counts(df: pd.DataFrame) -> SplitCounts:
    counts = df["split"].value_counts()
    return SplitCounts(*(int(counts.get(s, 0)) for s in SPLITS))
