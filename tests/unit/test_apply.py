"""Unit tests for mlsys.labeling.apply: apply_lfs gives PandasLFApplier's matrix, faster."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from snorkel.labeling import PandasLFApplier

from mlsys.data.definition import load_dataset
from mlsys.labeling import apply as apply_module
from mlsys.labeling.apply import LFError, apply_lfs
from mlsys.labeling.lf import (
    ABSTAIN,
    LabelingFunction,
    keyword_lf,
    labeling_function,
    preprocessor,
    regex_lf,
)

HAM, SPAM = 0, 1  # a binary task's class indices, for these tests


REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "youtube-spam"


def snorkel_matrix(df: pd.DataFrame, lfs: list[LabelingFunction]) -> np.ndarray:
    matrix: np.ndarray = PandasLFApplier(lfs).apply(df, progress_bar=False)
    return matrix


@pytest.fixture
def pool_for_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send even a few rows to the process pool, so tests cover the parallel path."""
    monkeypatch.setattr(apply_module, "_POOL_MIN_ROWS", 0)


@pytest.fixture(scope="module")
def youtube_sample() -> pd.DataFrame:
    """300 real comments drawn with replacement (so rows repeat), all CSV columns."""
    frames = [pd.read_csv(path) for path in sorted(REAL_DATA.glob("*.csv"))]
    comments = pd.concat(frames).rename(columns={"CONTENT": "text"})
    return comments.sample(n=300, replace=True, random_state=11)


# --- equality with PandasLFApplier -------------------------------------------------------------


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_matrix_equals_pandas_lf_applier_on_youtube_comments(
    youtube_sample: pd.DataFrame, pool_for_small_batches: None, n_jobs: int
) -> None:
    lfs = load_dataset("youtube-spam").lf_set("tutorial")
    calls: list[tuple[int, int]] = []
    result = apply_lfs(youtube_sample, lfs, n_jobs=n_jobs, progress=lambda *a: calls.append(a))
    assert np.array_equal(result.matrix, snorkel_matrix(youtube_sample, lfs))
    assert result.matrix.dtype == np.int64
    assert result.unique_rows < len(youtube_sample)
    assert result.lf_names == [lf.name for lf in lfs]
    assert result.errors == {}
    # The pool reports each of its chunks; in-process, 300 rows are one chunk.
    assert len(calls) == (1 if n_jobs == 1 else 8)
    assert calls[-1] == (result.unique_rows, result.unique_rows)


@labeling_function()
def many_words(x: Any) -> int:
    return HAM if len(x.text.split()) > 3 else ABSTAIN


@preprocessor(memoize=True)
def text_length(x: Any) -> Any:
    x.length = len(x.text)
    return x


@labeling_function(pre=[text_length])
def long_text(x: Any) -> int:
    return HAM if x.length > 12 else ABSTAIN


@labeling_function(pre=[text_length])
def odd_length(x: Any) -> int:
    return SPAM if x.length % 2 else ABSTAIN


def mixed_lfs() -> list[LabelingFunction]:
    return [
        keyword_lf(["οδος"], HAM),
        keyword_lf(["istanbul", "plz"], SPAM),
        regex_lf(r"check.*out", SPAM),
        regex_lf(r"^\ufeff", HAM, name="starts_with_bom", flags=0),
        many_words,
        long_text,
        odd_length,
    ]


MIXED_TEXTS = [
    "ΟΔΟΣ",
    "İstanbul plz",
    "\ufeffcheck <br />this &amp; OUT",
    "Check it out now friends",
    "ΟΔΟΣ",
    "short",
    "\ufeffcheck <br />this &amp; OUT",
    "",
    "🔥 song 🔥 with more words",
    "short",
]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_matrix_equals_pandas_lf_applier_with_generic_keyword_and_regex_lfs(
    pool_for_small_batches: None, n_jobs: int
) -> None:
    df = pd.DataFrame(
        {
            "text": MIXED_TEXTS,
            "likes": range(len(MIXED_TEXTS)),
            "score": np.linspace(0, 1, len(MIXED_TEXTS)),
        },
        index=[f"c{i}" for i in range(len(MIXED_TEXTS))],
    )
    lfs = mixed_lfs()
    result = apply_lfs(df, lfs, n_jobs=n_jobs)
    expected = snorkel_matrix(df, lfs)
    assert np.array_equal(result.matrix, expected)
    assert result.unique_rows == 7
    # Python's lower-casing, not Arrow's: "ΟΔΟΣ" matches "οδος", "İstanbul" not "istanbul".
    assert result.matrix[0, 0] == HAM and result.matrix[1, 1] == SPAM


@labeling_function()
def value_types(x: Any) -> int:
    """Votes on the Python types an LF sees, so any difference in rows shows up."""
    kinds = ["str", "int", "float", "bool", "float64", "int64", "Timestamp"]
    return kinds.index(type(x.value).__name__) if type(x.value).__name__ in kinds else 9


@labeling_function()
def value_repr(x: Any) -> int:
    return len(repr(x.value)) % 5


@labeling_function()
def other_type(x: Any) -> int:
    return 1 if isinstance(x.other, str) else 2


@pytest.mark.parametrize(
    "df",
    [
        # Mixed columns: rows are object Series holding Python ints and floats.
        pd.DataFrame({"value": [1, 2, 1], "other": ["a", "b", "a"], "f": [0.5, 0.5, 0.5]}),
        # All numeric: rows are float64 Series, so value arrives as numpy float64.
        pd.DataFrame({"value": [1, 2, 1], "other": [1.5, 2.5, 1.5]}),
        # Equal but distinguishable values: 1, 1.0 and True; 0.0 and -0.0.
        pd.DataFrame({"value": [1, 1.0, True, 1], "other": ["a", "a", "a", "a"]}, dtype=object),
        pd.DataFrame({"value": [0.0, -0.0, 0.0], "other": ["a", "a", "a"]}),
        pd.DataFrame({"value": pd.to_datetime(["2020-01-01"] * 2), "other": ["a", "b"]}),
        # Extension dtypes: pandas builds such rows on another path.
        pd.DataFrame({"value": ["a", "b", "a"], "other": ["x", "y", "x"]}, dtype="string"),
        pd.DataFrame(
            {
                "value": pd.array([1, 2, 1], dtype="Int64"),
                "other": pd.array([0.5, 0.5, 0.5], dtype="Float64"),
            }
        ),
    ],
)
def test_rows_reach_generic_lfs_as_in_pandas_lf_applier(df: pd.DataFrame) -> None:
    lfs = [value_types, value_repr, other_type]
    result = apply_lfs(df, lfs, fields=["value", "other"], n_jobs=1)
    assert np.array_equal(result.matrix, snorkel_matrix(df, lfs))


def test_an_lf_reading_a_column_outside_fields_fails_loudly() -> None:
    @labeling_function()
    def reads_likes(x: Any) -> int:
        return SPAM if x.likes > 1 else ABSTAIN

    df = pd.DataFrame({"text": ["a", "b"], "likes": [0, 5]})
    with pytest.raises(LFError, match=r"'reads_likes'.*AttributeError.*likes"):
        apply_lfs(df, [reads_likes, many_words, long_text], n_jobs=1)
    result = apply_lfs(df, [reads_likes, many_words, long_text], fields=["text", "likes"])
    assert result.matrix[:, 0].tolist() == [ABSTAIN, SPAM]


# --- failing LFs ---------------------------------------------------------------------------------


@labeling_function()
def fails_on_boom(x: Any) -> int:
    if "boom" in x.text:
        raise ValueError(f"cannot label {x.text!r}")
    return ABSTAIN


def failing_lfs() -> list[LabelingFunction]:
    return [keyword_lf(["my"], SPAM), fails_on_boom, many_words]


BOOM = pd.DataFrame(
    {"id": ["a", "b", "c", "d", "e"], "text": ["my video", "boom 1", "ok", "boom 1", "boom 2"]},
    index=[10, 11, 12, 13, 14],
)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_lf_error_names_the_lf_and_the_first_failing_row(
    pool_for_small_batches: None, n_jobs: int
) -> None:
    with pytest.raises(LFError) as raised:
        apply_lfs(BOOM, failing_lfs(), id_column="id", n_jobs=n_jobs)
    message = str(raised.value)
    assert "'fails_on_boom'" in message and "id='b'" in message
    assert "ValueError: cannot label 'boom 1'" in message
    assert (raised.value.lf_name, raised.value.row) == ("fails_on_boom", "b")
    assert isinstance(raised.value.__cause__, ValueError)


def test_lf_error_names_the_index_label_without_an_id_column() -> None:
    with pytest.raises(LFError, match=re.escape("failed on row with index 11")):
        apply_lfs(BOOM, failing_lfs(), n_jobs=1)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_errors_abstain_counts_failures_like_snorkel_fault_tolerant(
    pool_for_small_batches: None, n_jobs: int
) -> None:
    lfs = failing_lfs()
    result = apply_lfs(BOOM, lfs, errors="abstain", n_jobs=n_jobs)
    expected, meta = PandasLFApplier(lfs).apply(
        BOOM, progress_bar=False, fault_tolerant=True, return_meta=True
    )
    assert np.array_equal(result.matrix, expected)
    assert result.errors == dict(meta.faults) == {"fails_on_boom": 3}


def test_keyword_lf_on_a_non_string_value_fails_like_in_snorkel() -> None:
    df = pd.DataFrame({"text": ["my song", 7, "my"]})
    lfs = failing_lfs()
    result = apply_lfs(df, lfs, errors="abstain", n_jobs=1)
    expected, meta = PandasLFApplier(lfs).apply(
        df, progress_bar=False, fault_tolerant=True, return_meta=True
    )
    assert np.array_equal(result.matrix, expected)
    assert result.errors == dict(meta.faults)
    with pytest.raises(LFError, match=r"'keyword_my' failed on row with index 1: TypeError"):
        apply_lfs(df, lfs, n_jobs=1)


def test_an_lf_returning_a_non_label_raises_even_when_abstaining() -> None:
    @labeling_function()
    def returns_none(x: Any) -> Any:
        return None

    with pytest.raises(LFError, match=r"'returns_none'.*returned None, which is not an int"):
        apply_lfs(BOOM, [*failing_lfs()[:1], many_words, returns_none], errors="abstain")


# --- bad input -------------------------------------------------------------------------------


def test_empty_batch_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        apply_lfs(BOOM.iloc[:0], failing_lfs())


def test_fewer_than_three_lfs_are_rejected_naming_the_count() -> None:
    with pytest.raises(ValueError, match="got 2 labeling function"):
        apply_lfs(BOOM, failing_lfs()[:2])


def test_duplicate_lf_names_are_rejected_naming_them() -> None:
    lfs = [keyword_lf(["my"], SPAM), keyword_lf(["my", "mine"], SPAM), many_words]
    with pytest.raises(ValueError, match=re.escape("repeated: ['keyword_my']")):
        apply_lfs(BOOM, lfs)


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA])
def test_missing_text_is_rejected_naming_the_row(missing: object) -> None:
    df = pd.DataFrame({"id": ["a", "b", "c"], "text": ["ok", missing, "fine"]}, dtype=object)
    with pytest.raises(ValueError, match=r"1 row\(s\) have a missing value.*first at row id='b'"):
        apply_lfs(df, failing_lfs(), id_column="id", errors="abstain")


def test_a_keyword_lf_must_read_one_of_the_fields() -> None:
    lfs = [keyword_lf(["free"], SPAM, field="title"), fails_on_boom, many_words]
    with pytest.raises(ValueError, match=r"'keyword_free' reads field 'title'.*\['text'\]"):
        apply_lfs(BOOM, lfs)


def test_an_unknown_field_is_rejected_listing_the_columns() -> None:
    with pytest.raises(ValueError, match=r"column 'body' is not in the DataFrame.*'id', 'text'"):
        apply_lfs(BOOM, failing_lfs(), fields=["body"])
