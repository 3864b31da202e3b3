"""Gold splits: the tutorial split of youtube-spam (sizes from SOURCE.md, stratification,
nothing dropped) and every kind of dataset gold policy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from mlsys.data.definition import GoldPolicy
from mlsys.labeling.split import gold_split, holdout_split, split_counts
from tests.conftest import read_youtube


@pytest.fixture(scope="module")
def raw(youtube_dir: Path) -> pd.DataFrame:
    return read_youtube(youtube_dir)


def test_tutorial_sizes(raw: pd.DataFrame) -> None:
    split = holdout_split(raw)
    counts = split_counts(split)
    assert (counts.train, counts.dev, counts.test) == (1586, 120, 250)
    assert len(split) == len(raw)
    assert set(split.loc[split["split"] != "train", "source_file"]) == {"Youtube05-Shakira.csv"}


def test_matches_the_tutorial_procedure(youtube_dir: Path, raw: pd.DataFrame) -> None:
    """Same rows as the Snorkel tutorial's own loading code gives."""
    shakira = pd.read_csv(youtube_dir / "Youtube05-Shakira.csv")
    shakira = shakira.sample(frac=1, random_state=123).reset_index(drop=True)
    _, test = train_test_split(shakira, test_size=250, random_state=123, stratify=shakira.CLASS)
    split = holdout_split(raw)
    ours = split.loc[split["split"] == "test", "comment_id"].tolist()
    assert ours == test["COMMENT_ID"].tolist()


def test_stratified_test_split(raw: pd.DataFrame) -> None:
    split = holdout_split(raw)
    gold = split[split["split"] != "train"]
    test = split[split["split"] == "test"]
    assert abs(test["label"].mean() - gold["label"].mean()) < 0.01


def test_unknown_holdout_file_is_named(raw: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"nope\.csv"):
        holdout_split(raw, holdout_files=["nope.csv"])


def test_holdout_without_labels_is_refused(raw: pd.DataFrame) -> None:
    unlabeled = raw.copy()
    unlabeled.loc[unlabeled["source_file"] == "Youtube05-Shakira.csv", "label"] = pd.NA
    with pytest.raises(ValueError, match="370 holdout row"):
        holdout_split(unlabeled)


# --- gold_split: the dataset's gold policy ---------------------------------------------------


def _batch(n: int, labels: list[int | None], groups: list[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "text": [f"text {i}" for i in range(n)],
            "label": pd.array(labels, dtype="Int64"),
            "source_file": ["a.jsonl"] * n,
            "source_row": range(n),
        }
    )
    if groups is not None:
        frame["source_split"] = pd.array(groups, dtype="string")
    return frame


def test_gold_split_by_column_uses_its_dev_and_test_values() -> None:
    groups = ["train", "valid", "test", "train", "valid", "test", "other", "test"]
    labels: list[int | None] = [0, 1, 2, 1, 0, 2, 1, None]
    policy = GoldPolicy(by="column", column="split", dev=["valid"], test=["test"])
    out = gold_split(_batch(8, labels, groups), policy)
    # The unlabeled "test" row cannot be gold: it is weakly labeled like train rows.
    assert out["split"].tolist() == [
        "train", "dev", "test", "train", "dev", "test", "train", "train",
    ]  # fmt: skip
    assert len(out) == 8 and out["id"].tolist() == [f"r{i}" for i in range(8)]


def test_gold_split_by_fraction_is_seeded_stratified_and_loses_nothing() -> None:
    labels: list[int | None] = [i % 3 for i in range(300)] + [None] * 20
    policy = GoldPolicy(by="fraction", fraction=0.2, test_size=0.5, seed=7)
    first = gold_split(_batch(320, labels), policy)
    again = gold_split(_batch(320, labels), policy)
    assert first["split"].tolist() == again["split"].tolist()
    counts = first["split"].value_counts().to_dict()
    assert counts == {"train": 260, "dev": 30, "test": 30}
    gold = first[first["split"] != "train"]
    assert gold["label"].notna().all()
    assert gold.groupby("split")["label"].value_counts().unstack().eq(10).all().all()
    other = gold_split(_batch(320, labels), policy.model_copy(update={"seed": 8}))
    assert other["split"].tolist() != first["split"].tolist()


def test_gold_split_by_fraction_takes_a_row_count_as_test_size() -> None:
    labels: list[int | None] = [i % 2 for i in range(100)]
    out = gold_split(_batch(100, labels), GoldPolicy(by="fraction", fraction=0.3, test_size=10))
    assert out["split"].value_counts().to_dict() == {"train": 70, "dev": 20, "test": 10}


def test_gold_split_refuses_a_policy_that_leaves_no_dev_rows_naming_the_counts() -> None:
    policy = GoldPolicy(by="column", column="split", dev=["valid"], test=["test"])
    with pytest.raises(ValueError, match=r"leaves no gold dev row: dev 0, test 1 of 3 rows"):
        gold_split(_batch(3, [0, 1, 0], ["train", "test", "train"]), policy)


def test_gold_split_names_a_missing_policy_column() -> None:
    policy = GoldPolicy(by="column", column="fold", dev=["1"], test=["2"])
    with pytest.raises(ValueError, match=r"gold.column 'fold' \(read as 'fold'\) is not in the"):
        gold_split(_batch(3, [0, 1, 0]), policy)
