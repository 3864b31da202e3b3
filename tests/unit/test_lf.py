"""Unit tests for mlsys.labeling.lf: keyword and regex LF factories, their specs and checks."""

from __future__ import annotations

import pickle
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from snorkel.labeling import LabelingFunction as SnorkelLF
from snorkel.labeling import PandasLFApplier

from mlsys.labeling.lf import (
    ABSTAIN,
    VectorSpec,
    bind_class_labels,
    keyword_lf,
    labeling_function,
    preprocessor,
    regex_lf,
    vector_spec,
)

HAM, SPAM = 0, 1  # a binary task's class indices, for these tests


def row(text: object, **fields: object) -> pd.Series:
    """A row as Snorkel's PandasLFApplier hands it to an LF."""
    return pd.Series({"text": text, **fields}, dtype=object)


def test_abstain_matches_snorkel_conventions() -> None:
    assert ABSTAIN == -1


CLASSES = ("cause", "effect", "other")


def resolve(value: object) -> int:
    """Class names or indices of CLASSES, as a dataset definition resolves them."""
    if isinstance(value, str) and value in CLASSES:
        return CLASSES.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CLASSES):
        return value
    raise ValueError(f"{value!r} is not a class; classes are {list(CLASSES)}")


@labeling_function()
def says_effect_by_name(x: object) -> object:
    return "effect" if "result" in x.text else ABSTAIN  # type: ignore[attr-defined]


@labeling_function()
def says_a_class_that_does_not_exist(x: object) -> object:
    return "nonsense"


def test_bound_lfs_vote_class_indices_for_class_names() -> None:
    lfs = bind_class_labels(
        [keyword_lf(["because"], "cause"), regex_lf(r"led to", 1), says_effect_by_name],
        resolve,
    )
    votes = [lf(row("the result, because it led to it")) for lf in lfs]
    assert votes == [0, 1, 1]
    assert [lf(row("nothing")) for lf in lfs] == [ABSTAIN] * 3
    # Keyword and regex LFs keep their specs (so they run on whole columns), label resolved.
    assert vector_spec(lfs[0]) == VectorSpec(
        kind="keyword", field="text", label=0, keywords=("because",)
    )
    assert pickle.loads(pickle.dumps(lfs[0]))(row("because")) == 0


def test_binding_refuses_an_unknown_class_naming_the_lf_and_the_classes() -> None:
    with pytest.raises(ValueError, match=r"'keyword_x'.*'bogus' is not a class.*'cause'"):
        bind_class_labels([keyword_lf(["x"], "bogus")], resolve)
    bound = bind_class_labels([says_a_class_that_does_not_exist], resolve)
    with pytest.raises(ValueError, match=r"'says_a_class_that_does_not_exist' voted 'nonsense'"):
        bound[0](row("anything"))


def test_binding_refuses_repeated_names_and_things_that_are_not_lfs() -> None:
    with pytest.raises(ValueError, match="two labeling functions are named 'keyword_x'"):
        bind_class_labels([keyword_lf(["x"], 0), keyword_lf(["x"], 1)], resolve)
    with pytest.raises(TypeError, match=r"entry 1 is .*not a labeling function"):
        bind_class_labels([keyword_lf(["x"], 0), len], resolve)  # type: ignore[list-item]


def test_keyword_lf_votes_when_any_keyword_is_in_the_lowercased_text() -> None:
    please = keyword_lf(["please", "plz"], SPAM)
    assert please(row("PLEASE like")) == SPAM
    assert please(row("plz sub")) == SPAM
    assert please(row("nice video")) == ABSTAIN


def test_keyword_lf_matches_substrings_like_the_tutorial() -> None:
    # The tutorial's keyword_lookup tests substrings, so "my" fires inside "mystery".
    assert keyword_lf(["my"], SPAM)(row("A mystery")) == SPAM


def test_keyword_lf_survives_bom_html_and_emoji() -> None:
    subscribe = keyword_lf(["subscribe"], SPAM)
    assert subscribe(row("\ufeffSUBSCRIBE<br />to my channel &amp; win 🎉")) == SPAM
    assert subscribe(row("\ufeff<a href='x'>🎵</a>")) == ABSTAIN


def test_keyword_lf_lowercases_like_python_not_arrow() -> None:
    # Python lower-cases a final capital sigma to "ς" and "İ" to "i" + U+0307;
    # Arrow's utf8_lower gives "σ" and a plain "i".
    assert keyword_lf(["οδος"], HAM)(row("ΟΔΟΣ")) == HAM
    assert keyword_lf(["istanbul"], HAM)(row("İstanbul")) == ABSTAIN


def test_keyword_lf_reads_the_named_field() -> None:
    title = keyword_lf(["free"], SPAM, field="title")
    assert title(row("nothing here", title="FREE stuff")) == SPAM


def test_keyword_lf_default_name_is_its_first_keyword() -> None:
    assert keyword_lf(["please", "plz"], SPAM).name == "keyword_please"
    assert keyword_lf(["song"], HAM, name="song_mention").name == "song_mention"


def test_regex_lf_searches_case_insensitively_by_default() -> None:
    check_out = regex_lf(r"check.*out", SPAM)
    assert check_out(row("CHECK my video OUT")) == SPAM
    assert check_out(row("out, check")) == ABSTAIN
    assert regex_lf(r"check.*out", SPAM, flags=0)(row("CHECK it OUT")) == ABSTAIN


def test_regex_lf_default_name_joins_the_pattern_words() -> None:
    assert regex_lf(r"check.*out", SPAM).name == "regex_check_out"
    assert regex_lf(r"[!?]+", SPAM).name == "regex_pattern"
    assert regex_lf(r"check.*out", SPAM, name="check_out").name == "check_out"


def test_factory_lfs_are_snorkel_lfs_with_a_spec() -> None:
    please = keyword_lf(["please", "plz"], SPAM)
    check_out = regex_lf(r"check.*out", SPAM)
    assert isinstance(please, SnorkelLF) and isinstance(check_out, SnorkelLF)
    assert vector_spec(please) == VectorSpec(
        kind="keyword", field="text", label=SPAM, keywords=("please", "plz")
    )
    assert vector_spec(check_out) == VectorSpec(
        kind="regex", field="text", label=SPAM, pattern="check.*out", flags=re.IGNORECASE
    )


def test_plain_and_preprocessed_lfs_have_no_spec() -> None:
    @labeling_function()
    def short(x: SimpleNamespace) -> int:
        return HAM if len(x.text) < 5 else ABSTAIN

    @preprocessor()
    def upper(x: SimpleNamespace) -> SimpleNamespace:
        x.text = x.text.upper()
        return x

    please = keyword_lf(["please"], SPAM)
    changed = SnorkelLF(name="upper_please", f=please._f, pre=[upper])
    assert vector_spec(short) is None
    assert vector_spec(changed) is None


def test_snorkel_applier_runs_factory_lfs_unchanged() -> None:
    lfs = [keyword_lf(["my"], SPAM), keyword_lf(["song"], HAM), regex_lf(r"check.*out", SPAM)]
    df = pd.DataFrame({"text": ["check out my song", "great song", "hello"]})
    matrix = PandasLFApplier(lfs).apply(df, progress_bar=False)
    assert np.array_equal(matrix, [[SPAM, HAM, SPAM], [ABSTAIN, HAM, ABSTAIN], [-1, -1, -1]])


def test_factory_lfs_survive_pickling() -> None:
    please = pickle.loads(pickle.dumps(keyword_lf(["please"], SPAM)))
    check_out = pickle.loads(pickle.dumps(regex_lf(r"check.*out", SPAM)))
    assert please(row("please")) == SPAM
    assert check_out(row("check this out")) == SPAM
    assert vector_spec(please) is not None


@pytest.mark.parametrize("value", [None, float("nan"), pd.NA, 42])
def test_factory_lfs_reject_a_non_string_field_naming_it(value: object) -> None:
    for lf in (keyword_lf(["my"], SPAM), regex_lf("my", SPAM)):
        with pytest.raises(TypeError, match=r"needs a str in field 'text'"):
            lf(row(value))


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ([], "at least one keyword"),
        ("please", r"not the single string 'please'"),
        (["ok", ""], r"keyword '' in \['ok', ''\]"),
        (["ok", 3], r"keyword 3 in"),
        (["Song"], r"keyword 'Song' is not lower case.*'song'"),
    ],
)
def test_keyword_lf_rejects_bad_keywords_naming_them(keywords: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        keyword_lf(keywords, SPAM)  # type: ignore[arg-type]


@pytest.mark.parametrize("label", [-1, True, 1.0, "", " ", None])
def test_factories_reject_labels_that_are_not_class_indices_or_names(label: object) -> None:
    expected = f"label must be a class index >= 0 or a class name, got {label!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        keyword_lf(["my"], label)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(f"got {label!r}")):
        regex_lf("my", label)  # type: ignore[arg-type]


def test_regex_lf_rejects_an_invalid_pattern_naming_it() -> None:
    with pytest.raises(ValueError, match=re.escape("invalid regex pattern 'check(out'")):
        regex_lf("check(out", SPAM)


def test_factories_reject_a_field_that_is_a_series_attribute() -> None:
    with pytest.raises(ValueError, match=r"field 'name' is also a pandas\.Series attribute"):
        keyword_lf(["bob"], SPAM, field="name")


def test_factories_reject_an_empty_name() -> None:
    with pytest.raises(ValueError, match="LF name must be a non-empty string"):
        regex_lf("x", SPAM, name="")
