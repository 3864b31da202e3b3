"""Suites as data: inferred from a schema, evolved, cut to a column subset, loaded and dumped."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlsys.validation import Schema, infer_schema
from mlsys.validation.checkpoint import load_shipped_suite, run_checkpoint, suite_path
from mlsys.validation.drift import DriftSpec, schema_drift_specs
from mlsys.validation.profile import ISO_DATE
from mlsys.validation.suites import (
    column_subset,
    drift_specs,
    dump_suite,
    evolve_suite,
    expectation,
    gx_type,
    is_row_rule,
    load_suite,
    suite_from_schema,
    suite_version,
)
from tests.conftest import read_youtube

FIFTH = "Youtube05-Shakira.csv"
LENGTHS = "expect_column_value_lengths_to_be_between"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
NOT_NULL = "expect_column_values_to_not_be_null"
TYPE_LIST = "expect_column_values_to_be_in_type_list"
UNIQUE = "expect_column_values_to_be_unique"


@pytest.fixture(scope="module")
def youtube(youtube_dir: Path) -> pd.DataFrame:
    return read_youtube(youtube_dir)


@pytest.fixture(scope="module")
def first_four(youtube: pd.DataFrame) -> pd.DataFrame:
    return youtube[youtube["source_file"] != FIFTH].reset_index(drop=True)


@pytest.fixture(scope="module")
def fifth(youtube: pd.DataFrame) -> pd.DataFrame:
    return youtube[youtube["source_file"] == FIFTH].reset_index(drop=True)


@pytest.fixture(scope="module")
def schema(first_four: pd.DataFrame) -> Schema:
    return infer_schema(first_four, id_columns=("comment_id",))


@pytest.fixture(scope="module")
def inferred(schema: Schema) -> dict[str, Any]:
    return suite_from_schema(schema, "raw", inferred_from="videos 1-4", notes="test")


def _by_rule(suite: dict[str, Any]) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    rules: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for exp in suite["expectations"]:
        rules.setdefault((exp["type"], exp["kwargs"].get("column")), []).append(exp)
    return rules


def _kwargs(suite: dict[str, Any], type_: str, column: str | None) -> dict[str, Any]:
    (exp,) = _by_rule(suite)[(type_, column)]
    kwargs: dict[str, Any] = exp["kwargs"]
    return kwargs


# --- suite_from_schema ----------------------------------------------------------------------------


def test_suite_from_schema_enforces_types_nulls_bounds_and_uniqueness(
    schema: Schema, inferred: dict[str, Any]
) -> None:
    assert (inferred["name"], inferred["notes"]) == ("raw", "test")
    assert inferred["meta"]["mlsys"]["inferred_from"] == "videos 1-4"
    assert (suite_version(inferred), inferred["meta"]["mlsys"]["parent"]) == (1, None)
    first = inferred["expectations"][0]
    assert first["type"] == "expect_table_columns_to_match_set"
    assert first["kwargs"] == {
        "column_set": [f.name for f in schema.features],
        "exact_match": True,
    }
    assert {_kwargs(inferred, TYPE_LIST, f.name)["type_list"][0] for f in schema.features} == {
        "StringDtype",
        "Int64Dtype",
        "int64",
    }
    assert _kwargs(inferred, TYPE_LIST, "label")["type_list"] == ["Int64Dtype"]
    assert _kwargs(inferred, TYPE_LIST, "source_row")["type_list"] == ["int64"]

    # No null seen: a null fails its row. Nulls seen (Eminem's dates): a batch rule.
    assert _kwargs(inferred, NOT_NULL, "text") == {"column": "text"}
    date = schema.feature("date")
    assert _kwargs(inferred, NOT_NULL, "date")["mostly"] == pytest.approx(
        1 - date.max_null_fraction, abs=1e-3
    )
    assert _kwargs(inferred, NOT_NULL, "date")["mostly"] <= 1 - date.max_null_fraction
    assert _kwargs(inferred, "expect_column_values_to_match_regex", "date")["regex"] == ISO_DATE

    assert _kwargs(inferred, IN_SET, "label")["value_set"] == [0, 1]
    row = schema.feature("source_row")
    assert _kwargs(inferred, BETWEEN, "source_row") == {
        "column": "source_row",
        "min_value": row.min_value,
        "max_value": row.max_value,
    }
    text = schema.feature("text")
    assert _kwargs(inferred, LENGTHS, "text") == {
        "column": "text",
        "min_value": text.min_length,
        "max_value": text.max_length,
    }
    assert [k[1] for k in _by_rule(inferred) if k[0] == UNIQUE] == ["comment_id"]

    ids = [exp["id"] for exp in inferred["expectations"]]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i) for i in ids)
    assert {exp["severity"] for exp in inferred["expectations"]} == {"critical"}
    assert json.loads(dump_suite(inferred)) == inferred


def test_row_rules_are_only_strict_critical_column_map_rules(inferred: dict[str, Any]) -> None:
    rules = _by_rule(inferred)
    assert is_row_rule(rules[(NOT_NULL, "text")][0])
    assert not is_row_rule(rules[(NOT_NULL, "date")][0])  # has mostly
    assert is_row_rule(rules[(UNIQUE, "comment_id")][0])
    assert not is_row_rule(rules[(TYPE_LIST, "text")][0])
    assert not is_row_rule(rules[("expect_table_columns_to_match_set", None)][0])
    assert not is_row_rule(expectation(NOT_NULL, column="text", severity="warning"))
    assert is_row_rule(expectation(NOT_NULL, column="text", mostly=1.0))
    assert not is_row_rule(expectation("expect_column_mean_to_be_between", column="label"))


def test_expectation_rejects_an_unknown_severity() -> None:
    with pytest.raises(ValueError, match=r"severity of expect_x must be .* got 'fatal'"):
        expectation("expect_x", severity="fatal")


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        ("string", "StringDtype"),
        ("Int64", "Int64Dtype"),
        ("boolean", "BooleanDtype"),
        ("int64", "int64"),
        ("float64", "float64"),
        ("bool", "bool"),
    ],
)
def test_gx_type_names(dtype: str, name: str) -> None:
    assert gx_type(dtype) == name


def test_inferred_suite_runs_in_gx_on_its_own_batch(
    first_four: pd.DataFrame, inferred: dict[str, Any]
) -> None:
    """Inferred bounds come from quantiles, so the batch's extremes are set aside, as are
    the repeated ids; nothing fails the batch as a whole."""
    report = run_checkpoint(first_four, inferred, mode="quarantine")
    assert report.ok and not report.batch_failures
    assert all(f.row_rule for f in report.failures)
    assert {f.column for f in report.failures} <= {"comment_id", "author", "text"}
    assert 2 <= report.rows_quarantined <= 5
    assert report.rows_in == report.rows_passed + report.rows_quarantined == len(first_four)


@pytest.mark.parametrize("dtype", ["str", "string[python]"])
def test_suite_inferred_from_a_plain_text_frame_accepts_it(dtype: str) -> None:
    texts = [f"comment number {i} " * (1 + i % 7) for i in range(40)]
    frame = pd.DataFrame({"text": pd.Series(texts, dtype=dtype)})
    suite = suite_from_schema(infer_schema(frame), "serving")
    report = run_checkpoint(frame, suite, mode="quarantine")
    assert not report.batch_failures, report.summary()


def test_suite_inferred_from_a_string_frame_accepts_it() -> None:
    texts = [f"comment number {i} " * (1 + i % 7) for i in range(40)]
    frame = pd.DataFrame({"text": pd.array(texts, dtype="string")})
    suite = suite_from_schema(infer_schema(frame), "serving")
    report = run_checkpoint(frame, suite, mode="quarantine")
    assert report.ok and not report.failures


# --- evolve_suite ---------------------------------------------------------------------------------


def test_evolve_widens_bounds_and_value_sets_and_bumps_the_version(fifth: pd.DataFrame) -> None:
    suite = load_shipped_suite("raw")
    original = copy.deepcopy(suite)
    batch = fifth.copy()
    batch.loc[0, "text"] = "w" * 12_000
    batch.loc[1, "label"] = 2
    batch.loc[2, "source_row"] = -3

    new, changes = evolve_suite(suite, batch, updated_from="s3://bucket/b2.parquet")
    assert changes == [
        "text length: max 10000 -> 12000",
        "label: value set + [2]",
        "source_row: min 0 -> -3",
    ]
    assert _kwargs(new, LENGTHS, "text")["max_value"] == 12_000
    assert _kwargs(new, IN_SET, "label")["value_set"] == [0, 1, 2]
    assert _kwargs(new, BETWEEN, "source_row")["max_value"] is None  # an open bound stays open
    meta = new["meta"]["mlsys"]
    assert (meta["version"], meta["parent"]) == (2, 1)
    assert meta["updated_from"] == "s3://bucket/b2.parquet"
    assert meta["changes"] == changes
    assert suite == original  # the input suite is not touched

    again, more = evolve_suite(new, batch, updated_from="again")
    assert more == [] and again == new  # the batch now fits: no new version
    report = run_checkpoint(batch.drop_duplicates("comment_id"), new, mode="fail")
    assert report.ok, report.summary()


def test_evolve_refuses_a_batch_that_drifted_naming_the_feature(fifth: pd.DataFrame) -> None:
    from mlsys.validation.drift import FeatureDrift
    from mlsys.validation.suites import SchemaUpdateRefused

    suite = load_shipped_suite("raw")
    moved = FeatureDrift("text", "drift", "js", "length", 0.42, 0.1, drifted=True)
    within = FeatureDrift("label", "drift", "linf", "value", 0.01, 0.1, drifted=False)
    with pytest.raises(SchemaUpdateRefused, match=r"raw v1 is not updated.*drift of text length"):
        evolve_suite(suite, fifth, updated_from="b3", drift=[within, moved])
    longer = fifth.copy()
    longer.loc[0, "text"] = "w" * 12_000
    new, changes = evolve_suite(suite, longer, updated_from="b3", drift=[within])
    assert changes == ["text length: max 10000 -> 12000"]
    assert new["meta"]["mlsys"]["version"] == 2


def test_evolve_lowers_mostly_to_the_observed_non_null_fraction(
    inferred: dict[str, Any], fifth: pd.DataFrame
) -> None:
    batch = fifth.assign(date=fifth["date"].mask(fifth.index % 2 == 0))
    new, changes = evolve_suite(inferred, batch, updated_from="half-dated")
    observed = batch["date"].notna().mean()
    assert _kwargs(new, NOT_NULL, "date")["mostly"] == pytest.approx(observed, abs=1e-3)
    assert (
        f"date: mostly not null {_kwargs(inferred, NOT_NULL, 'date')['mostly']} -> " in (changes[0])
    )
    assert (suite_version(new), new["meta"]["mlsys"]["parent"]) == (2, 1)


def test_evolve_never_relaxes_types_columns_or_uniqueness(fifth: pd.DataFrame) -> None:
    suite = load_shipped_suite("raw")
    batch = pd.concat([fifth, fifth.head(20)], ignore_index=True)  # 21 repeated ids
    batch = batch.drop(columns="author").assign(
        source_row=batch["source_row"].astype("float64"), extra=1
    )
    new, changes = evolve_suite(suite, batch, updated_from="odd batch")
    assert changes == []
    assert new == suite
    assert suite_version(new) == 1

    longer = fifth.assign(text=fifth["text"] + "!" * 10_000)
    widened, _ = evolve_suite(suite, longer, updated_from="long")
    keep = ("expect_table_columns_to_match_set", TYPE_LIST, UNIQUE, NOT_NULL)
    assert [e for e in widened["expectations"] if e["type"] in keep] == [
        e for e in suite["expectations"] if e["type"] in keep
    ]


def test_evolve_does_not_take_values_of_the_wrong_type(fifth: pd.DataFrame) -> None:
    suite = load_shipped_suite("raw")
    batch = fifth.assign(label=fifth["label"].astype(str))
    try:
        new, _ = evolve_suite(suite, batch, updated_from="string labels")
    except ValueError as exc:  # refusing the batch is as good as skipping the column
        assert "label" in str(exc)
        return
    assert _kwargs(new, IN_SET, "label")["value_set"] == [0, 1]


# --- column_subset --------------------------------------------------------------------------------


def test_column_subset_drops_the_label() -> None:
    training = load_shipped_suite("training")
    original = copy.deepcopy(training)
    serving = column_subset(training, ["label"], "serving-candidate")
    assert serving["name"] == "serving-candidate" and serving["id"] != training["id"]
    assert not [e for e in serving["expectations"] if e["kwargs"].get("column") == "label"]
    dropped = [e for e in training["expectations"] if e["kwargs"].get("column") == "label"]
    assert len(serving["expectations"]) == len(training["expectations"]) - len(dropped) > 0
    column_set = _kwargs(serving, "expect_table_columns_to_match_set", None)["column_set"]
    assert column_set == [
        c
        for c in _kwargs(training, "expect_table_columns_to_match_set", None)["column_set"]
        if c != "label"
    ]
    assert [d.column for d in drift_specs(serving)] == ["text", "confidence"]
    assert not {e["id"] for e in serving["expectations"]} & {
        e["id"] for e in training["expectations"]
    }
    assert suite_version(serving) == suite_version(training)
    assert training == original


# --- load, dump, drift specs ----------------------------------------------------------------------


def test_shipped_suites_are_stored_as_dump_suite_writes_them() -> None:
    for name in ("raw", "training", "serving"):
        path = suite_path(name)
        assert path.read_text(encoding="utf-8") == dump_suite(load_suite(path))


def test_dump_and_load_round_trip(tmp_path: Path, inferred: dict[str, Any]) -> None:
    path = tmp_path / "raw.json"
    path.write_text(dump_suite(inferred), encoding="utf-8")
    assert load_suite(path) == inferred
    assert dump_suite(inferred).endswith("}\n")
    assert dump_suite(inferred) == dump_suite(json.loads(dump_suite(inferred)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["expectations"][1].pop("type"), r"expectation 1 has no 'type'"),
        (lambda s: s["expectations"][0].update(type="check_columns"), "'check_columns'"),
        (lambda s: s.update(name=""), "non-empty string 'name'"),
        (lambda s: s.update(expectations={}), "'expectations' must be a list"),
        (lambda s: s["meta"]["mlsys"].update(version=0), "has version 0; expected an int >= 1"),
        (lambda s: s["meta"].update(mlsys="v2"), "meta.mlsys must be an object"),
        (
            lambda s: s["meta"]["mlsys"]["drift"][0].update(threshold=2),
            r"drift threshold of 'text' must be in \(0, 1\], got 2",
        ),
        (lambda s: s["meta"]["mlsys"]["drift"][0].pop("statistic"), r"lacks keys \['statistic'\]"),
    ],
)
def test_load_suite_rejects_a_broken_document(tmp_path: Path, change: Any, message: str) -> None:
    suite = load_shipped_suite("raw")
    change(suite)
    path = tmp_path / "raw.json"
    path.write_text(json.dumps(suite), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_suite(path)


def test_load_suite_rejects_bad_json_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "raw.json"
    path.write_text('{"name": "raw", "expectations": [', encoding="utf-8")
    with pytest.raises(ValueError, match=r"raw\.json is not valid JSON"):
        load_suite(path)
    with pytest.raises(FileNotFoundError, match=r"no suite file .*missing\.json"):
        load_suite(tmp_path / "missing.json")


def test_drift_specs_round_trip(tmp_path: Path, schema: Schema, inferred: dict[str, Any]) -> None:
    specs = drift_specs(inferred)
    assert specs == schema_drift_specs(schema)
    assert {(s.column, s.on) for s in specs} >= {("text", "length"), ("label", "value")}
    path = tmp_path / "raw.json"
    path.write_text(dump_suite(inferred), encoding="utf-8")
    assert drift_specs(load_suite(path)) == specs
    assert [DriftSpec.from_dict(s.to_dict()) for s in specs] == specs
    assert drift_specs({"name": "bare", "expectations": []}) == []
    assert suite_version({"name": "bare", "expectations": []}) == 1
