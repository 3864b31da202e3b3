"""The youtube-spam dataset's LF module (datasets/youtube-spam/lfs.py) votes as documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from mlsys.data.definition import DatasetError, load_dataset
from mlsys.labeling.lf import ABSTAIN, LabelingFunction, vector_spec

YOUTUBE = load_dataset("youtube-spam")
lfs_module: Any = YOUTUBE.lf_module_object()
youtube_lfs = lfs_module.youtube_lfs
# The module votes with class names; the dataset resolves them to indices.
HAM, SPAM = "ham", "spam"

NAMES = [
    "keyword_my",
    "keyword_subscribe",
    "keyword_http",
    "keyword_please",
    "keyword_song",
    "regex_check_out",
    "short_comment",
    "textblob_polarity",
    "textblob_subjectivity",
]


def row(text: str) -> pd.Series:
    """A row as Snorkel's PandasLFApplier hands it to an LF."""
    return pd.Series({"text": text}, dtype=object)


def by_name() -> dict[str, LabelingFunction]:
    return {lf.name: lf for lf in youtube_lfs()}


@pytest.fixture(autouse=True)
def _fresh_sentiment_cache() -> Iterator[None]:
    lfs_module.textblob_sentiment.reset_cache()
    yield
    lfs_module.textblob_sentiment.reset_cache()


def test_youtube_lfs_are_the_tutorial_set_without_spacy() -> None:
    assert [lf.name for lf in youtube_lfs()] == NAMES


def test_youtube_lfs_returns_a_new_list_each_call() -> None:
    first = youtube_lfs()
    first.clear()
    assert len(youtube_lfs()) == len(NAMES)


def test_keyword_and_regex_lfs_carry_specs_for_the_fast_applier() -> None:
    vectorized = [lf.name for lf in youtube_lfs() if vector_spec(lf) is not None]
    assert vectorized == NAMES[:6]


@pytest.mark.parametrize(
    ("name", "votes_on", "vote", "abstains_on"),
    [
        ("keyword_my", "Check my channel", SPAM, "Nice video"),
        ("keyword_subscribe", "Please SUBSCRIBE to us", SPAM, "Nice video"),
        ("keyword_http", "go to https://example.com now", SPAM, "Nice video"),
        ("keyword_please", "plz like this", SPAM, "Nice video"),
        ("keyword_song", "This SONG is stuck in my head", HAM, "Nice video"),
        ("regex_check_out", "Check this video out", SPAM, "out of this world, check"),
        ("short_comment", "Nice video", HAM, "This is a comment of seven words"),
        # TextBlob: polarity 1.0, subjectivity 0.3 / polarity 0.5, subjectivity 0.6.
        ("textblob_polarity", "I think this is the best video", HAM, "I love it"),
        ("textblob_subjectivity", "I love it", HAM, "I think this is the best video"),
    ],
)
def test_each_lf_votes_as_documented(name: str, votes_on: str, vote: str, abstains_on: str) -> None:
    lf = by_name()[name]
    assert lf(row(votes_on)) == vote
    assert lf(row(abstains_on)) == ABSTAIN


@pytest.mark.parametrize(
    "text",
    [
        "\ufeff",
        "\ufeffCheck out my channel<br />&amp; subscribe!!! http://x.co",
        '<a href="http://www.youtube.com/watch?v=x">link</a>',
        "🔥🔥🔥 سلام 你好 ΟΔΟΣ İstanbul",
        "",
    ],
)
def test_lfs_vote_on_raw_youtube_texts_without_crashing(text: str) -> None:
    for lf in youtube_lfs():
        assert lf(row(text)) in (ABSTAIN, HAM, SPAM)


def test_textblob_lfs_share_one_sentiment_computation_per_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = lfs_module.TextBlob

    def counting(text: str) -> Any:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(lfs_module, "TextBlob", counting)
    lfs = by_name()
    x = row("I love this song")
    lfs["textblob_polarity"](x)
    lfs["textblob_subjectivity"](x)
    assert calls == ["I love this song"]


@pytest.mark.parametrize(
    ("name", "votes_on", "vote", "abstains_on"),
    [
        ("keyword_channel", "Visit my CHANNEL", SPAM, "nice chanel"),
        ("regex_money", "earn $5 a day", SPAM, "I learn a lot"),
        ("regex_money", "I got paid", SPAM, "prepaid card"),
        ("keyword_website", "go to example.com now", SPAM, "come on"),
        ("keyword_visit", "click here", SPAM, "cliché"),
        ("keyword_artist", "Shakira is the best", HAM, "who sings this"),
        ("keyword_love", "LOVE it", HAM, "hate it"),
        ("regex_url", "go to zonepa . com now", SPAM, "so. come on"),
        ("regex_url", "\uff48\uff54\uff54\uff50://\uff57\uff57\uff57.x", SPAM, "http is a word"),
        ("regex_url", "HTTPS :/ /x.io", SPAM, "wow.what a song"),
        ("regex_social", "follow me on Instagram", SPAM, "I follow the news"),
        ("regex_free", "get FREE gift cards", SPAM, "freedom"),
        ("regex_earn", "download this app", SPAM, "apple"),
        ("regex_my_new", "listen to my new song", SPAM, "my favourite song"),
        ("regex_promo", "I'm a young rapper", SPAM, "rapping is hard"),
        ("regex_support", "please support my dream", SPAM, "supported by many"),
        ("regex_views", "almost a BILLION views", HAM, "I viewed it"),
        ("regex_long", " ".join(["word"] * 26), SPAM, " ".join(["word"] * 25)),
        ("regex_no_letters", "<3 :) 2015 \ufeff", HAM, "<3 u"),
    ],
)
def test_extended_lfs_vote_as_documented(
    name: str, votes_on: str, vote: str, abstains_on: str
) -> None:
    lf = {lf.name: lf for lf in lfs_module.youtube_lfs_extended()}[name]
    assert lf(row(votes_on)) == vote
    assert lf(row(abstains_on)) == ABSTAIN


def test_lf_sets_by_name_vote_class_indices() -> None:
    assert [lf.name for lf in YOUTUBE.lf_set("tutorial")] == NAMES
    extended = [lf.name for lf in YOUTUBE.lf_set("extended")]
    assert extended[: len(NAMES)] == NAMES and len(extended) == len(set(extended)) == 25
    assert [lf.name for lf in YOUTUBE.lf_set()] == extended  # "default" is the extended set
    bound = {lf.name: lf for lf in YOUTUBE.lf_set("tutorial")}
    assert bound["keyword_my"](row("Check my channel")) == 1  # spam is class 1
    assert bound["short_comment"](row("Nice video")) == 0  # ham is class 0
    assert vector_spec(bound["keyword_my"]) is not None  # still runs on whole columns
    with pytest.raises(
        DatasetError, match=r"no LF set 'nope'.*\['default', 'extended', 'tutorial'\]"
    ):
        YOUTUBE.lf_set("nope")
