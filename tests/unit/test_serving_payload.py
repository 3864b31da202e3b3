"""Tests for mlsys.serving.payload: MLflow's scoring request formats read into rows."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
import pytest

from mlsys.serving.payload import PayloadError, Rows, media_type, parse_body

TEXT = [("text", "string")]


def parse(document: Any, inputs: list[tuple[str, str]] = TEXT) -> Rows:
    return parse_body(json.dumps(document).encode(), "application/json", inputs)


@pytest.mark.parametrize(
    "document",
    [
        {"dataframe_split": {"columns": ["text"], "data": [["a"], ["b"]]}},
        {"dataframe_split": {"columns": ["text"], "data": [["a"], ["b"]], "index": [7, 8]}},
        {"dataframe_records": [{"text": "a"}, {"text": "b"}]},
        {"inputs": {"text": ["a", "b"]}},
        {"inputs": [{"text": "a"}, {"text": "b"}]},
        {"inputs": ["a", "b"]},
        {"instances": ["a", "b"]},
        {"inputs": ["a", "b"], "params": {"ignored": 1}},
    ],
)
def test_every_json_format_gives_the_same_rows(document: Any) -> None:
    got = parse(document)
    assert got.columns == {"text": ["a", "b"]} and got.count == 2


def test_records_missing_a_key_get_none_and_scalars_make_one_row() -> None:
    got = parse({"dataframe_records": [{"text": "a"}, {"other": 1}]})
    assert got.columns == {"text": ["a", None], "other": [None, 1]}
    assert parse({"inputs": {"text": "a"}}).columns == {"text": ["a"]}


def test_csv_keeps_string_columns_as_text_and_parquet_reads_back() -> None:
    got = parse_body(b"text,n\n123,4\n,5\n", "text/csv", TEXT)
    assert got.columns == {"text": ["123", None], "n": [4, 5]}
    buffer = io.BytesIO()
    pd.DataFrame({"text": ["a", "b"]}).to_parquet(buffer)
    got = parse_body(buffer.getvalue(), "application/vnd.apache.parquet", TEXT)
    assert got.columns == {"text": ["a", "b"]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"dataframe_split": {}, "inputs": []}', "exactly one of the fields"),
        (b'{"data": []}', "exactly one of the fields"),
        (b'{"dataframe_split": {"columns": ["text"], "data": [["a", "b"]]}}', "row 0"),
        (b'{"dataframe_records": ["a"]}', "item 0 is str"),
        (b'{"inputs": {"text": ["a"], "n": [1, 2]}}', "lists of one length"),
        (b'{"inputs": 3}', "object of columns or a list"),
    ],
)
def test_malformed_bodies_are_400_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message) as caught:
        parse_body(body, "application/json", TEXT)
    assert caught.value.status == 400


def test_a_bare_list_needs_a_single_input_model() -> None:
    with pytest.raises(PayloadError, match="one input column"):
        parse({"inputs": ["a"]}, [("text", "string"), ("n", "long")])


@pytest.mark.parametrize(
    ("header", "mime"),
    [
        ("application/json", "application/json"),
        ("Application/JSON; charset=UTF-8", "application/json"),
        ("text/csv", "text/csv"),
    ],
)
def test_media_types_are_read_like_mlflow(header: str, mime: str) -> None:
    assert media_type(header) == mime


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "no Content-Type"),
        ("application/x-foo", "'application/x-foo' is not supported"),
        ("application/json; charset=latin-1", "charset 'latin-1'"),
        ("application/json; format=pandas-split", "unknown Content-Type parameter"),
    ],
)
def test_unknown_content_types_are_415(header: str | None, message: str) -> None:
    with pytest.raises(PayloadError, match=message) as caught:
        media_type(header)
    assert caught.value.status == 415


def test_rows_take_select_and_concat() -> None:
    a = Rows({"text": ["a", "b", "c"], "x": [1, 2, 3]}, 3)
    assert a.take([2, 0]).columns == {"text": ["c", "a"], "x": [3, 1]}
    assert a.select(["x", "missing"]).columns == {"x": [1, 2, 3]}
    assert a.keys(["text"]) == ["a", "b", "c"]
    assert a.keys(["text", "x"]) == [("a", 1), ("b", 2), ("c", 3)]
    frame = Rows.concat([a, a.take([0])], ["text"])
    assert frame["text"].tolist() == ["a", "b", "c", "a"]
