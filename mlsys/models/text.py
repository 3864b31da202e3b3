"""The text model: stateless hashed n-gram features and a small MLP over them.

Why one module: the featurizer, the classifier, its dataset and the probabilities frame are
what a registered pyfunc needs at serving time, and it imports this one module; they change
together when the model's input or output changes.
"""

from __future__ import annotations

import math
import re
import unicodedata
import weakref
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = [
    "PIPELINE_CHAR_NGRAMS",
    "PIPELINE_N_FEATURES",
    "PREDICT_CHUNK_ROWS",
    "HashingFeaturizer",
    "TextClassifierSpec",
    "TextDataset",
    "build_text_classifier",
    "check_threshold",
    "pipeline_featurizer",
    "predict_proba",
    "predict_texts",
    "proba_columns",
    "probabilities_frame",
    "probabilities_records",
    "score_texts",
    "text_classifier_layers",
]

TextItem = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""One ``TextDataset`` item: features ``[n_features]`` float32, label int64, weight float32."""

PREDICT_CHUNK_ROWS = 1024
"""Rows featurized and scored at a time by ``predict_texts``, so memory stays bounded
however many texts come in (a model whose first layer is not a Linear over the features
gets them dense: 1024 rows of 2**15 float32 features are 128 MiB)."""

_MAX_FEATURES = 2**24
# Words are runs of letters/digits/underscore; everything else separates them. Fixed, not a
# featurizer field: changing it would change every saved model's features.
_WORD_RE = re.compile(r"\w+")


@dataclass(frozen=True)
class _Csr:
    """Rows of hashed features in compressed sparse row form (row i is
    ``indices[indptr[i]:indptr[i+1]]`` with ``values`` at the same positions)."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def dense(self, n_features: int) -> torch.Tensor:
        """The rows as a dense float32 tensor ``(n_rows, n_features)``."""
        n_rows = len(self.indptr) - 1
        out = np.zeros((n_rows, n_features), dtype=np.float32)
        rows = np.repeat(np.arange(n_rows), np.diff(self.indptr))
        out[rows, self.indices] = self.values
        return torch.from_numpy(out)


def _is_missing(value: object) -> bool:
    """True for None, NaN (Python or NumPy float), pd.NA and pd.NaT."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def _check_texts(texts: Iterable[str]) -> list[str]:
    """``texts`` as a list, after checking each is a string; errors name the position."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got a single str")
    checked = list(texts)
    for position, text in enumerate(checked):
        if isinstance(text, str):
            continue
        if _is_missing(text):
            raise ValueError(f"text in row {position} is missing ({text!r})")
        raise TypeError(f"text in row {position} must be a str, got {type(text).__name__} {text!r}")
    return checked


@dataclass(frozen=True)
class HashingFeaturizer:
    """Turns texts into fixed-width vectors by hashing word n-grams (the "hashing trick").

    Usage::

        featurizer = HashingFeaturizer()
        x = featurizer.transform(["check out my channel", "love this song"])  # (2, 8192)

    It is stateless, so it needs no fitting and featurizes identically in any process: the
    hash is CRC-32 of the UTF-8 n-gram, never Python's per-process salted ``hash()``. Each
    distinct n-gram of a text counts ``1 + log(count)`` (sublinear tf) into bucket
    ``crc32 mod n_features``, with a sign taken from the hash's top bit so that colliding
    n-grams cancel on average instead of piling up (Weinberger et al., "Feature Hashing
    for Large Scale Multitask Learning", ICML 2009). Each row is then scaled to unit L2 norm,
    so long and short comments weigh alike. A text without words maps to a zero row.

    With ``char_ngram_range``, character n-grams of each word (padded with a space on
    each side, so prefixes and suffixes are grams of their own) are hashed into the same
    buckets too, marked so that they never share a hash with a word n-gram; they catch
    misspellings, URLs and run-together words ("subscribe2me"). They multiply the distinct
    grams per text, so give them more buckets (2**15).

    Args:
        n_features: width of the output, a power of two in [16, 2**24].
        ngram_range: ``(min_n, max_n)`` lengths of the word n-grams, ``1 <= min_n <= max_n``.
        lowercase: lowercase the text before splitting it into words.
        char_ngram_range: ``(min_n, max_n)`` lengths of the character n-grams, or None
            (the default) for word n-grams only.
    """

    n_features: int = 2**13
    ngram_range: tuple[int, int] = (1, 2)
    lowercase: bool = True
    char_ngram_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        n = self.n_features
        if (
            isinstance(n, bool)
            or not isinstance(n, int)
            or n < 16
            or n > _MAX_FEATURES
            or n & (n - 1)
        ):
            raise ValueError(f"n_features must be a power of two in [16, 2**24], got {n!r}")
        # JSON round trips give lists; keep the fields hashable tuples.
        object.__setattr__(self, "ngram_range", _length_range("ngram_range", self.ngram_range))
        if not isinstance(self.lowercase, bool):
            raise ValueError(f"lowercase must be a bool, got {self.lowercase!r}")
        if self.char_ngram_range is not None:
            chars = _length_range("char_ngram_range", self.char_ngram_range, optional=True)
            object.__setattr__(self, "char_ngram_range", chars)

    def transform(self, texts: Iterable[str]) -> torch.Tensor:
        """Features of ``texts`` as a float32 tensor ``(len(texts), n_features)``.

        Raises:
            ValueError: a text is missing (None, NaN, pd.NA); the message names its position.
            TypeError: a text is not a string.
        """
        return self._hash_rows(texts).dense(self.n_features)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values; ``from_dict`` rebuilds an equal featurizer."""
        config = asdict(self)
        config["ngram_range"] = list(self.ngram_range)
        if self.char_ngram_range is None:
            del config["char_ngram_range"]  # what models saved before the field read back
        else:
            config["char_ngram_range"] = list(self.char_ngram_range)
        return config

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> HashingFeaturizer:
        """The featurizer saved by ``to_dict``; unknown keys are an error, not ignored."""
        return _from_settings(cls, config)

    def _hash_rows(self, texts: Iterable[str]) -> _Csr:
        """Hashed, normalized features of ``texts`` as sparse rows.

        Python collects each text's distinct n-grams and their counts (``Counter`` over a
        list, character grams of a word taken from a per-process cache); NumPy does the
        rest for all rows at once: sublinear tf, signs, buckets, sums of colliding grams,
        row norms.
        """
        checked = _check_texts(texts)
        grams: list[str] = []
        counts: list[int] = []
        lengths = np.zeros(len(checked), dtype=np.int64)
        for row, text in enumerate(checked):
            found = self._grams(text)
            grams.extend(found)
            counts.extend(found.values())
            lengths[row] = len(found)
        n_rows = len(checked)
        if not grams:
            return _Csr(
                indptr=np.zeros(n_rows + 1, dtype=np.int64),
                indices=np.zeros(0, dtype=np.int64),
                values=np.zeros(0, dtype=np.float32),
            )
        digests = np.fromiter(map(_DIGESTS.__getitem__, grams), dtype=np.int64, count=len(grams))
        signed = np.where(digests & 0x80000000, -1.0, 1.0) * (
            1.0 + np.log(np.asarray(counts, dtype=np.float64))
        )
        rows = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
        # One key per (row, bucket), in row-major order: unique() sorts rows and, within a
        # row, buckets, and bincount sums the grams that share a bucket.
        keys, inverse = np.unique(rows * self.n_features + (digests & (self.n_features - 1)),
                                  return_inverse=True)  # fmt: skip
        sums = np.bincount(inverse, weights=signed, minlength=len(keys))
        key_rows = keys // self.n_features
        norms = np.sqrt(np.bincount(key_rows, weights=sums * sums, minlength=n_rows))
        # Buckets whose n-grams cancelled exactly add nothing; leave them out.
        keep = sums != 0.0
        key_rows, keys, sums = key_rows[keep], keys[keep], sums[keep]
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(key_rows, minlength=n_rows), out=indptr[1:])
        return _Csr(
            indptr=indptr,
            indices=keys - key_rows * self.n_features,
            values=(sums / norms[key_rows]).astype(np.float32),
        )

    def _grams(self, text: str) -> Counter[str]:
        """The distinct n-grams of one text with their counts (character grams marked)."""
        words = _WORD_RE.findall(text.lower() if self.lowercase else text)
        low, high = self.ngram_range
        found: list[str] = words[:] if low == 1 else []
        for n in range(max(low, 2), high + 1):
            found.extend(" ".join(words[start : start + n]) for start in range(len(words) - n + 1))
        if self.char_ngram_range is not None:
            cache = _char_gram_cache(self.char_ngram_range)
            for word in words:
                char_grams = cache.get(word)
                if char_grams is None:
                    char_grams = cache[word] = _char_grams(word, self.char_ngram_range)
                found.extend(char_grams)
        return Counter(found)


class _DigestCache(dict[str, int]):
    """CRC-32 of each n-gram's UTF-8 bytes, computed on first use; cleared when it grows
    past ``_DIGEST_ENTRIES`` so that memory stays bounded on any input."""

    def __missing__(self, gram: str) -> int:
        if len(self) >= _DIGEST_ENTRIES:
            self.clear()
        digest = self[gram] = zlib.crc32(gram.encode("utf-8"))
        return digest


# Bounds of the per-process caches: about 15 MiB of digests and 20 MiB of words' character
# grams at most. Words follow Zipf's law, so the common ones stay cached.
_DIGEST_ENTRIES = 2**17
_WORD_ENTRIES = 2**14
_DIGESTS = _DigestCache()
_CHAR_GRAMS: dict[tuple[int, int], dict[str, list[str]]] = {}


def _char_gram_cache(lengths: tuple[int, int]) -> dict[str, list[str]]:
    """Per-process cache of each word's character n-grams for one length range."""
    cache = _CHAR_GRAMS.setdefault(lengths, {})
    if len(cache) >= _WORD_ENTRIES:
        cache.clear()
    return cache


def _char_grams(word: str, lengths: tuple[int, int]) -> list[str]:
    """Character n-grams of ``word`` padded with a space on each side, each marked with
    "\\x00c", which never occurs in a word n-gram: no shared hash by design."""
    padded = f" {word} "
    low, high = lengths
    return [
        "\x00c" + padded[start : start + n]
        for n in range(low, high + 1)
        for start in range(len(padded) - n + 1)
    ]


PIPELINE_N_FEATURES = 2**15
PIPELINE_CHAR_NGRAMS = (1, 4)
"""The pipeline's default features (flows `train`, `select_models`, `end_to_end`; both are
flow parameters): word 1-2-grams and character 1-4-grams in 2**15 buckets, a common
hashed n-gram featurization. It is not tuned per dataset; among the variants compared on
youtube-spam's gold dev rows it scored best."""


def pipeline_featurizer(
    n_features: int = PIPELINE_N_FEATURES,
    char_ngrams: Sequence[int] | None = PIPELINE_CHAR_NGRAMS,
) -> HashingFeaturizer:
    """The featurizer the flows build from their parameters: word 1-2-grams, plus
    character n-grams of lengths ``char_ngrams`` = [min, max] (empty or None: words only)."""
    return HashingFeaturizer(
        n_features=n_features,
        char_ngram_range=_length_range("char_ngrams", char_ngrams) if char_ngrams else None,
    )


def _length_range(name: str, value: Any, *, optional: bool = False) -> tuple[int, int]:
    """``value`` as a ``(min_n, max_n)`` tuple of ints with ``1 <= min_n <= max_n``;
    the error names the field and the value."""
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if (
        len(pair) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in pair)
        or not 1 <= pair[0] <= pair[1]
    ):
        none = "None or " if optional else ""
        raise ValueError(
            f"{name} must be {none}(min_n, max_n) with 1 <= min_n <= max_n, got {value!r}"
        )
    return (pair[0], pair[1])


_T = TypeVar("_T")


def _from_settings(cls: type[_T], config: dict[str, Any]) -> _T:
    """``cls(**config)`` for a dataclass, refusing keys it has no field for."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(known)}")
    return cls(**config)


def _check_classifier_args(
    n_features: int, hidden: Sequence[int], dropout: float, n_classes: int
) -> list[int]:
    """The hidden sizes as a list, after checking every argument of a text classifier."""
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ValueError(f"n_features must be a positive int, got {n_features!r}")
    sizes = list(hidden)
    for position, size in enumerate(sizes):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"hidden[{position}] must be a positive int, got {size!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    return sizes


def text_classifier_layers(hidden: Sequence[int], dropout: float = 0.0) -> int:
    """How many layers ``build_text_classifier(n, hidden, dropout)`` stacks: Linear and
    ReLU (and Dropout when ``dropout`` > 0) per hidden layer, then the output Linear."""
    return len(hidden) * (3 if dropout > 0 else 2) + 1


def build_text_classifier(
    n_features: int,
    hidden: Sequence[int] = (64,),
    dropout: float = 0.0,
    n_classes: int = 2,
) -> nn.Sequential:
    """A flat MLP from ``n_features`` inputs to ``n_classes`` logits (no softmax).

    Layers are ``[Linear, ReLU, (Dropout)] * len(hidden) + [Linear]`` directly in one
    ``nn.Sequential``, never nested, so a pipeline trainer can cut it between any layers.
    ``hidden=()`` gives a linear (logistic regression) model. Dropout layers are left out
    when ``dropout`` is 0.

    Raises:
        ValueError: a size is not a positive int, ``dropout`` is outside [0, 1) or
            ``n_classes`` is below 2.
    """
    sizes = _check_classifier_args(n_features, hidden, dropout, n_classes)
    layers: list[nn.Module] = []
    width = n_features
    for size in sizes:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(float(dropout)))
        width = size
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class TextClassifierSpec:
    """The arguments of ``build_text_classifier``: enough, with a ``state_dict``, to rebuild a
    trained classifier without pickling any class.

    ``from_model`` reads the spec back off a built (and possibly trained) network.
    """

    n_features: int
    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0
    n_classes: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        _check_classifier_args(self.n_features, self.hidden, self.dropout, self.n_classes)

    def build(self) -> nn.Sequential:
        """A freshly initialized network of this shape."""
        return build_text_classifier(self.n_features, self.hidden, self.dropout, self.n_classes)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values."""
        config = asdict(self)
        config["hidden"] = list(self.hidden)
        return config

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TextClassifierSpec:
        """The spec saved by ``to_dict``; unknown keys are an error, not ignored."""
        return _from_settings(cls, config)

    @classmethod
    def from_model(cls, model: nn.Sequential) -> TextClassifierSpec:
        """The spec of ``model``, which must have the layout ``build_text_classifier`` makes.

        Raises:
            ValueError: the layout differs; the message names the first layer that does not fit.
        """
        layers = list(model)
        linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        dropouts = {layer.p for layer in layers if isinstance(layer, nn.Dropout)}
        if not linears or len(dropouts) > 1:
            raise ValueError(
                f"model is not a text classifier: {len(linears)} Linear layer(s) and dropout "
                f"rates {sorted(dropouts)}; expected Linear layers and at most one dropout rate"
            )
        spec = cls(
            n_features=linears[0].in_features,
            hidden=tuple(layer.out_features for layer in linears[:-1]),
            dropout=dropouts.pop() if dropouts else 0.0,
            n_classes=linears[-1].out_features,
        )
        expected = list(spec.build())
        for position, (got, want) in enumerate(zip(layers, expected, strict=False)):
            if repr(got) != repr(want):
                raise ValueError(
                    f"model layer {position} is {got!r}, but a text classifier with "
                    f"{spec} has {want!r} there"
                )
        if len(layers) != len(expected):
            raise ValueError(
                f"model has {len(layers)} layers, but a text classifier with {spec} "
                f"has {len(expected)}"
            )
        return spec


def _check_labels(labels: Iterable[object], n_classes: int) -> np.ndarray:
    """Labels as int64; each must be an integer (integral floats pass) in [0, n_classes)."""
    out: list[int] = []
    for position, label in enumerate(labels):
        if _is_missing(label):
            raise ValueError(f"label in row {position} is missing ({label!r})")
        if (
            not isinstance(label, int | np.integer | float | np.floating)
            or not float(label).is_integer()
        ):
            raise ValueError(f"label in row {position} must be an integer, got {label!r}")
        value = int(label)
        if not 0 <= value < n_classes:
            raise ValueError(f"label in row {position} is {value}, outside [0, {n_classes})")
        out.append(value)
    return np.asarray(out, dtype=np.int64)


def _check_weights(weights: Iterable[object]) -> np.ndarray:
    """Weights as float32; each must be a positive, finite number."""
    out: list[float] = []
    for position, weight in enumerate(weights):
        value = (
            float(weight)
            if isinstance(weight, int | float | np.integer | np.floating)
            else math.nan
        )
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"weight in row {position} must be a positive finite number, got {weight!r}"
            )
        out.append(value)
    return np.asarray(out, dtype=np.float32)


class TextDataset(Dataset[TextItem]):
    """Labeled texts, featurized once up front, as ``(x, y, weight)`` items for ``fit``.

    Usage::

        data = TextDataset(["win a prize", "nice song"], [1, 0], HashingFeaturizer())
        x, y, w = data[0]  # float32 [n_features], int64 scalar, float32 scalar

    Features are kept as sparse rows and made dense one item at a time, so a large corpus
    costs memory in proportion to its words, not to ``rows * n_features``.

    Args:
        texts: the texts; a missing one is an error.
        labels: one class index per text, in ``[0, n_classes)``.
        featurizer: turns the texts into feature vectors.
        weights: one positive sample weight per text (e.g. weak-label quality); all 1.0 if
            omitted.
        n_classes: the number of classes the labels index.

    Raises:
        ValueError: lengths differ, or a text, label or weight is missing or out of range;
            the message names its position and value.
    """

    def __init__(
        self,
        texts: Iterable[str],
        labels: Iterable[object],
        featurizer: HashingFeaturizer,
        weights: Iterable[object] | None = None,
        n_classes: int = 2,
    ) -> None:
        text_list = _check_texts(texts)
        self.labels = torch.from_numpy(_check_labels(labels, n_classes))
        self.weights = (
            torch.ones(len(text_list), dtype=torch.float32)
            if weights is None
            else torch.from_numpy(_check_weights(weights))
        )
        if not len(text_list) == len(self.labels) == len(self.weights):
            raise ValueError(
                f"texts, labels and weights must have the same length, got {len(text_list)}, "
                f"{len(self.labels)} and {len(self.weights)}"
            )
        self.featurizer = featurizer
        self._rows = featurizer._hash_rows(text_list)

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        featurizer: HashingFeaturizer,
        text_column: str = "text",
        label_column: str = "label",
        weight_column: str | None = "weight",
        n_classes: int = 2,
    ) -> TextDataset:
        """The dataset of ``df``'s rows; ``weight_column=None`` weighs every row 1.0.

        Raises:
            ValueError: a named column is absent (the message lists the frame's columns), or
                as for the constructor, positions counted from the frame's first row.
        """
        wanted = [text_column, label_column] + ([] if weight_column is None else [weight_column])
        absent = [column for column in wanted if column not in df.columns]
        if absent:
            hint = (
                " (pass weight_column=None for unweighted rows)" if weight_column in absent else ""
            )
            raise ValueError(
                f"column(s) {absent} not in the frame, which has {list(df.columns)}{hint}"
            )
        return cls(
            df[text_column].tolist(),
            df[label_column].tolist(),
            featurizer,
            weights=None if weight_column is None else df[weight_column].tolist(),
            n_classes=n_classes,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> TextItem:
        start, stop = self._rows.indptr[index], self._rows.indptr[index + 1]
        x = torch.zeros(self.featurizer.n_features, dtype=torch.float32)
        x[torch.from_numpy(self._rows.indices[start:stop])] = torch.from_numpy(
            self._rows.values[start:stop]
        )
        return x, self.labels[index], self.weights[index]


def predict_texts(
    model: nn.Module,
    featurizer: HashingFeaturizer,
    texts: Iterable[str],
    chunk_rows: int = PREDICT_CHUNK_ROWS,
    *,
    class_names: Sequence[str] | None = None,
    threshold: float | None = None,
    positive: int = 1,
) -> pd.DataFrame:
    """Class predictions for raw ``texts``, one row each, in input order.

    Columns as :func:`probabilities_frame` makes them: ``label``, ``probability`` and one
    ``proba_*`` column per class (float64, softmax of the logits); ``class_names``,
    ``threshold`` and ``positive`` are passed on to it. The model runs in eval mode without
    autograd, ``chunk_rows`` texts at a time, and is put back in the mode it was in.

    Raises:
        ValueError: a text is missing (the message names its row), or the class names or
            the threshold do not fit the model's classes.
    """
    return probabilities_frame(
        predict_proba(model, featurizer, texts, chunk_rows),
        class_names,
        threshold=threshold,
        positive=positive,
    )


def predict_proba(
    model: nn.Module,
    featurizer: HashingFeaturizer,
    texts: Iterable[str],
    chunk_rows: int = PREDICT_CHUNK_ROWS,
) -> np.ndarray:
    """The class probabilities (float64, n x k, softmax of the logits) that
    :func:`predict_texts` decides on, for callers that need no frame.

    Raises:
        ValueError: a text is missing (the message names its row), or ``chunk_rows`` is
            not a positive int.
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    checked = _check_texts(texts)
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            # At least one (possibly empty) chunk, so no input still yields k proba columns.
            sparse = _SparseInput.of(model, featurizer.n_features)
            for start in range(0, max(len(checked), 1), chunk_rows):
                rows = featurizer._hash_rows(checked[start : start + chunk_rows])
                logits = sparse(rows) if sparse else model(rows.dense(featurizer.n_features))
                chunks.append(torch.softmax(logits, dim=1))
    finally:
        model.train(was_training)
    proba: np.ndarray = torch.cat(chunks).double().numpy()
    return proba


@dataclass(frozen=True)
class _SparseInput:
    """A model whose first layer is a Linear over the hashed features, run on sparse rows:
    that layer becomes an embedding bag (each row sums the weight columns of its buckets,
    scaled by their values), so no dense ``rows x n_features`` matrix is ever made; the
    other layers run as they are. Same result as ``model(rows.dense(n))`` up to float32
    rounding, and far faster when rows hold a few hundred of 2**15 features."""

    weight_t: torch.Tensor
    bias: torch.Tensor | None
    rest: nn.Module

    @classmethod
    def of(cls, model: nn.Module, n_features: int) -> _SparseInput | None:
        """The sparse form of ``model``, or None when its first layer is not a Linear
        over ``n_features`` inputs (then the caller runs it on dense rows)."""
        if not isinstance(model, nn.Sequential) or len(model) == 0:
            return None
        first = model[0]
        if not isinstance(first, nn.Linear) or first.in_features != n_features:
            return None
        return cls(_transposed(first), first.bias, model[1:])

    def __call__(self, rows: _Csr) -> torch.Tensor:
        hidden = nn.functional.embedding_bag(
            torch.from_numpy(rows.indices),
            self.weight_t,
            torch.from_numpy(rows.indptr[:-1]),
            mode="sum",
            per_sample_weights=torch.from_numpy(rows.values),
        )
        if self.bias is not None:
            hidden = hidden + self.bias
        out: torch.Tensor = self.rest(hidden)
        return out


_TRANSPOSED: weakref.WeakKeyDictionary[nn.Linear, tuple[torch.Tensor, int, torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def _transposed(layer: nn.Linear) -> torch.Tensor:
    """The layer's weights as (n_features, out) rows, one per bucket, as embedding_bag
    wants them: copied once per version of the weights (torch counts each in-place change,
    so a model still training gets a fresh copy after every step; a served one reuses its
    copy)."""
    weight = layer.weight
    cached = _TRANSPOSED.get(layer)
    if cached is not None and cached[0] is weight and cached[1] == weight._version:
        return cached[2]
    rows = weight.detach().t().contiguous()
    _TRANSPOSED[layer] = (weight, weight._version, rows)
    return rows


def score_texts(
    model: nn.Module, featurizer: HashingFeaturizer, texts: Iterable[str], labels: Iterable[int]
) -> tuple[dict[str, float], np.ndarray]:
    """How well ``model`` classifies labeled ``texts``: ``classification_metrics``
    (accuracy, F1, log loss, rows) and the class probabilities (n x k) it gave."""
    from mlsys.training.evaluate import classification_metrics

    scored = predict_texts(model, featurizer, texts)
    proba = scored[[c for c in scored.columns if c.startswith("proba_")]].to_numpy()
    y = np.asarray(list(labels), dtype=np.int64)
    return classification_metrics(y, proba), proba


_SUFFIX_RE = re.compile(r"[A-Za-z0-9_]+")


def _column_suffix(name: str, index: int) -> str:
    """``name`` as a column suffix: kept when it is ASCII letters, digits and ``_``;
    otherwise accents dropped, every other run of characters made one ``_`` and ``_``
    stripped from the ends (``"très bien!"`` -> ``tres_bien``); the class index when
    nothing is left."""
    if _SUFFIX_RE.fullmatch(name):
        return name
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9_]+", "_", plain).strip("_") or str(index)


def proba_columns(class_names: Sequence[str]) -> list[str]:
    """The probability column of each class: ``proba_<name>``, the name made a safe
    column suffix (``"not spam"`` -> ``proba_not_spam``; see ``_column_suffix``).

    Raises:
        ValueError: there are fewer than two names, a name repeats, or two names make the
            same column (the message names them).
        TypeError: a name is not a string.
    """
    if isinstance(class_names, str):
        raise TypeError(f"class_names must be a sequence of strings, got the str {class_names!r}")
    names = list(class_names)
    for position, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(
                f"class name {position} must be a str, got {type(name).__name__} {name!r}"
            )
    if len(names) < 2:
        raise ValueError(f"class_names needs at least 2 names, got {names}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"class names repeat {repeated}: {names}")
    columns = [f"proba_{_column_suffix(name, i)}" for i, name in enumerate(names)]
    sharing: dict[str, list[str]] = {}
    for name, column in zip(names, columns, strict=True):
        sharing.setdefault(column, []).append(name)
    clashes = {column: found for column, found in sharing.items() if len(found) > 1}
    if clashes:
        described = "; ".join(f"{found} all make {column!r}" for column, found in clashes.items())
        raise ValueError(f"class names collide as column names: {described}; rename a class")
    return columns


def check_threshold(threshold: float | None, n_classes: int, positive: int = 1) -> None:
    """Check a decision threshold: None (argmax), or a number in [0, 1] for a binary model
    whose ``positive`` class (0 or 1) is predicted when its probability reaches it.

    Raises:
        ValueError: naming the value that does not fit.
    """
    if isinstance(positive, bool) or not isinstance(positive, int | np.integer):
        raise ValueError(f"positive must be a class index, got {positive!r}")
    if not 0 <= positive < n_classes:
        raise ValueError(f"positive is {positive}, outside the class indices [0, {n_classes})")
    if threshold is None:
        return
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float | np.integer | np.floating)
        or not 0.0 <= float(threshold) <= 1.0
    ):
        raise ValueError(f"threshold must be a number in [0, 1] or None, got {threshold!r}")
    if n_classes != 2:
        raise ValueError(
            f"a threshold is for binary models; this one has {n_classes} classes "
            f"(leave threshold None to predict the most probable class)"
        )


def probabilities_frame(
    proba: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    threshold: float | None = None,
    positive: int = 1,
) -> pd.DataFrame:
    """One row per row of class probabilities ``proba`` (n x k).

    Columns: ``label``, the predicted class; ``probability`` (float64), the predicted
    class's probability; then one float64 column per class, ``proba_<class name>``
    (:func:`proba_columns`), or ``proba_0`` ... ``proba_{k-1}`` without ``class_names``.
    ``label`` is the class name (pandas' string dtype) with ``class_names``, else the class
    index (int64).
    The predicted class is the most probable one; with a ``threshold`` (binary only), it
    is ``positive`` when that class's probability is at least the threshold, else the
    other class.

    Raises:
        ValueError: ``class_names`` are not k usable names, or the threshold does not fit
            (see :func:`check_threshold`).
    """
    labels, probability, columns = _decide(proba, class_names, threshold, positive)
    if class_names is None:
        label: np.ndarray | pd.Series[Any] = labels
    else:
        # pandas' default string dtype, also when there are no rows.
        label = pd.Series(np.asarray(list(class_names), dtype=object)[labels], dtype=str)
    data: dict[str, np.ndarray | pd.Series[Any]] = {"label": label, "probability": probability}
    data.update((column, proba[:, i]) for i, column in enumerate(columns))
    return pd.DataFrame(data)


def probabilities_records(
    proba: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    threshold: float | None = None,
    positive: int = 1,
    columns: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of :func:`probabilities_frame` as dicts of plain Python values (``label``
    a str, or an int without class names; floats), equal to what the frame's columns'
    ``tolist()`` give, without building the frame (a model server answers with these).
    ``columns``: names for the frame's columns in order, instead of its own.

    Raises:
        ValueError: as :func:`probabilities_frame`, or ``columns`` not one per column.
    """
    labels, probability, names = _decide(proba, class_names, threshold, positive)
    label: list[Any] = (
        labels.tolist() if class_names is None else [list(class_names)[i] for i in labels.tolist()]
    )
    keys = ["label", "probability", *names]
    if columns is not None:
        if len(columns) != len(keys):
            raise ValueError(f"{len(columns)} column names {list(columns)} for {len(keys)} columns")
        keys = list(columns)
    values = [label, probability.tolist(), *(proba[:, i].tolist() for i in range(len(names)))]
    return [dict(zip(keys, row, strict=True)) for row in zip(*values, strict=True)]


def _decide(
    proba: np.ndarray,
    class_names: Sequence[str] | None,
    threshold: float | None,
    positive: int,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each row's predicted class index (int64) and its probability, and the probability
    columns' names (see :func:`probabilities_frame`)."""
    k = proba.shape[1]
    check_threshold(threshold, k, positive)
    # The rule of mlsys.training.evaluate.decide, written here because a logged model
    # carries only the mlsys.models sources (see pyfunc._stage_code).
    if threshold is None:
        labels = proba.argmax(axis=1).astype(np.int64)
    else:
        labels = np.where(proba[:, positive] >= threshold, positive, 1 - positive).astype(np.int64)
    probability = proba[np.arange(len(labels)), labels]
    if class_names is None:
        return labels, probability, [f"proba_{i}" for i in range(k)]
    columns = proba_columns(class_names)
    if len(columns) != k:
        raise ValueError(
            f"{len(columns)} class names {list(class_names)} for a model of {k} classes"
        )
    return labels, probability, columns
