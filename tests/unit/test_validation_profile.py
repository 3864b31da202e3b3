"""Schema inference and checking, on tiny frames and on the real YouTube spam data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mlsys.data import PROVENANCE_COLUMNS
from mlsys.validation import FeatureSchema, Schema, Violation, infer_schema
from tests.conftest import read_youtube

FIFTH = "Youtube05-Shakira.csv"


@pytest.fixture(scope="module")
def youtube(youtube_dir: Path) -> pd.DataFrame:
    return read_youtube(youtube_dir)


@pytest.fixture(scope="module")
def first_four(youtube: pd.DataFrame) -> pd.DataFrame:
    return youtube[youtube["source_file"] != FIFTH]


@pytest.fixture(scope="module")
def fifth(youtube: pd.DataFrame) -> pd.DataFrame:
    return youtube[youtube["source_file"] == FIFTH]


def _tiny() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.array([f"c{i}" for i in range(30)], dtype="string"),
            "text": pd.array(["x" * (i + 1) for i in range(30)], dtype="string"),
            "score": [float(i) for i in range(30)],
            "label": pd.array([i % 2 for i in range(30)], dtype="Int64"),
            "when": pd.array([f"2015-01-{i % 28 + 1:02d}" for i in range(30)], dtype="string"),
            "note": pd.array([None] * 3 + [f"n{i % 25}" for i in range(27)], dtype="string"),
        }
    )


def test_kinds_and_bounds_of_a_tiny_frame() -> None:
    schema = infer_schema(_tiny(), max_categories=5)
    kinds = {f.name: f.kind for f in schema.features}
    assert kinds == {
        "id": "id",
        "text": "text",
        "score": "numeric",
        "label": "categorical",
        "when": "datetime",
        "note": "text",
    }
    score = schema.feature("score")
    low, high = pd.Series(range(30)).quantile([0.001, 0.999])
    assert score.min_value == pytest.approx(low - 0.1 * (high - low))
    assert score.max_value == pytest.approx(high + 0.1 * (high - low))
    assert schema.feature("label").value_set == (0, 1)
    assert schema.feature("id").unique
    note = schema.feature("note")
    assert note.null_fraction == pytest.approx(0.1)
    assert note.max_null_fraction == pytest.approx(0.2)
    assert schema.feature("text").max_null_fraction == 0
    assert (schema.feature("score").drift_statistic, schema.feature("label").drift_statistic) == (
        "js",
        "linf",
    )
    assert schema.feature("id").drift_threshold is None


def test_dict_round_trip_is_json_stable() -> None:
    schema = infer_schema(_tiny(), max_categories=5)
    text = json.dumps(schema.to_dict())
    again = Schema.from_dict(json.loads(text))
    assert again == schema
    assert json.dumps(again.to_dict()) == text
    assert list(schema.to_dict()["features"][0]) == list(FeatureSchema.__dataclass_fields__)


def test_from_dict_rejects_unknown_kind_and_keys() -> None:
    data = infer_schema(_tiny()).to_dict()
    data["features"][0]["kind"] = "colour"
    with pytest.raises(ValueError, match="'colour'"):
        Schema.from_dict(data)
    data["features"][0]["kind"] = "id"
    data["features"][0]["maxlen"] = 3
    with pytest.raises(ValueError, match="maxlen"):
        Schema.from_dict(data)
    del data["features"][0]["maxlen"], data["features"][0]["dtype"]
    with pytest.raises(ValueError, match=r"'id' lacks keys \['dtype'\]"):
        Schema.from_dict(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_columns": ("body",)}, "'body'"),
        ({"id_columns": ("text",)}, "both"),
        ({"max_categories": 0}, "got 0"),
        ({"quantiles": (0.9, 0.1)}, r"\(0.9, 0.1\)"),
        ({"slack": -1.0}, "got -1.0"),
        ({"js_threshold": 2.0}, "js_threshold must be in \\(0, 1\\], got 2.0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        infer_schema(_tiny(), **kwargs)  # type: ignore[arg-type]


def test_empty_batch_and_non_string_text_raise() -> None:
    with pytest.raises(ValueError, match="0 rows"):
        infer_schema(_tiny().iloc[:0])
    with pytest.raises(ValueError, match="'score' has dtype float64"):
        infer_schema(_tiny(), text_columns=("score",))


def test_missing_column_and_wrong_dtype_fail_the_batch_not_rows() -> None:
    df = _tiny()
    schema = infer_schema(df, max_categories=5)
    broken = df.drop(columns="note").assign(score=df["score"].astype("string"))
    assert schema.check(broken) == [
        Violation("score", "dtype", "string", "float64", 30),
        Violation("note", "column_exists", "missing", "present", 30),
    ]
    assert not schema.failing_rows(broken).any()


def test_youtube_schema(first_four: pd.DataFrame) -> None:
    schema = infer_schema(first_four, id_columns=("comment_id",))
    kinds = {f.name: f.kind for f in schema.features}
    assert kinds == {
        "comment_id": "id",
        "author": "text",
        "date": "datetime",
        "text": "text",
        "label": "categorical",
        "source_file": "categorical",
        "source_row": "numeric",
    }
    # Youtube04-Eminem has 245 rows without a date: 245 / 1586 observed, plus the slack.
    assert schema.feature("date").null_fraction == pytest.approx(245 / 1586)
    assert schema.feature("date").max_null_fraction == pytest.approx(245 / 1586 + 0.1)
    assert schema.feature("label").value_set == (0, 1)


def test_fifth_file_fails_only_on_provenance_and_one_real_duplicate(
    first_four: pd.DataFrame, fifth: pd.DataFrame
) -> None:
    """The fifth file is healthy except for two findings, both real:

    - ``source_file`` is a new file name, outside the value set learnt from four files.
      Provenance columns describe where a row came from, not what it is: infer the schema
      without them (next test).
    - ``comment_id`` repeats once in Youtube05-Shakira (rows 211 and 212); the raw data
      also repeats two ids inside Youtube04-Eminem, which is why the id must be declared.
    """
    schema = infer_schema(first_four, id_columns=("comment_id",))
    assert schema.check(fifth) == [
        Violation(
            "comment_id", "unique", ("_2viQ_Qnc68fX3dYsfYuM-m4ELMJvxOQBmBOFHqGOk0",), "unique", 1
        ),
        Violation(
            "source_file",
            "value_set",
            (FIFTH,),
            (
                "Youtube01-Psy.csv",
                "Youtube02-KatyPerry.csv",
                "Youtube03-LMFAO.csv",
                "Youtube04-Eminem.csv",
            ),
            370,
        ),
    ]
    content = infer_schema(
        first_four.drop(columns=list(PROVENANCE_COLUMNS)), id_columns=("comment_id",)
    )
    failing = content.failing_rows(fifth)
    assert fifth.loc[failing, "source_row"].tolist() == [212]


def test_corrupted_batch_yields_exactly_the_injected_violations(
    first_four: pd.DataFrame, fifth: pd.DataFrame
) -> None:
    schema = infer_schema(
        first_four.drop(columns=list(PROVENANCE_COLUMNS)), id_columns=("comment_id",)
    )
    clean = fifth.drop_duplicates("comment_id").reset_index(drop=True)
    assert schema.check(clean) == []
    bad = clean.copy()
    bad.loc[3, "label"] = 7
    bad.loc[10, "text"] = pd.NA
    bad.loc[20, "text"] = "a" * 10_000
    bad.loc[30, "comment_id"] = bad.loc[5, "comment_id"]
    text = schema.feature("text")
    assert schema.check(bad) == [
        Violation("comment_id", "unique", (bad.loc[5, "comment_id"],), "unique", 1),
        Violation("text", "max_null_fraction", 1 / len(bad), 0.0, 1),
        Violation("text", "text_length_bounds", (10_000,), (text.min_length, text.max_length), 1),
        Violation("label", "value_set", (7,), (0, 1), 1),
    ]
    failing = schema.failing_rows(bad)
    assert failing[failing].index.tolist() == [3, 10, 20, 30]
    assert len(bad[~failing]) + len(bad[failing]) == len(bad)
    assert "observed (7,)" in str(schema.check(bad)[-1])
