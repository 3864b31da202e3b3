"""Tests for mlsys.serving.cache: the LRU prediction cache."""

from __future__ import annotations

import pytest

from mlsys.serving.cache import PredictionCache


def test_a_hit_returns_what_was_put_and_counts() -> None:
    cache = PredictionCache(entries=2)
    assert cache.get("1", "a") is None
    cache.put("1", "a", {"label": "spam"})
    assert cache.get("1", "a") == {"label": "spam"}
    assert (cache.hits, cache.misses) == (1, 1)


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = PredictionCache(entries=2)
    cache.put("1", "a", {"n": 1})
    cache.put("1", "b", {"n": 2})
    assert cache.get("1", "a") is not None  # "b" is now the least recently used
    cache.put("1", "c", {"n": 3})
    assert len(cache) == 2
    assert cache.get("1", "b") is None
    assert cache.get("1", "a") == {"n": 1} and cache.get("1", "c") == {"n": 3}


def test_the_model_version_is_part_of_the_key() -> None:
    cache = PredictionCache(entries=10)
    cache.put("1", "a", {"label": "ham"})
    assert cache.get("2", "a") is None
    cache.put("2", "a", {"label": "spam"})
    assert cache.get("1", "a") == {"label": "ham"} and cache.get("2", "a") == {"label": "spam"}


def test_unhashable_rows_and_a_zero_size_cache_store_nothing() -> None:
    cache = PredictionCache(entries=10)
    cache.put("1", ("a", ["list"]), {"n": 1})
    assert cache.get("1", ("a", ["list"])) is None and len(cache) == 0
    off = PredictionCache(entries=0)
    off.put("1", "a", {"n": 1})
    assert not off.enabled and off.get("1", "a") is None


def test_a_bad_size_is_named() -> None:
    with pytest.raises(ValueError, match="got -1"):
        PredictionCache(entries=-1)
