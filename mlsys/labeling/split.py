"""Split a labeled raw batch into hidden-label train rows, gold dev rows and gold test rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

if TYPE_CHECKING:
    from mlsys.data.definition import GoldPolicy

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
    train_parts = [p for p, n in zip(shuffled, files, strict=True) if n not in holdout]
    train = pd.concat(train_parts) if train_parts else df.iloc[:0]
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


def gold_split(
    df: pd.DataFrame, policy: GoldPolicy, *, label_column: str = "label"
) -> pd.DataFrame:
    """Add a ``split`` column (train / dev / test) as a dataset's gold policy says.

    - ``by: file``: :func:`holdout_split` with the policy's files.
    - ``by: column``: rows whose value in the policy's column (as read, see
      ``kept_name``) is one of ``dev`` / ``test`` are dev / test rows; all others train.
    - ``by: fraction``: a seeded, class-stratified share ``fraction`` of the labeled rows
      keeps gold labels and is split into dev and test by ``test_size`` (stratified where
      every class has two rows); all others are train.

    A dev or test row without a gold label cannot be gold: it becomes a train row (its
    label is missing anyway). No row is dropped; row order is kept except for
    ``by: file``, which follows the tutorial's per-file shuffles.

    Raises:
        ValueError: the batch lacks the policy's column, or the policy leaves no gold dev
            or no gold test row; the message names the policy and the counts.
    """
    if policy.by == "file":
        return holdout_split(
            df,
            holdout_files=list(policy.files),
            test_size=_size(policy.test_size),
            seed=policy.seed,
            label_column=label_column,
        )
    labeled = df[label_column].notna().to_numpy() if label_column in df.columns else None
    if labeled is None:
        raise ValueError(f"the batch has no {label_column!r} column; columns: {list(df.columns)}")
    split = np.full(len(df), "train", dtype=object)
    if policy.by == "column":
        from mlsys.data.definition import kept_name

        column = kept_name(str(policy.column))
        if column not in df.columns:
            raise ValueError(
                f"gold.column {policy.column!r} (read as {column!r}) is not in the batch; "
                f"columns: {list(df.columns)}"
            )
        values = df[column].astype("string").str.strip()
        split[(values.isin(policy.dev).fillna(False).to_numpy(dtype=bool)) & labeled] = "dev"
        split[(values.isin(policy.test).fillna(False).to_numpy(dtype=bool)) & labeled] = "test"
        where = (
            f"gold by column {policy.column!r} (dev {list(policy.dev)}, test {list(policy.test)})"
        )
    else:
        positions = np.flatnonzero(labeled)
        fraction = float(policy.fraction or 0.0)
        n_gold = round(fraction * len(positions))
        if n_gold >= 2:
            y = df[label_column].to_numpy()[positions]
            gold, _ = _split(positions, y, n_gold, policy.seed)
            y_gold = df[label_column].to_numpy()[gold]
            size = _size(policy.test_size)
            n_test = size if isinstance(size, int) else round(size * len(gold))
            n_test = min(max(n_test, 1), len(gold) - 1)
            test, dev = _split(gold, y_gold, n_test, policy.seed)
            split[dev] = "dev"
            split[test] = "test"
        where = f"gold by fraction {fraction} of {len(positions)} labeled rows"
    counts = {name: int((split == name).sum()) for name in ("dev", "test")}
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise ValueError(
            f"{where} leaves no gold {' and no gold '.join(empty)} row: dev {counts['dev']}, "
            f"test {counts['test']} of {len(df)} rows ({int(labeled.sum())} labeled)"
        )
    out = df.copy()
    out["split"] = pd.Series(split, index=df.index, dtype="string")
    return out.reset_index(drop=True)


def _size(test_size: float) -> int | float:
    """A test size as train_test_split wants it: a row count (int) or a share below 1."""
    return int(test_size) if test_size >= 1 else float(test_size)


def _split(
    positions: np.ndarray, y: np.ndarray, n_first: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``positions`` cut into ``n_first`` and the rest, stratified by ``y`` where every
    class has at least two rows, else a plain seeded shuffle."""
    _, counts = np.unique(np.asarray(y, dtype=np.int64), return_counts=True)
    n_first = min(max(n_first, 1), len(positions) - 1)
    stratify = (
        y if counts.min() >= 2 and len(counts) <= min(n_first, len(positions) - n_first) else None
    )
    first, rest = train_test_split(
        positions, train_size=n_first, random_state=seed, stratify=stratify
    )
    return np.sort(first), np.sort(rest)


def split_counts(df: pd.DataFrame) -> SplitCounts:
    counts = df["split"].value_counts()
    return SplitCounts(*(int(counts.get(s, 0)) for s in SPLITS))
