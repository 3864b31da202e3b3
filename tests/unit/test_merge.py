"""Gold + weak merge: gold wins, weights in (0, 1], nothing dropped, calibration monotone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsys.labeling.label_model import ABSTAIN
from mlsys.labeling.merge import MIN_WEIGHT, WeightModel, fit_weight_model, merge_labels


def weak_frame(
    labels: list[int], confidence: list[float], index: list[str] | None = None
) -> pd.DataFrame:
    conf = np.asarray(confidence, dtype=float)
    lab = np.asarray(labels)
    proba_1 = np.where(lab == 1, conf, 1 - conf)
    return pd.DataFrame(
        {
            "weak_label": lab.astype(np.int64),
            "proba_0": 1 - proba_1,
            "proba_1": proba_1,
            "confidence": conf,
        },
        index=index,
    )


def gold_series(values: list[int | None], index: pd.Index) -> pd.Series:
    return pd.Series(pd.array(values, dtype="Int64"), index=index)


@pytest.fixture
def small() -> tuple[pd.DataFrame, pd.Series]:
    weak = weak_frame(
        [0, 1, ABSTAIN, 1, ABSTAIN, 0, 1],
        [0.9, 0.8, 0.5, 0.7, 0.5, 0.6, 0.95],
        index=list("abcdefg"),
    )
    gold = gold_series([0, 0, None, None, 1, None, None], weak.index)
    return weak, gold


def test_gold_wins_and_every_row_is_kept_with_its_source(
    small: tuple[pd.DataFrame, pd.Series],
) -> None:
    weak, gold = small
    result = merge_labels(weak, gold, weighting="confidence")
    frame = result.frame
    assert frame.index.equals(weak.index)
    assert frame["label"].tolist() == [0, 0, pd.NA, 1, 1, 0, 1]
    assert frame["label_source"].tolist() == [
        "gold",
        "gold",
        "none",
        "weak",
        "gold",
        "weak",
        "weak",
    ]
    assert str(frame["label"].dtype) == "Int64"
    assert result.counts == {"gold": 3, "weak": 3, "none": 1}
    assert sum(result.counts.values()) == len(weak)


def test_gold_weighs_one_weak_between_zero_and_one_and_unlabeled_zero(
    small: tuple[pd.DataFrame, pd.Series],
) -> None:
    weak, gold = small
    for weighting in ("confidence", "calibrated", "per_source"):
        frame = merge_labels(weak, gold, weighting=weighting).frame
        by_source = frame.groupby("label_source")["weight"]
        assert (by_source.get_group("gold") == 1.0).all(), weighting
        weak_weights = by_source.get_group("weak")
        assert ((weak_weights > 0) & (weak_weights <= 1)).all(), weighting
        assert (by_source.get_group("none") == 0.0).all(), weighting
        assert frame["weight"].dtype == np.float64


def test_per_source_weight_is_the_weak_accuracy_on_dev(
    small: tuple[pd.DataFrame, pd.Series],
) -> None:
    weak, gold = small
    # Dev rows with both labels: a (0 vs 0, right) and b (1 vs 0, wrong).
    result = merge_labels(weak, gold, weighting="per_source")
    assert result.weight_model.dev_rows == 2
    assert result.weight_model.dev_accuracy == pytest.approx(0.5)
    assert result.frame.loc[["d", "f", "g"], "weight"].tolist() == [0.5, 0.5, 0.5]


def test_calibrated_weight_rises_with_confidence_and_tracks_accuracy() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    confidence = rng.uniform(0.5, 1.0, n)
    truth = rng.integers(0, 2, n)
    # The weak label is right with probability equal to its confidence.
    right = rng.random(n) < confidence
    weak = weak_frame(list(np.where(right, truth, 1 - truth)), list(confidence))
    gold = gold_series(list(truth), weak.index)
    model = fit_weight_model(weak, gold, weighting="calibrated")
    grid = np.linspace(0.0, 1.0, 101)
    weights = model.weights(grid)
    assert np.all(np.diff(weights) >= 0)
    assert weights.min() >= MIN_WEIGHT and weights.max() <= 1.0
    assert model.weights(np.array([0.55]))[0] == pytest.approx(0.55, abs=0.1)
    assert model.weights(np.array([0.95]))[0] == pytest.approx(0.95, abs=0.1)


def test_a_fitted_weight_model_weights_a_batch_without_gold(
    small: tuple[pd.DataFrame, pd.Series],
) -> None:
    weak, gold = small
    model = fit_weight_model(weak, gold, weighting="per_source")
    batch = weak_frame([1, 0, ABSTAIN], [0.9, 0.7, 0.5])
    result = merge_labels(batch, gold_series([None] * 3, batch.index), weighting=model)
    assert result.frame["weight"].tolist() == [0.5, 0.5, 0.0]
    assert result.counts == {"gold": 0, "weak": 2, "none": 1}


def test_dev_mask_limits_the_rows_calibration_learns_from(
    small: tuple[pd.DataFrame, pd.Series],
) -> None:
    weak, gold = small
    only_a = pd.Series([True] + [False] * 6, index=weak.index)
    result = merge_labels(weak, gold, weighting="per_source", dev_mask=only_a)
    assert result.weight_model.dev_rows == 1
    assert result.frame.loc["d", "weight"] == 1.0


def test_calibration_without_dev_rows_says_what_to_do_instead() -> None:
    weak = weak_frame([1, 0, 1], [0.9, 0.8, 0.7])
    gold = gold_series([None, None, None], weak.index)
    with pytest.raises(ValueError, match=r"found 0 among 0 gold row.*weighting='confidence'"):
        merge_labels(weak, gold, weighting="calibrated")
    assert merge_labels(weak, gold, weighting="confidence").frame["weight"].tolist() == [
        0.9,
        0.8,
        0.7,
    ]


def test_misaligned_or_malformed_inputs_are_rejected_with_their_details() -> None:
    weak = weak_frame([1, 0, 1], [0.9, 0.8, 0.7])
    with pytest.raises(ValueError, match=r"gold \(2 rows\).*\(3 rows\)"):
        merge_labels(weak, gold_series([1, 0], pd.RangeIndex(2)))
    with pytest.raises(ValueError, match=r"missing column.*confidence"):
        merge_labels(weak.drop(columns="confidence"), gold_series([1, 0, 1], weak.index))
    with pytest.raises(ValueError, match=r"gold label at index 2 is 5, outside \[0, 1\]"):
        merge_labels(weak, gold_series([1, 0, 5], weak.index), weighting="confidence")
    bad = weak.assign(confidence=[0.9, 1.5, 0.7])
    with pytest.raises(ValueError, match=r"confidence at index 1 is 1\.5"):
        merge_labels(bad, gold_series([1, 0, 1], weak.index))


def test_weight_model_is_a_plain_record() -> None:
    model = WeightModel(
        "calibrated", dev_rows=3, dev_accuracy=0.5, knots_x=(0.6, 0.9), knots_y=(0.2, 1.0)
    )
    np.testing.assert_allclose(model.weights(np.array([0.5, 0.75, 1.0])), [0.2, 0.6, 1.0])


def test_split_unlabelable_quarantines_rows_without_text_and_loses_none() -> None:
    from mlsys.labeling.batch import split_unlabelable

    df = pd.DataFrame(
        {"comment_id": ["a", "b", "c", "d"], "text": pd.array(["x", None, "", pd.NA], "string")}
    )
    ok, quarantined = split_unlabelable(df)
    assert list(ok["comment_id"]) == ["a", "c"]
    assert list(quarantined["comment_id"]) == ["b", "d"]
    assert list(quarantined["quarantine_reason"]) == ["missing text", "missing text"]
    assert len(ok) + len(quarantined) == len(df)
    with pytest.raises(ValueError, match="no column\\(s\\) 'body'"):
        split_unlabelable(df, ("body",))


def test_training_rows_are_labeled_train_and_dev_rows() -> None:
    from mlsys.labeling.batch import training_rows

    df = pd.DataFrame(
        {
            "split": ["train", "train", "dev", "test"],
            "label": pd.array([1, pd.NA, 0, 1], dtype="Int64"),
            "weight": [0.7, 0.0, 1.0, 0.9],
        }
    )
    rows = training_rows(df, use_weights=True)
    assert list(rows.index) == [0, 2] and list(rows["weight"]) == [0.7, 1.0]
    assert list(training_rows(df, use_weights=False)["weight"]) == [1.0, 1.0]
    assert list(df["weight"]) == [0.7, 0.0, 1.0, 0.9]  # the input is left alone
    with pytest.raises(ValueError, match="no labeled train or dev rows"):
        training_rows(df[df["split"] == "test"], use_weights=True)


def test_selection_rows_learn_from_train_choose_on_dev_report_on_test() -> None:
    from mlsys.labeling.batch import selection_rows

    df = pd.DataFrame(
        {
            "split": ["train", "train", "dev", "dev", "test"],
            "label": [1, None, 0, 1, 1],
            "gold_label": [None, None, 0, 1, 1],
            "weight": [0.5, 0.7, 1.0, 1.0, 0.9],
        }
    ).astype({"label": "Int64", "gold_label": "Int64"})
    rows = selection_rows(df, use_weights=False)
    assert [len(rows[k]) for k in ("train", "dev", "test")] == [1, 2, 1]
    assert rows["train"]["weight"].tolist() == [1.0]
    assert selection_rows(df, use_weights=True)["train"]["weight"].tolist() == [0.5]
    with pytest.raises(ValueError, match="no gold test rows"):
        selection_rows(df[df["split"] != "test"], use_weights=True)
