"""Tests for mlsys.serving.rules: a suite's row rules compiled to per-row checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlsys.serving.payload import Rows
from mlsys.serving.rules import SIGNATURE_RULE, RowRules
from mlsys.validation.suites import expectation

SERVING_SUITE = Path(__file__).resolve().parents[2] / "datasets/youtube-spam/suites/serving.json"


def suite(*expectations: dict[str, Any]) -> dict[str, Any]:
    return {"name": "serving", "expectations": list(expectations)}


def rows(**columns: list[Any]) -> Rows:
    counts = {len(v) for v in columns.values()}
    return Rows(dict(columns), counts.pop() if counts else 0)


def failing(rules: RowRules, data: Rows) -> list[tuple[int | None, str, str]]:
    return [(r.row, r.rule, r.column) for r in rules.check(data)]


def test_the_youtube_serving_suite_refuses_empty_and_missing_text_but_not_html() -> None:
    rules = RowRules.from_suite(json.loads(SERVING_SUITE.read_text()))
    ok = rows(text=["check out my channel", "<b>warning rules refuse nothing</b>"])
    assert rules.check(ok) == []
    bad = rows(text=["fine", "", None, 5])
    assert failing(rules, bad) == [
        (1, "expect_column_value_lengths_to_be_between", "text"),
        (2, "expect_column_values_to_not_be_null", "text"),
        (3, "expect_column_values_to_be_in_type_list", "text"),
    ]


def test_a_missing_required_column_refuses_every_row_and_unknown_columns_pass() -> None:
    rules = RowRules.from_suite(
        suite(expectation("expect_table_columns_to_match_set", column_set=["text"]))
    )
    assert rules.check(rows(text=["a"], extra=[1])) == []
    (refusal,) = rules.check(rows(comment=["a"]))
    assert (refusal.row, refusal.rule, refusal.column) == (
        None,
        "expect_table_columns_to_match_set",
        "text",
    )
    assert "every row" in str(refusal) and "'text'" in str(refusal)


@pytest.mark.parametrize(
    ("rule", "kwargs", "good", "bad"),
    [
        ("expect_column_values_to_be_in_set", {"value_set": ["a", "b"]}, "a", "c"),
        ("expect_column_values_to_not_be_in_set", {"value_set": ["spam"]}, "ham", "spam"),
        ("expect_column_values_to_be_between", {"min_value": 0, "max_value": 10}, 10, 11),
        (
            "expect_column_values_to_be_between",
            {"min_value": 0, "max_value": 10, "strict_max": True},
            9.5,
            10,
        ),
        ("expect_column_values_to_be_between", {"min_value": 0, "max_value": None}, 1e9, -1),
        ("expect_column_values_to_be_between", {"min_value": 0, "max_value": 10}, 3, "3"),
        ("expect_column_value_lengths_to_be_between", {"min_value": 2, "max_value": 3}, "ab", "a"),
        ("expect_column_values_to_match_regex", {"regex": r"^\d{4}-\d\d"}, "2024-01", "jan 2024"),
        ("expect_column_values_to_not_match_regex", {"regex": "<[a-z]+>"}, "plain", "<b>x"),
        ("expect_column_values_to_be_in_type_list", {"type_list": ["int64"]}, 3, 3.5),
        ("expect_column_values_to_be_in_type_list", {"type_list": ["float64"]}, 3, True),
        ("expect_column_values_to_be_in_type_list", {"type_list": ["StringDtype"]}, "x", 1),
        ("expect_column_values_to_be_in_type_list", {"type_list": ["bool"]}, False, 0),
    ],
)
def test_each_rule_kind_refuses_its_bad_value_naming_rule_and_column(
    rule: str, kwargs: dict[str, Any], good: Any, bad: Any
) -> None:
    rules = RowRules.from_suite(suite(expectation(rule, column="c", **kwargs)))
    assert rules.check(rows(c=[good])) == []
    (refusal,) = rules.check(rows(c=[good, bad]))
    assert (refusal.row, refusal.rule, refusal.column) == (1, rule, "c")
    assert refusal.reason


def test_nulls_pass_every_rule_but_not_null() -> None:
    rules = RowRules.from_suite(
        suite(
            expectation("expect_column_values_to_be_in_set", column="c", value_set=["a"]),
            expectation("expect_column_value_lengths_to_be_between", column="c", min_value=5),
        )
    )
    assert rules.check(rows(c=[None, float("nan")])) == []


def test_warnings_and_mostly_rules_refuse_nothing() -> None:
    rules = RowRules.from_suite(
        suite(
            expectation("expect_column_values_to_not_be_null", column="c", severity="warning"),
            expectation("expect_column_values_to_not_be_null", column="c", mostly=0.9),
            expectation("expect_column_values_to_be_unique", column="c"),
        )
    )
    assert rules.check(rows(c=[None, None])) == []


def test_a_signature_requires_its_columns_typed_and_present() -> None:
    rules = RowRules.from_signature([("text", "string"), ("n", "long")])
    assert rules.check(rows(text=["a"], n=[1])) == []
    assert failing(rules, rows(text=["a", 1], n=[True, None])) == [
        (0, SIGNATURE_RULE, "n"),
        (1, SIGNATURE_RULE, "n"),
        (1, SIGNATURE_RULE, "text"),
    ]
    assert failing(rules, rows(text=["a"])) == [(None, SIGNATURE_RULE, "n")]


def test_a_rule_that_cannot_compile_is_named() -> None:
    with pytest.raises(ValueError, match=r"expect_column_values_to_match_regex: regex '\('"):
        RowRules.from_suite(
            suite(expectation("expect_column_values_to_match_regex", column="c", regex="("))
        )
    with pytest.raises(ValueError, match="min_value must be a number"):
        RowRules.from_suite(
            suite(expectation("expect_column_values_to_be_between", column="c", min_value=[1]))
        )


def test_columns_lists_what_the_rules_name() -> None:
    rules = RowRules.from_suite(json.loads(SERVING_SUITE.read_text()))
    assert rules.columns == ("text",)


def test_a_suites_rules_pickle_as_the_suite_and_refuse_the_same_rows() -> None:
    import pickle

    rules = RowRules.from_suite(json.loads(SERVING_SUITE.read_text()))
    copy = pickle.loads(pickle.dumps(rules))
    data = rows(text=["fine comment", "", None, "x" * 100_000])
    assert failing(copy, data) == failing(rules, data) and failing(rules, data)
    with pytest.raises(TypeError, match="from_suite"):
        pickle.dumps(RowRules.from_signature((("text", "string"),)))
