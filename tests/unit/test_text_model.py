"""Tests for mlsys.models.text: hashed features, the flat MLP, the dataset and prediction."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mlsys.models import (
    HashingFeaturizer,
    TextClassifierSpec,
    TextDataset,
    build_text_classifier,
    predict_texts,
)
from tests.conftest import read_youtube


@pytest.fixture(autouse=True)
def _torch_seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread: on a busy machine, torch's threads wait on each other and a
    small model trains some 20x slower with two threads than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- HashingFeaturizer -------------------------------------------------------------------


def test_transform_matches_golden_values() -> None:
    # Fixed expectations guard the hash: a change would silently break every saved model.
    # crc32 mod 64 and its top bit: check 19 +, out 25 -, my 13 -, channel 7 -,
    # "check out" 30 -, "out my" 10 +, "my channel" 23 +; seven n-grams, each 1/sqrt(7).
    x = HashingFeaturizer(n_features=64).transform(["Check out my channel"])[0]
    signs = {7: -1, 10: 1, 13: -1, 19: 1, 23: 1, 25: -1, 30: -1}
    expected = torch.zeros(64)
    for bucket, sign in signs.items():
        expected[bucket] = sign / math.sqrt(7)
    torch.testing.assert_close(x, expected)


def test_transform_shape_dtype_and_unit_norm() -> None:
    featurizer = HashingFeaturizer()
    x = featurizer.transform(["win a free prize now", "nice song", "!!!", ""])
    assert x.shape == (4, 2**13)
    assert x.dtype == torch.float32
    norms = x.norm(dim=1)
    torch.testing.assert_close(norms[:2], torch.ones(2))
    # Texts without words map to zero rows instead of dividing by zero.
    assert norms[2:].tolist() == [0.0, 0.0]


def test_transform_uses_sublinear_term_frequency() -> None:
    featurizer = HashingFeaturizer(n_features=2**20, ngram_range=(1, 1))
    row = featurizer.transform(["spam spam eggs"])[0]
    values = sorted(row[row != 0].abs().tolist())
    assert values[1] / values[0] == pytest.approx(1 + math.log(2), rel=1e-6)


def test_lowercase_and_ngram_range_change_features() -> None:
    text = ["Check Out"]
    assert torch.equal(
        HashingFeaturizer().transform(text), HashingFeaturizer().transform(["check out"])
    )
    assert not torch.equal(
        HashingFeaturizer(lowercase=False).transform(text), HashingFeaturizer().transform(text)
    )
    unigrams = HashingFeaturizer(ngram_range=(1, 1)).transform(text)
    assert int((unigrams != 0).sum()) == 2
    assert int((HashingFeaturizer().transform(text) != 0).sum()) == 3


@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, pd.NA])
def test_transform_rejects_missing_text_naming_the_row(missing: object) -> None:
    with pytest.raises(ValueError, match=r"text in row 1 is missing"):
        HashingFeaturizer().transform(["ok", missing, "also ok"])  # type: ignore[list-item]


def test_transform_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match=r"text in row 0 must be a str, got int 5"):
        HashingFeaturizer().transform([5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="got a single str"):
        HashingFeaturizer().transform("one text")


@pytest.mark.parametrize("n_features", [0, 8, 100, 2**25, True])
def test_featurizer_rejects_bad_n_features(n_features: int) -> None:
    with pytest.raises(ValueError, match=rf"power of two in \[16, 2\*\*24\], got {n_features}"):
        HashingFeaturizer(n_features=n_features)


@pytest.mark.parametrize("ngram_range", [(0, 1), (2, 1), (1,), (1, 2, 3)])
def test_featurizer_rejects_bad_ngram_range(ngram_range: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="ngram_range must be"):
        HashingFeaturizer(ngram_range=ngram_range)


def test_featurizer_round_trips_through_json_and_pickle() -> None:
    featurizer = HashingFeaturizer(n_features=256, ngram_range=(1, 3), lowercase=False)
    from_json = HashingFeaturizer.from_dict(json.loads(json.dumps(featurizer.to_dict())))
    from_pickle = pickle.loads(pickle.dumps(featurizer))
    assert from_json == featurizer == from_pickle
    texts = ["Subscribe to my channel please", "great song"]
    assert torch.equal(from_json.transform(texts), featurizer.transform(texts))


def test_featurizer_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown HashingFeaturizer setting\(s\) \['n_feature'\]"):
        HashingFeaturizer.from_dict({"n_feature": 64})


# --- build_text_classifier and its spec ------------------------------------------------


def test_classifier_is_flat_and_outputs_logits() -> None:
    model = build_text_classifier(32, hidden=(16, 8), dropout=0.1, n_classes=3)
    kinds = [type(layer) for layer in model]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert model(torch.zeros(5, 32)).shape == (5, 3)


def test_classifier_without_hidden_layers_or_dropout() -> None:
    assert [type(layer) for layer in build_text_classifier(32, hidden=())] == [nn.Linear]
    no_dropout = build_text_classifier(32, hidden=(4,))
    assert not any(isinstance(layer, nn.Dropout) for layer in no_dropout)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_features": 0}, "n_features must be a positive int, got 0"),
        ({"hidden": (8, 0)}, r"hidden\[1\] must be a positive int, got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"n_classes": 1}, "n_classes must be an int >= 2, got 1"),
    ],
)
def test_classifier_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"n_features": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_text_classifier(**arguments)  # type: ignore[arg-type]


def test_spec_reads_back_the_built_layout() -> None:
    spec = TextClassifierSpec(n_features=64, hidden=(16, 8), dropout=0.2, n_classes=3)
    model = spec.build()
    assert TextClassifierSpec.from_model(model) == spec
    assert TextClassifierSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_spec_rejects_a_foreign_layout() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"model layer 1 is Tanh\(\)"):
        TextClassifierSpec.from_model(model)


# --- TextDataset -----------------------------------------------------------------------


def test_dataset_items_match_the_featurizer() -> None:
    featurizer = HashingFeaturizer(n_features=128)
    texts = ["win a prize", "nice song", "visit my channel"]
    data = TextDataset(texts, [1, 0, 1], featurizer, weights=[0.5, 1.0, 2.0])
    assert len(data) == 3
    x, y, w = data[2]
    assert x.dtype == torch.float32 and x.shape == (128,)
    assert torch.equal(x, featurizer.transform(texts)[2])
    assert y.dtype == torch.int64 and y.shape == () and int(y) == 1
    assert w.dtype == torch.float32 and w.shape == () and float(w) == 2.0


def test_dataset_weights_default_to_one() -> None:
    data = TextDataset(["a", "b"], np.array([0, 1]), HashingFeaturizer())
    assert data.weights.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("labels", "weights", "message"),
    [
        ([0, 1], None, "same length, got 3, 2 and 3"),
        ([0, 2, 1], None, r"label in row 1 is 2, outside \[0, 2\)"),
        ([0, pd.NA, 1], None, "label in row 1 is missing"),
        ([0, 0.5, 1], None, "label in row 1 must be an integer, got 0.5"),
        ([0, 1, 1], [1.0, float("nan"), 1.0], "weight in row 1 must be a positive finite number"),
        ([0, 1, 1], [1.0, 1.0, 0.0], r"weight in row 2 must be a positive finite number, got 0.0"),
    ],
)
def test_dataset_rejects_bad_rows(
    labels: list[object], weights: list[object] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TextDataset(["a", "b", "c"], labels, HashingFeaturizer(), weights=weights)


def test_dataset_from_frame() -> None:
    df = pd.DataFrame(
        {
            "text": pd.array(["win now", "lovely"], dtype="string"),
            "label": pd.array([1, 0], dtype="Int64"),
            "weight": [0.25, 1.0],
        }
    )
    data = TextDataset.from_frame(df, HashingFeaturizer())
    assert data.labels.tolist() == [1, 0]
    assert data.weights.tolist() == [0.25, 1.0]
    unweighted = TextDataset.from_frame(
        df.drop(columns="weight"), HashingFeaturizer(), weight_column=None
    )
    assert unweighted.weights.tolist() == [1.0, 1.0]


def test_dataset_from_frame_names_absent_columns() -> None:
    df = pd.DataFrame({"text": ["a"], "label": [0]})
    with pytest.raises(ValueError, match=r"\['weight'\] not in the frame.*weight_column=None"):
        TextDataset.from_frame(df, HashingFeaturizer())


def test_dataset_from_frame_names_missing_text_row() -> None:
    df = pd.DataFrame({"text": pd.array(["a", None], dtype="string"), "label": [0, 1]})
    with pytest.raises(ValueError, match="text in row 1 is missing"):
        TextDataset.from_frame(df, HashingFeaturizer(), weight_column=None)


# --- predict_texts ---------------------------------------------------------------------


def test_predict_texts_columns_and_probabilities() -> None:
    featurizer = HashingFeaturizer(n_features=64)
    model = build_text_classifier(64, hidden=(8,), n_classes=3).train()
    texts = ["a b", "c d e", "f", "g h", "i"]
    out = predict_texts(model, featurizer, texts)
    assert list(out.columns) == ["label", "probability", "proba_0", "proba_1", "proba_2"]
    assert out["label"].dtype == np.int64 and out["probability"].dtype == np.float64
    proba = out[["proba_0", "proba_1", "proba_2"]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (out["label"].to_numpy() == proba.argmax(axis=1)).all()
    np.testing.assert_array_equal(out["probability"].to_numpy(), proba.max(axis=1))
    assert model.training, "predict_texts must restore the model's mode"
    chunked = predict_texts(model, featurizer, texts, chunk_rows=2)
    pd.testing.assert_frame_equal(chunked, out)


def test_predict_texts_handles_no_texts_and_names_missing_rows() -> None:
    model = build_text_classifier(64, hidden=())
    empty = predict_texts(model, HashingFeaturizer(n_features=64), [])
    assert list(empty.columns) == ["label", "probability", "proba_0", "proba_1"]
    assert len(empty) == 0
    with pytest.raises(ValueError, match="text in row 2 is missing"):
        predict_texts(model, HashingFeaturizer(n_features=64), ["a", "b", None])  # type: ignore[list-item]


# --- learning --------------------------------------------------------------------------


@pytest.mark.usefixtures("single_thread")
def test_model_learns_youtube_spam(youtube_dir: Path) -> None:
    df = read_youtube(youtube_dir)
    held_out = df["source_file"] == "Youtube05-Shakira.csv"
    train = df[~held_out].sample(n=800, random_state=0)
    test = df[held_out]
    featurizer = HashingFeaturizer()
    data = TextDataset.from_frame(train, featurizer, weight_column=None)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = data.labels
    model = build_text_classifier(featurizer.n_features)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for batch in torch.randperm(len(y)).split(32):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    predicted = predict_texts(model, featurizer, test["text"].tolist())["label"].to_numpy()
    accuracy = float((predicted == test["label"].to_numpy()).mean())
    # Chance is about 0.53 (the majority class); the full training set reaches about 0.92.
    assert accuracy > 0.8


def test_char_ngrams_make_a_misspelling_share_features_with_the_word() -> None:
    words_only = HashingFeaturizer(n_features=2**15)
    with_chars = HashingFeaturizer(n_features=2**15, char_ngram_range=(2, 5))
    for featurizer, expected_zero in ((words_only, True), (with_chars, False)):
        x = featurizer.transform(["subscribe", "subscrbe"])
        similarity = float(x[0] @ x[1])
        assert (similarity == 0.0) is expected_zero, (featurizer, similarity)
    x = with_chars.transform(["subscribe"])
    assert float(x.norm()) == pytest.approx(1.0)
    # A word n-gram and a character n-gram with the same letters are different features.
    assert float(with_chars.transform(["ab"])[0] @ words_only.transform(["ab"])[0]) < 1.0


def test_char_ngram_range_round_trips_and_old_configs_still_load() -> None:
    featurizer = HashingFeaturizer(n_features=2**15, char_ngram_range=(2, 5))
    config = json.loads(json.dumps(featurizer.to_dict()))
    assert config["char_ngram_range"] == [2, 5]
    assert HashingFeaturizer.from_dict(config) == featurizer
    assert "char_ngram_range" not in HashingFeaturizer().to_dict()
    assert HashingFeaturizer.from_dict({"n_features": 64, "ngram_range": [1, 2], "lowercase": True})


@pytest.mark.parametrize("bad", [(0, 3), (4, 2), (2,), ("a", 3), (True, 2)])
def test_a_bad_char_ngram_range_is_named(bad: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match="char_ngram_range must be None or"):
        HashingFeaturizer(char_ngram_range=bad)  # type: ignore[arg-type]


# --- the vectorized hashing and the sparse input layer ---------------------------------------

TRICKY = [
    "Check out my channel check out my channel",
    "",
    "   !!! ",
    "a a a a b",
    "Üñíçødé ČŠŽ 日本語 テキスト",
    "x" * 300,
    "subscribe2me http://www.example.com",
]


def _reference_rows(featurizer: HashingFeaturizer, texts: list[str]) -> torch.Tensor:
    """The featurizer's definition, one text and one n-gram at a time."""
    import re
    import zlib
    from collections import Counter

    out = torch.zeros(len(texts), featurizer.n_features)
    for row, text in enumerate(texts):
        words = re.findall(r"\w+", text.lower() if featurizer.lowercase else text)
        counts: Counter[str] = Counter()
        for n in range(featurizer.ngram_range[0], featurizer.ngram_range[1] + 1):
            for start in range(len(words) - n + 1):
                counts[" ".join(words[start : start + n])] += 1
        if featurizer.char_ngram_range:
            for word in words:
                padded = f" {word} "
                low, high = featurizer.char_ngram_range
                for n in range(low, high + 1):
                    for start in range(len(padded) - n + 1):
                        counts["\x00c" + padded[start : start + n]] += 1
        buckets: dict[int, float] = {}
        for gram, count in counts.items():
            digest = zlib.crc32(gram.encode("utf-8"))
            bucket = digest % featurizer.n_features
            sign = -1.0 if digest & 0x80000000 else 1.0
            buckets[bucket] = buckets.get(bucket, 0.0) + sign * (1.0 + math.log(count))
        norm = math.sqrt(sum(v * v for v in buckets.values()))
        for bucket, value in buckets.items():
            out[row, bucket] = value / norm
    return out


@pytest.mark.parametrize(
    "featurizer",
    [
        HashingFeaturizer(),
        HashingFeaturizer(n_features=16, ngram_range=(1, 3)),  # many collisions, some cancel
        HashingFeaturizer(n_features=2**15, char_ngram_range=(1, 4)),
        HashingFeaturizer(n_features=1024, ngram_range=(2, 2), lowercase=False),
    ],
    ids=["default", "16-buckets", "chars", "bigrams-cased"],
)
def test_transform_equals_the_definition_one_gram_at_a_time(featurizer: HashingFeaturizer) -> None:
    youtube = [
        "Hey guys check out my new channel and our first vid",
        "Love this song <3",
        "ｈｔｔｐ://ｗｗｗ.ｅｂａｙ.ｃｏｍ",
    ]
    texts = TRICKY + youtube
    torch.testing.assert_close(featurizer.transform(texts), _reference_rows(featurizer, texts))


def test_hashing_caches_stay_bounded_and_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlsys.models.text as text_module

    featurizer = HashingFeaturizer(n_features=2**12, char_ngram_range=(2, 3))
    texts = [f"word{i} other{i % 7} shared" for i in range(200)]
    expected = _reference_rows(featurizer, texts)
    monkeypatch.setattr(text_module, "_DIGEST_ENTRIES", 50)
    monkeypatch.setattr(text_module, "_WORD_ENTRIES", 30)
    text_module._DIGESTS.clear()
    text_module._CHAR_GRAMS.clear()
    torch.testing.assert_close(featurizer.transform(texts), expected)
    assert len(text_module._DIGESTS) <= 50
    assert all(len(cache) <= 30 for cache in text_module._CHAR_GRAMS.values())


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(512, 2)),
        nn.Sequential(nn.Linear(512, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)),
        nn.Sequential(nn.Linear(512, 2, bias=False)),
    ],
    ids=["linear", "mlp-dropout", "no-bias"],
)
def test_predict_texts_on_sparse_rows_equals_the_dense_model(model: nn.Sequential) -> None:
    featurizer = HashingFeaturizer(n_features=512, char_ngram_range=(1, 3))
    texts = TRICKY * 3
    model.train()  # predict_texts must score in eval mode and put the mode back
    scored = predict_texts(model, featurizer, texts, chunk_rows=4)
    assert model.training
    with torch.no_grad():
        expected = torch.softmax(model.eval()(featurizer.transform(texts)), dim=1).double()
    proba = scored[[c for c in scored.columns if c.startswith("proba_")]].to_numpy()
    np.testing.assert_allclose(proba, expected.numpy(), rtol=0, atol=1e-6)


def test_predict_texts_follows_weights_that_change_between_calls() -> None:
    """The sparse layer's copy of the weights is reused while they stay as they are, and
    made again after an optimizer step or an in-place change."""
    featurizer = HashingFeaturizer(n_features=256)
    model = nn.Sequential(nn.Linear(256, 2))
    texts = TRICKY * 2

    def dense() -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(featurizer.transform(texts)), dim=1).double().numpy()

    def sparse() -> np.ndarray:
        return predict_texts(model, featurizer, texts)[["proba_0", "proba_1"]].to_numpy()

    first = sparse()
    np.testing.assert_allclose(first, dense(), atol=1e-6)
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    nn.functional.cross_entropy(
        model(featurizer.transform(texts)), torch.ones(len(texts)).long()
    ).backward()
    optimizer.step()
    np.testing.assert_allclose(sparse(), dense(), atol=1e-6)
    with torch.no_grad():
        model[0].weight.mul_(-1.0)
    np.testing.assert_allclose(sparse(), dense(), atol=1e-6)
    assert not np.allclose(sparse(), first, atol=1e-3)


def test_predict_texts_runs_other_models_on_dense_rows() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(64, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.layout == torch.strided and x.shape[1] == 64
            return self.linear(2 * x)

    model, featurizer = Scaled(), HashingFeaturizer(n_features=64)
    scored = predict_texts(model, featurizer, ["check out my channel", "nice"])
    with torch.no_grad():
        expected = torch.softmax(model(featurizer.transform(["check out my channel", "nice"])), 1)
    np.testing.assert_allclose(scored[["proba_0", "proba_1"]].to_numpy(), expected.double())
