"""The tutorial split: sizes from SOURCE.md, stratification, nothing dropped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from mlsys.data import YOUTUBE_SPAM, read_source
from mlsys.labeling.split import holdout_split, split_counts


@pytest.fixture(scope="module")
def raw(youtube_dir: Path) -> pd.DataFrame:
    return read_source(youtube_dir, YOUTUBE_SPAM)


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
