"""Weak labeling in partitions (mlsys/labeling/parts.py): the gold rows chosen from each
partition's candidates equal one pass's over the whole batch, for every gold policy, and a
partition's labeled rows equal the whole batch's labeled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsys.data.definition import GoldPolicy
from mlsys.labeling import build_labeled_batch, fit_labeler, weak_label_frame
from mlsys.labeling.merge import fit_weight_model
from mlsys.labeling.parts import (
    PART,
    ROW,
    TRAIN_SAMPLE_ROWS,
    GoldRows,
    assign_gold,
    candidate_columns,
    gold_candidates,
    label_partition,
    splits_by_partition,
    train_sample,
)
from mlsys.labeling.split import gold_split


def _batch(rows: int = 900, seed: int = 0) -> pd.DataFrame:
    """Three source files, labels partly missing, a split column, ids unique."""
    rng = np.random.default_rng(seed)
    files = np.array(["a.csv", "b.csv", "gold.csv"])[rng.integers(0, 3, rows)]
    label = pd.array(rng.integers(0, 3, rows), dtype="Int64")
    label[rng.random(rows) < 0.2] = pd.NA
    source_row = np.zeros(rows, dtype=np.int64)
    for name in np.unique(files):
        where = files == name
        source_row[where] = rng.permutation(int(where.sum()))  # rows out of file order
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(rows)],
            "text": [f"text {i}" for i in range(rows)],
            "label": label,
            "source_file": pd.array(files, dtype="string"),
            "source_row": source_row,
            "extra_split": pd.array(
                np.array(["train", "valid", "test", None], dtype=object)[rng.integers(0, 4, rows)],
                dtype="string",
            ),
        }
    )


def _in_parts(df: pd.DataFrame, policy: GoldPolicy, sizes: list[int]) -> pd.DataFrame:
    """What every partition sends: its candidates with their partition and row."""
    pieces, start = [], 0
    for part, size in enumerate(sizes):
        rows = df.iloc[start : start + size].reset_index(drop=True)
        mask = gold_candidates(rows, policy)
        chosen = rows.loc[mask, [*candidate_columns(policy), "id"]].copy()
        chosen[PART] = part
        chosen[ROW] = np.flatnonzero(mask)
        pieces.append(chosen)
        start += size
    assert start == len(df)
    return pd.concat(pieces, ignore_index=True)


POLICIES = {
    "file": GoldPolicy(by="file", files=("gold.csv",), test_size=40, seed=7),
    "column": GoldPolicy(by="column", column="extra_split", dev=("valid",), test=("test",), seed=7),
    "fraction": GoldPolicy(by="fraction", fraction=0.3, test_size=0.4, seed=7),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_gold_rows_from_candidates_equal_one_pass_over_the_batch(name: str) -> None:
    df = _batch()
    if name == "file":  # a gold file's rows are all labeled, as one pass demands
        df.loc[df["source_file"] == "gold.csv", "label"] = df["label"].fillna(1)
    policy = POLICIES[name]
    one = gold_split(df, policy)
    expected = one[one["split"] != "train"][["id", "split"]].reset_index(drop=True)

    gold = assign_gold(_in_parts(df, policy, [250, 1, 349, 300]), policy)
    pd.testing.assert_frame_equal(gold[["id", "split"]], expected)  # same rows, same order
    # Each row's place is its partition's row.
    starts = np.cumsum([0, 250, 1, 349])
    positions = starts[gold[PART].to_numpy()] + gold[ROW].to_numpy()
    assert list(df["id"].to_numpy()[positions]) == list(gold["id"])
    by_part = splits_by_partition(gold, 4)
    assert sum(len(p) for p in by_part) == len(gold)


def test_an_unlabeled_gold_file_row_fails_as_in_one_pass() -> None:
    df = _batch()
    policy = POLICIES["file"]
    with pytest.raises(ValueError, match="have no gold 'label'") as one:
        gold_split(df, policy)
    with pytest.raises(ValueError, match="have no gold 'label'") as parts:
        assign_gold(_in_parts(df, policy, [450, 450]), policy)
    assert str(one.value) == str(parts.value)


def test_a_partition_without_the_policys_column_is_refused_naming_it() -> None:
    df = _batch().drop(columns=["source_row"])
    with pytest.raises(ValueError, match=r"column\(s\) \['source_row'\], not in the batch"):
        gold_candidates(df, POLICIES["file"])


def test_train_sample_is_every_row_up_to_the_cap_else_seeded() -> None:
    assert train_sample(10, TRAIN_SAMPLE_ROWS, 3, 1).all()
    drawn = train_sample(100_000, 10 * TRAIN_SAMPLE_ROWS, 3, 1)
    assert 0.08 < drawn.mean() < 0.12
    np.testing.assert_array_equal(drawn, train_sample(100_000, 10 * TRAIN_SAMPLE_ROWS, 3, 1))
    assert not np.array_equal(drawn, train_sample(100_000, 10 * TRAIN_SAMPLE_ROWS, 4, 1))


def test_labeled_partitions_equal_the_whole_batch_labeled() -> None:
    df = _batch(600, seed=1)
    policy = POLICIES["fraction"]
    rng = np.random.default_rng(2)
    truth = df["label"].fillna(0).to_numpy(dtype=np.int64)
    L = np.where(rng.random((len(df), 4)) < 0.6, truth[:, None], -1)
    noise = rng.random(L.shape) < 0.15
    L[noise] = rng.integers(0, 3, L.shape)[noise]
    whole = gold_split(df, policy)  # fraction keeps row order
    dev = (whole["split"] == "dev").to_numpy()
    train = (whole["split"] == "train").to_numpy()
    y = whole["label"].to_numpy(dtype=np.int64, na_value=-1)
    tuning = fit_labeler(L[train], L_dev=L[dev], y_dev=y[dev], cardinality=3, seed=1)
    expected = build_labeled_batch(whole, L, tuning.best).frame

    gold = assign_gold(_in_parts(df, policy, [200, 400]), policy)
    gold_rows = whole[whole["split"] != "train"].index.to_numpy()
    weak = weak_label_frame(L[gold_rows], tuning.best)
    is_dev = (gold["split"] == "dev").reset_index(drop=True)
    weights = fit_weight_model(
        weak, gold["label"].where(gold["split"] == "dev").astype("Int64"), dev_mask=is_dev
    )
    rows = GoldRows(
        frame=gold,
        votes=L[gold_rows],
        labels=gold["label"].to_numpy(dtype=np.int64, na_value=-1),
        dev=is_dev.to_numpy(),
    )
    assert rows.weights(tuning.best, "calibrated") == weights
    splits = splits_by_partition(gold, 2)
    parts = [
        label_partition(df.iloc[a:b], L[a:b], splits[n], tuning.best, weights)
        for n, (a, b) in enumerate([(0, 200), (200, 600)])
    ]
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), expected)


def test_votes_of_another_length_are_refused() -> None:
    df = _batch(10)
    with pytest.raises(ValueError, match="9 rows of votes for a partition of 10 rows"):
        label_partition(df, np.zeros((9, 2), dtype=np.int64), {}, None, None)  # type: ignore[arg-type]
