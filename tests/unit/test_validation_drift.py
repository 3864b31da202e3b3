"""Drift and skew statistics: JS divergence, L-infinity distance, per-feature comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from mlsys.data import PROVENANCE_COLUMNS
from mlsys.validation import (
    FeatureDrift,
    compare,
    histograms,
    infer_schema,
    jensen_shannon,
    js_divergence,
    linf_distance,
    schema_drift_specs,
)
from tests.conftest import read_youtube


@pytest.fixture(scope="module")
def youtube(youtube_dir: Path) -> pd.DataFrame:
    return read_youtube(youtube_dir).drop(columns=list(PROVENANCE_COLUMNS))


@pytest.fixture(scope="module")
def by_file(youtube_dir: Path) -> dict[str, pd.DataFrame]:
    df = read_youtube(youtube_dir)
    return {
        str(name): group.drop(columns=list(PROVENANCE_COLUMNS))
        for name, group in df.groupby("source_file")
    }


@pytest.mark.parametrize("binning", ["quantile", "uniform"])
def test_identical_samples_have_zero_divergence(binning: str) -> None:
    sample = np.random.default_rng(0).normal(size=500)
    assert js_divergence(sample, sample, binning=binning) == 0.0  # type: ignore[arg-type]


@pytest.mark.parametrize("binning", ["quantile", "uniform"])
def test_disjoint_supports_have_divergence_one(binning: str) -> None:
    rng = np.random.default_rng(0)
    low, high = rng.uniform(0, 1, 300), rng.uniform(10, 11, 200)
    assert js_divergence(low, high, binning=binning) == pytest.approx(1.0)  # type: ignore[arg-type]


def test_quantile_bins_keep_the_reference_inside_and_the_rest_outside() -> None:
    ref, cur = histograms([1.0, 2.0, 3.0, 4.0], [0.0, 2.5, 4.0, 9.0], bins=3)
    assert ref.tolist() == [0, 1, 1, 2, 0]
    assert cur.tolist() == [1, 0, 1, 1, 1]


def test_agrees_with_scipy_on_the_same_histograms() -> None:
    rng = np.random.default_rng(1)
    ref, cur = histograms(rng.normal(0, 1, 400), rng.normal(0.7, 1.5, 300), bins=12)
    expected = jensenshannon(ref, cur, base=2) ** 2
    assert jensen_shannon(ref, cur) == pytest.approx(expected, abs=1e-12)
    assert 0.05 < expected < 1


def test_linf_counts_missing_as_a_category() -> None:
    assert linf_distance(["a", "a", "b", None], ["a", "b", "b", "b"]) == pytest.approx(0.5)
    assert linf_distance([1, 1, 2], [1, 1, 2]) == 0.0
    assert linf_distance(["a", "b"], ["c", "d"]) == pytest.approx(0.5)
    assert linf_distance(["a"], [None]) == pytest.approx(1.0)


def test_empty_or_nan_samples_raise() -> None:
    with pytest.raises(ValueError, match="current sample is empty"):
        js_divergence([1.0], [])
    with pytest.raises(ValueError, match="reference sample has 1 NaN"):
        js_divergence([1.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="reference sample is empty"):
        linf_distance([], ["a"])


def test_metric_names() -> None:
    text = FeatureDrift("text", "drift", "js", "length", 0.2, 0.1, True)
    label = FeatureDrift("label", "skew", "linf", "value", 0.0, 0.1, False)
    assert (text.metric_name, label.metric_name) == ("drift_js_text_length", "skew_linf_label")


def test_youtube_files_drift_little_and_a_long_text_batch_drifts(
    by_file: dict[str, pd.DataFrame],
) -> None:
    eminem, shakira = by_file["Youtube04-Eminem.csv"], by_file["Youtube05-Shakira.csv"]
    schema = infer_schema(eminem, id_columns=("comment_id",))
    drifts = {d.metric_name: d for d in compare(eminem, shakira, schema_drift_specs(schema))}
    assert set(drifts) == {"drift_js_author_length", "drift_js_text_length", "drift_linf_label"}
    assert 0 < drifts["drift_js_text_length"].value < 0.1
    assert not any(d.drifted for d in drifts.values())

    longer = shakira.assign(text=shakira["text"] * 10)
    skew = {
        d.metric_name: d for d in compare(eminem, longer, schema_drift_specs(schema), kind="skew")
    }
    assert skew["skew_js_text_length"].drifted
    assert skew["skew_js_text_length"].value > 0.3
    assert not skew["skew_linf_label"].drifted


def test_compare_names_the_empty_or_missing_feature(youtube: pd.DataFrame) -> None:
    schema = infer_schema(youtube, id_columns=("comment_id",))
    with pytest.raises(ValueError, match="'text' has no values in the current batch"):
        compare(youtube, youtube.iloc[:0], schema_drift_specs(schema))
    with pytest.raises(ValueError, match="'label' is missing from the reference batch"):
        compare(youtube.drop(columns="label"), youtube, schema_drift_specs(schema))
    with pytest.raises(ValueError, match="'sideways'"):
        compare(youtube, youtube, schema_drift_specs(schema), kind="sideways")  # type: ignore[arg-type]
