"""A suite checked in partitions and merged gives one pass's verdict: the same failures
with the same counts and examples, the same drift, the same rows quarantined for the same
reasons (against run_checkpoint on the whole batch, real GX both ways)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlsys.validation.checkpoint import (
    REASON_COLUMN,
    CheckpointReport,
    load_shipped_suite,
    run_checkpoint,
    split_rows,
)
from mlsys.validation.partitioned import (
    Merge,
    PartitionedVerdict,
    check_partition,
    drift_profiles,
    key_values,
    unmergeable,
)
from tests.conftest import read_youtube

UNIQUE = "expect_column_values_to_be_unique"


def damaged(youtube: pd.DataFrame) -> pd.DataFrame:
    """The comments with what the raw suite quarantines, spread over the batch: empty
    and HTML texts, a label that is no class, and ids repeated across partitions."""
    df = youtube.copy().reset_index(drop=True)
    df.loc[[3, 700, 1500], "text"] = pd.NA
    df.loc[[10, 1200], "text"] = "<b>buy now</b>"
    df.loc[[20, 1800], "label"] = 7
    df.loc[[900, 1700], "comment_id"] = df.loc[[5, 6], "comment_id"].to_numpy()
    df.at[1701, "comment_id"] = df.at[901, "comment_id"]
    return df


def in_partitions(
    df: pd.DataFrame,
    suite: dict[str, Any],
    cuts: list[int],
    *,
    mode: str,
    reference: pd.DataFrame | None = None,
) -> tuple[PartitionedVerdict, list[pd.DataFrame]]:
    bounds = [0, *cuts, len(df)]
    parts = [df.iloc[a:b].reset_index(drop=True) for a, b in itertools.pairwise(bounds)]
    profiles = drift_profiles(reference, suite)
    merge = Merge(suite, [check_partition(p, suite, profiles=profiles) for p in parts])
    values = {
        (p, i): key_values(parts[p], merge.key_column(i), rows)
        for (p, i), rows in merge.repeated_keys().items()
    }
    verdict = merge.verdict(mode=mode, key_values=values, profiles=profiles)  # type: ignore[arg-type]
    return verdict, parts


def same_rows(
    report: CheckpointReport, verdict: PartitionedVerdict, parts: list[pd.DataFrame]
) -> None:
    splits = [split_rows(p, d) for p, d in zip(parts, verdict.drops, strict=True)]
    passed = pd.concat([s[0] for s in splits], ignore_index=True)
    quarantined = pd.concat([s[1] for s in splits], ignore_index=True)
    pd.testing.assert_frame_equal(passed, report.passed.reset_index(drop=True))
    pd.testing.assert_frame_equal(quarantined, report.quarantined.reset_index(drop=True))


@pytest.fixture(scope="module")
def youtube(youtube_dir: Path) -> pd.DataFrame:
    return read_youtube(youtube_dir)


@pytest.fixture(scope="module")
def raw_suite() -> dict[str, Any]:
    return load_shipped_suite("raw")


def test_raw_suite_in_partitions_quarantines_what_one_pass_does(
    youtube: pd.DataFrame, raw_suite: dict[str, Any]
) -> None:
    df = damaged(youtube)
    reference = youtube.iloc[:400]  # one video's comments: text lengths and labels moved
    one = run_checkpoint(df, raw_suite, mode="quarantine", reference=reference)
    verdict, parts = in_partitions(
        df, raw_suite, [600, 1000, 1650], mode="quarantine", reference=reference
    )
    assert unmergeable(raw_suite) == []
    assert verdict.to_dict() == one.to_dict()
    assert one.rows_quarantined >= 9 and one.drift  # the damage was seen, drift measured
    unique = [f for f in one.failures if f.expectation == UNIQUE]
    ids = df["comment_id"]
    assert unique and unique[0].count == ids.duplicated(keep=False).sum() >= 6  # every copy
    same_rows(one, verdict, parts)
    reasons = pd.concat([split_rows(p, d)[1] for p, d in zip(parts, verdict.drops, strict=True)])
    later = reasons[REASON_COLUMN].str.contains("comment_id: " + UNIQUE).sum()
    assert later == ids.duplicated(keep="first").sum()  # the later copies go


def test_batch_rules_warnings_and_fail_mode_merge_as_one_pass(
    youtube: pd.DataFrame, raw_suite: dict[str, Any]
) -> None:
    """Class balance (a mean), a null fraction (mostly), a warning and a missing column:
    judged on the whole batch, not per partition."""
    suite = copy.deepcopy(raw_suite)
    extra: list[dict[str, Any]] = [
        {"type": "expect_column_mean_to_be_between", "column": "label", "min_value": 0.6},
        {"type": "expect_column_values_to_not_be_null", "column": "text", "mostly": 0.9995},
        {"type": "expect_column_value_lengths_to_be_between", "column": "author",
         "max_value": 12, "severity": "warning"},
        {"type": UNIQUE, "column": "author", "severity": "warning"},
        {"type": "expect_column_values_to_not_be_null", "column": "nowhere"},
    ]  # fmt: skip
    for n, spec in enumerate(extra):
        kwargs = {k: v for k, v in spec.items() if k not in ("type", "severity")}
        suite["expectations"].append(
            {"type": spec["type"], "kwargs": kwargs, "meta": {},
             "severity": spec.get("severity", "critical"), "id": f"{n:08d}-0000-4000-8000-{n:012d}"}
        )  # fmt: skip
    df = damaged(youtube)
    one = run_checkpoint(df, suite, mode="fail")
    verdict, parts = in_partitions(df, suite, [100, 1234], mode="fail")
    assert verdict.to_dict() == one.to_dict()
    assert not one.ok
    assert {(f.expectation, f.column) for f in one.warnings} >= {
        ("expect_column_value_lengths_to_be_between", "author"),
        (UNIQUE, "author"),
    }
    failed = {f.expectation for f in one.failures if not f.row_rule}
    assert {"expect_column_mean_to_be_between", "expect_column_values_to_not_be_null"} <= failed
    same_rows(one, verdict, parts)  # fail mode: nothing set aside


def test_uniqueness_is_decided_on_values_when_hashes_collide(
    youtube: pd.DataFrame, raw_suite: dict[str, Any]
) -> None:
    df = youtube.iloc[:300].reset_index(drop=True)
    parts = [df.iloc[:150].reset_index(drop=True), df.iloc[150:].reset_index(drop=True)]
    checks = [check_partition(p, raw_suite) for p in parts]
    i = next(n for n, e in enumerate(raw_suite["expectations"]) if e["type"] == UNIQUE)
    for check in checks:  # every id's hash made the same: only values can tell them apart
        hashes, rows = check.keys[i]
        check.keys[i] = (np.zeros_like(hashes), rows)
    merge = Merge(raw_suite, checks)
    wanted = merge.repeated_keys()
    assert sum(len(rows) for rows in wanted.values()) == 300
    with pytest.raises(ValueError, match="comment_id"):
        merge.verdict(mode="quarantine")  # the values are needed, and said so
    values = {(p, n): key_values(parts[p], "comment_id", rows) for (p, n), rows in wanted.items()}
    verdict = merge.verdict(mode="quarantine", key_values=values)
    one = run_checkpoint(df, raw_suite, mode="quarantine")
    assert verdict.to_dict() == one.to_dict()


def test_repeated_hashes_are_found_in_every_slice_of_the_hash_space(
    youtube: pd.DataFrame, raw_suite: dict[str, Any]
) -> None:
    """Repeats are looked for one slice of the hash space at a time (by the top bits):
    a repeat in each slice, across the two partitions, is found, and nothing else."""
    df = youtube.iloc[:400].reset_index(drop=True)
    parts = [df.iloc[:250].reset_index(drop=True), df.iloc[250:].reset_index(drop=True)]
    checks = [check_partition(p, raw_suite) for p in parts]
    i = next(n for n, e in enumerate(raw_suite["expectations"]) if e["type"] == UNIQUE)
    every = np.random.default_rng(0).integers(0, 2**63, 400, dtype=np.uint64) * np.uint64(2)
    for top in range(16):  # rows top (first partition) and 260 + top (second) share a hash
        every[[top, 260 + top]] = np.uint64(top) << np.uint64(60) | np.uint64(12345)
    for check, (a, b) in zip(checks, [(0, 250), (250, 400)], strict=True):
        hashes, rows = check.keys[i]
        assert len(hashes) == b - a
        check.keys[i] = (every[a:b], rows)
    wanted = Merge(raw_suite, checks).repeated_keys()
    found = {p: sorted(rows) for (p, n), rows in wanted.items() if n == i}
    assert found == {0: list(range(16)), 1: list(range(10, 26))}


def test_a_suite_with_an_expectation_that_does_not_merge_is_named() -> None:
    suite = {"expectations": [{"type": "expect_table_row_count_to_be_between", "kwargs": {}}]}
    assert unmergeable(suite) == ["expect_table_row_count_to_be_between"]


def test_a_reference_profile_sent_to_a_worker_counts_missing_values_alike(
    youtube: pd.DataFrame, raw_suite: dict[str, Any]
) -> None:
    """Dask pickles the reference's profile to each worker and the workers' checks back:
    missing values must stay one category through both (a missing label is no drift)."""
    import pickle

    suite = copy.deepcopy(raw_suite)
    suite["meta"]["mlsys"]["drift"] = [
        {"column": "label", "on": "value", "statistic": "linf", "threshold": 0.15}
    ]
    df = youtube.drop_duplicates("comment_id").reset_index(drop=True)
    df.loc[df.index[::5], "label"] = pd.NA
    profiles = drift_profiles(df, suite)
    travelled = pickle.loads(pickle.dumps(profiles))
    checks = [check_partition(p, suite, profiles=travelled) for p in (df.iloc[:900], df.iloc[900:])]
    returned = pickle.loads(pickle.dumps(checks))
    verdict = Merge(suite, returned).verdict(mode="quarantine", profiles=profiles)
    one = run_checkpoint(df, suite, mode="quarantine", reference=df)
    assert [d.value for d in verdict.drift] == [d.value for d in one.drift] == [0.0]


def _same_profiles(got: list[Any] | None, want: list[Any] | None) -> None:
    assert got is not None and want is not None
    assert [p.spec for p in got] == [p.spec for p in want] and want
    for a, b in zip(got, want, strict=True):
        pd.testing.assert_series_equal(a.counts, b.counts, check_names=False)
        assert (a.cuts is None) == (b.cuts is None)
        if a.cuts is not None:
            np.testing.assert_array_equal(a.cuts, b.cuts)


def test_a_reference_profile_made_from_parts_is_the_whole_batch_s(
    youtube: pd.DataFrame, raw_suite: dict[str, Any], tmp_path: Path
) -> None:
    """profile-reference reads the reference batch a slice of rows at a time: the same
    bins, cuts and category counts (missing values included) as the whole batch gives."""
    from mlsys.inference.batch import parquet_frames
    from mlsys.validation.partitioned import drift_columns

    suite = copy.deepcopy(raw_suite)
    suite["meta"]["mlsys"]["drift"] = [
        *suite["meta"]["mlsys"]["drift"],
        {"column": "label", "on": "value", "statistic": "linf", "threshold": 0.15},
        {"column": "not_in_the_batch", "on": "value", "statistic": "linf", "threshold": 0.1},
    ]
    df = youtube.reset_index(drop=True)
    df.loc[df.index[:700:3], "label"] = pd.NA  # missing labels, all in the first parts
    df.loc[[5, 1400], "text"] = pd.NA
    whole = drift_profiles(df, suite)
    assert whole is not None and len(whole) == len(suite["meta"]["mlsys"]["drift"]) - 1
    cuts = [0, 0, 350, 1100, len(df)]  # an empty part, uneven ones
    parts = (df.iloc[a:b] for a, b in itertools.pairwise(cuts))
    _same_profiles(drift_profiles(parts, suite), whole)

    path = tmp_path / "reference.parquet"
    df.to_parquet(path, row_group_size=300)
    columns = drift_columns(suite)
    assert "not_in_the_batch" in columns and "comment_id" not in columns
    frames = list(parquet_frames(path, columns, batch_rows=250))
    assert len(frames) > 4 and all(set(f.columns) < set(columns) for f in frames)
    assert sum(len(f) for f in frames) == len(df)
    _same_profiles(drift_profiles(iter(frames), suite), whole)
    assert list(parquet_frames(path, ["not_in_the_batch"], batch_rows=250)) == []
