"""benchmarks/featurizer.py measures what it says: its distinct texts are distinct and
seeded, ours is featurized as the pipeline does it, and the scikit-learn set-ups make rows of
the same width and scale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from mlsys.models.text import PIPELINE_N_FEATURES, pipeline_featurizer

ROOT = Path(__file__).resolve().parents[2]
CORPUS = [
    "check out my channel for free gift cards",
    "love this song so much",
    "this song is the best song ever",
    "subscribe to my channel please",
    "Check out http://example.com for more!!",
    "so much love from brazil",
]
TEXTS = ["Love this song!!", "check out my channel http://x.y", "", "a a a b"]


@pytest.fixture(scope="module")
def bench(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("featurizer.py")


def test_generated_texts_are_distinct_seeded_and_of_the_corpus_words(bench: ModuleType) -> None:
    generator = bench.TextGenerator(CORPUS)
    texts = generator.texts(200, seed=7)
    assert len(texts) == len(set(texts)) == 200
    assert texts == generator.texts(200, seed=7)
    assert texts != generator.texts(200, seed=8)
    vocabulary = {word for text in CORPUS for word in text.split()}
    assert {word for text in texts for word in text.split()} <= vocabulary
    described = generator.describe(texts)
    assert described["distinct_texts"] == 200
    assert described["distinct_words"] <= described["source_vocabulary"] == len(vocabulary)


def test_ours_is_the_pipeline_featurizer(bench: ModuleType) -> None:
    featurizer = pipeline_featurizer()
    matrix = bench.mlsys_featurize(featurizer)(TEXTS)
    assert matrix.shape == (len(TEXTS), PIPELINE_N_FEATURES)
    np.testing.assert_array_equal(matrix.toarray(), featurizer.transform(TEXTS).numpy())


def test_the_closest_sklearn_set_up_makes_unit_rows_of_our_width(bench: ModuleType) -> None:
    matrix = bench.sklearn_closest()(TEXTS)
    assert matrix.shape == (len(TEXTS), PIPELINE_N_FEATURES)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
    np.testing.assert_allclose(norms, [1.0, 1.0, 0.0, 1.0])
    assert np.isfinite(matrix.data).all()


def test_the_union_set_up_has_two_halves(bench: ModuleType) -> None:
    matrix = bench.sklearn_union()(TEXTS)
    assert matrix.shape == (len(TEXTS), PIPELINE_N_FEATURES)
    half = PIPELINE_N_FEATURES // 2
    for part in (matrix[:, :half], matrix[:, half:]):
        norms = np.sqrt(np.asarray(part.multiply(part).sum(axis=1))).ravel()
        np.testing.assert_allclose(norms, [1.0, 1.0, 0.0, 1.0])
