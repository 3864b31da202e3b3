"""Combine labeling-function votes into one label per row: majority vote, a weighted vote
with LF accuracies estimated on gold dev rows, or Snorkel's LabelModel, chosen on the dev
rows by the dataset's metric with repeated stratified cross-validation.

Why one module: the labelers, their fitting and their choosing share private vote arithmetic
(weighted counts, posteriors, tie-breaking, thresholds) that nothing else should call;
split, those helpers would become an API of their own. Sections: checks, vote arithmetic,
`Labeler`, the Snorkel fit, choosing, the output frame.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from snorkel.labeling.model import LabelModel

from mlsys.training.evaluate import (
    check_metric,
    cross_validate,
    decide,
    metric_score,
    stratified_splits,
    tune_threshold,
)

__all__ = [
    "ABSTAIN",
    "LabelModelConfig",
    "Labeler",
    "Progress",
    "TuningResult",
    "check_gold",
    "check_label_matrix",
    "class_prior",
    "default_grid",
    "fit_label_model",
    "fit_labeler",
    "majority_vote",
    "weak_label_frame",
]

ABSTAIN = -1
"""An LF's vote when it does not label a row, and the label of a row no LF labels."""

Kind = Literal["label_model", "majority_vote", "weighted_vote"]
LabelMatrix = np.ndarray  # (n rows, m LFs) of ints in [-1, k-1]
Progress = Callable[[str], None]
"""Receives one line per step of a long fit ("label model 3/8: ..."), e.g. to print it."""

# Snorkel's probs_to_preds treats probabilities closer than this as tied.
_TIE_TOL = 1e-5
MIN_LFS = 3
_KIND_ORDER = {"majority_vote": 0, "weighted_vote": 1, "label_model": 2}

CV_FOLDS = 5
CV_REPEATS = 3
"""Cross-validation over the gold dev rows: at most ``CV_FOLDS`` stratified folds (fewer
when dev is small), repeated ``CV_REPEATS`` times with different shuffles."""


@dataclass(frozen=True)
class LabelModelConfig:
    """One way of turning a label matrix into labels, as tried in tuning.

    - ``kind="majority_vote"``: each row's vote shares; no field applies.
    - ``kind="weighted_vote"``: each LF's vote counts ``log(acc (k-1) / (1 - acc))``, the
      optimal weight when LF errors are independent and spread evenly over the wrong classes
      (the "one-coin" model); ``acc`` is the LF's accuracy on the gold dev rows, smoothed
      toward the pooled accuracy of all LFs there with ``smoothing`` pseudo-votes, so an LF
      with few or no dev votes gets (close to) the pooled accuracy instead of 0 or 1.
    - ``kind="label_model"``: Snorkel's ``LabelModel`` fitted on the train rows only; the
      fields ``n_epochs``, ``lr``, ``l2``, ``class_balance`` and ``seed`` are its ``fit``
      arguments (``class_balance=None`` is Snorkel's uniform prior, a tuple is one
      probability per class).

    ``dev_prior=True`` (weighted vote and label model) multiplies each covered row's class
    likelihoods by the class prior estimated on the dev rows instead of the uniform (or
    fitted) prior. Whatever the config, a row no LF voted on gets the dev class prior.
    """

    kind: Kind
    n_epochs: int = 500
    lr: float = 0.01
    l2: float = 0.0
    class_balance: tuple[float, ...] | None = None
    seed: int = 123
    dev_prior: bool = False
    smoothing: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in _KIND_ORDER:
            raise ValueError(
                f"kind must be one of {', '.join(map(repr, _KIND_ORDER))}, got {self.kind!r}"
            )
        if self.n_epochs < 1:
            raise ValueError(f"n_epochs must be at least 1, got {self.n_epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be non-negative, got {self.l2}")
        if not self.smoothing > 0:
            raise ValueError(f"smoothing must be positive (pseudo-votes), got {self.smoothing}")
        if self.class_balance is not None:
            balance = tuple(float(p) for p in self.class_balance)
            object.__setattr__(self, "class_balance", balance)
            if any(not p > 0 for p in balance) or abs(sum(balance) - 1.0) > 1e-6:
                raise ValueError(
                    f"class_balance must be positive and sum to 1, got {balance} "
                    f"(sum {sum(balance):.6g})"
                )
        if self.kind == "majority_vote" and self.dev_prior:
            raise ValueError(
                "dev_prior applies to weighted_vote and label_model, not majority_vote"
            )

    def as_row(self) -> dict[str, Any]:
        """The config as a flat dict for a trials table (fields that do not apply blank)."""
        row = asdict(self)
        if self.kind != "label_model":
            row.update(n_epochs=None, lr=None, l2=None, class_balance=None, seed=None)
        elif self.class_balance is not None:
            row["class_balance"] = [round(p, 6) for p in self.class_balance]
        if self.kind != "weighted_vote":
            row["smoothing"] = None
        if self.kind == "majority_vote":
            row["dev_prior"] = None
        return row

    def describe(self) -> str:
        """A short human-readable name, e.g. for progress lines and reports."""
        if self.kind == "majority_vote":
            return "majority vote"
        prior = ", dev prior" if self.dev_prior else ""
        if self.kind == "weighted_vote":
            return f"weighted vote (smoothing {self.smoothing:g}{prior})"
        balance = "uniform" if self.class_balance is None else "given balance"
        return (
            f"LabelModel ({self.n_epochs} epochs, lr {self.lr:g}, l2 {self.l2:g}, "
            f"fit prior {balance}{prior})"
        )


# --- validation ----------------------------------------------------------------------------


def check_label_matrix(
    L: np.ndarray, cardinality: int = 2, *, name: str = "L", min_lfs: int = MIN_LFS
) -> np.ndarray:
    """Return ``L`` as an int64 matrix, or raise ValueError naming what is wrong with it.

    ``L`` must be 2-D with at least one row and ``min_lfs`` columns, hold whole numbers, and
    every value must lie in ``[-1, cardinality - 1]``.
    """
    _check_cardinality(cardinality)
    array = np.asarray(L)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must be a 2-D label matrix with at least one row and one column; "
            f"got shape {array.shape}"
        )
    if array.shape[1] < min_lfs:
        raise ValueError(
            f"{name} has {array.shape[1]} labeling function(s) (columns); at least {min_lfs} "
            "are needed"
        )
    if array.dtype.kind == "f":
        not_whole = ~np.isfinite(array) | (np.round(array) != array)
        if not_whole.any():
            row, col = (int(i) for i in np.argwhere(not_whole)[0])
            raise ValueError(
                f"{name}[{row}, {col}] = {array[row, col].item()!r} is not a whole number"
            )
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    out_of_range = (array < ABSTAIN) | (array > cardinality - 1)
    if out_of_range.any():
        row, col = (int(i) for i in np.argwhere(out_of_range)[0])
        raise ValueError(
            f"{name}[{row}, {col}] = {array[row, col].item()} is outside [{ABSTAIN}, "
            f"{cardinality - 1}] (cardinality {cardinality}); "
            f"{int(out_of_range.sum())} value(s) out of range"
        )
    return array.astype(np.int64)


def check_gold(y: np.ndarray, cardinality: int = 2, *, rows: int, name: str = "y") -> np.ndarray:
    """Return gold labels ``y`` as int64, checking there are ``rows`` of them in ``[0, k-1]``."""
    array = np.asarray(y)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if len(array) != rows:
        raise ValueError(f"{name} has {len(array)} label(s) but the label matrix has {rows} rows")
    if array.dtype.kind == "f" and (~np.isfinite(array) | (np.round(array) != array)).any():
        position = int(np.argwhere(~np.isfinite(array) | (np.round(array) != array))[0, 0])
        raise ValueError(f"{name}[{position}] = {array[position].item()!r} is not a whole number")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    bad = (array < 0) | (array > cardinality - 1)
    if bad.any():
        position = int(np.argwhere(bad)[0, 0])
        raise ValueError(
            f"{name}[{position}] = {array[position].item()} is outside [0, {cardinality - 1}] "
            f"(cardinality {cardinality}); {int(bad.sum())} bad label(s)"
        )
    return array.astype(np.int64)


def _check_cardinality(cardinality: int) -> None:
    if cardinality < 2:
        raise ValueError(f"cardinality must be at least 2, got {cardinality}")


# --- votes, priors, weights ----------------------------------------------------------------


def _vote_index(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-abstain votes of ``matrix``: their row, their LF and ``row * k + class``."""
    rows, lfs = np.nonzero(matrix != ABSTAIN)
    return rows, lfs, rows * k + matrix[rows, lfs]


def _weighted_counts(matrix: np.ndarray, k: int, lf_weights: np.ndarray | None) -> np.ndarray:
    """(n, k): per row and class, the summed weights of the LFs voting that class (plain
    counts without weights)."""
    _, lfs, cells = _vote_index(matrix, k)
    weights = None if lf_weights is None else lf_weights[lfs]
    n = matrix.shape[0]
    return np.bincount(cells, weights=weights, minlength=n * k).reshape(n, k).astype(np.float64)


def _log_likelihoods(matrix: np.ndarray, k: int, log_mu: np.ndarray) -> np.ndarray:
    """(n, k): per row, ``sum_j log P(lambda_j = L_ij | y)`` over the LFs that voted, from
    a LabelModel's ``mu`` (row ``j*k + c`` = P(LF j votes c | y)), abstains left out as
    Snorkel's ``predict_proba`` does."""
    rows, lfs, _ = _vote_index(matrix, k)
    table = log_mu[lfs * k + matrix[rows, lfs]]
    n = matrix.shape[0]
    return np.stack([np.bincount(rows, weights=table[:, c], minlength=n) for c in range(k)], axis=1)


def class_prior(y: np.ndarray, cardinality: int) -> np.ndarray:
    """The class prior of gold labels ``y`` with add-one smoothing, ``(count + 1) / (n + k)``,
    so that a class absent from a small dev set keeps a non-zero probability."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=cardinality)[:cardinality]
    prior: np.ndarray = (counts + 1.0) / (counts.sum() + cardinality)
    return prior


def _lf_weights(
    matrix: np.ndarray, y: np.ndarray, k: int, smoothing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each LF's smoothed dev accuracy and its one-coin vote weight (see LabelModelConfig).

    The pooled accuracy of all dev votes, itself add-one smoothed, is the prior mean; an LF
    with ``n`` dev votes of which ``c`` are right gets ``(c + s * pooled) / (n + s)``.
    """
    votes = matrix != ABSTAIN
    right = votes & (matrix == y[:, None])
    n_votes = votes.sum(axis=0).astype(np.float64)
    n_right = right.sum(axis=0).astype(np.float64)
    pooled = (n_right.sum() + 1.0) / (n_votes.sum() + 2.0)
    accuracy = (n_right + smoothing * pooled) / (n_votes + smoothing)
    return accuracy, np.log(accuracy * (k - 1) / (1.0 - accuracy))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return out


def _posterior(
    config: LabelModelConfig,
    evidence: np.ndarray,
    covered: np.ndarray,
    prior: np.ndarray,
    fit_prior: np.ndarray | None,
) -> np.ndarray:
    """Class probabilities from a row's evidence (vote counts for majority vote, weighted
    counts or log-likelihoods otherwise); rows no LF voted on get ``prior``."""
    if config.kind == "majority_vote":
        totals = evidence.sum(axis=1, keepdims=True)
        proba: np.ndarray = evidence / np.maximum(totals, 1e-300)
    else:
        base = prior if config.dev_prior else fit_prior
        logits = evidence if base is None else evidence + np.log(base)
        proba = _softmax(logits)
    proba[~covered] = prior
    return proba


# --- majority vote and predictions ---------------------------------------------------------


def majority_vote(L: np.ndarray, cardinality: int = 2) -> np.ndarray:
    """Per-row vote shares, shape (n, k): votes for each class over the row's votes.

    A row no LF votes on gets the uniform distribution. The argmax (and its ties) equals
    Snorkel's ``MajorityLabelVoter``, which puts all mass on the winning class instead.
    """
    matrix = check_label_matrix(L, cardinality, min_lfs=1)
    covered = (matrix != ABSTAIN).any(axis=1)
    uniform = np.full(cardinality, 1.0 / cardinality)
    config = LabelModelConfig("majority_vote")
    return _posterior(config, _weighted_counts(matrix, cardinality, None), covered, uniform, None)


def _hash(i: int) -> int:
    # Snorkel's deterministic row hash (snorkel.utils.core._hash), so ties break as in its
    # tutorials.
    return int(hashlib.sha1(str(i).encode("utf-8")).hexdigest(), 16)


def _argmax_random_ties(proba: np.ndarray) -> np.ndarray:
    """Snorkel's ``probs_to_preds(..., tie_break_policy="random")``, vectorised.

    Classes within 1e-5 of the row maximum tie; row ``i`` then gets tied class number
    ``sha1(str(i)) % ties``. The choice depends on the row's position, so it is fixed for a
    given matrix (no RNG state) but can differ for the same row in another batch.
    """
    tied = np.abs(proba - proba.max(axis=1, keepdims=True)) < _TIE_TOL
    preds: np.ndarray = tied.argmax(axis=1).astype(np.int64)
    counts = tied.sum(axis=1)
    rows = np.flatnonzero(counts > 1)
    if len(rows):
        # The (pick+1)-th tied class of each row: where the running count of ties hits it.
        pick = np.array([_hash(int(i)) % int(c) for i, c in zip(rows, counts[rows], strict=True)])
        running = np.cumsum(tied[rows], axis=1)
        preds[rows] = (tied[rows] & (running == pick[:, None] + 1)).argmax(axis=1)
    return preds


def _decide(proba: np.ndarray, threshold: float | None, positive: int) -> np.ndarray:
    """Classes of ``proba``: ``positive`` where P(positive) >= ``threshold`` when there is a
    threshold, else the argmax with Snorkel's random tie-break."""
    if threshold is None:
        return _argmax_random_ties(proba)
    return decide(proba, positive=positive, threshold=threshold)


def _metrics(
    proba: np.ndarray,
    covered: np.ndarray,
    y: np.ndarray,
    *,
    threshold: float | None = None,
    positive: int = 1,
) -> dict[str, float]:
    k = proba.shape[1]
    guessed = _decide(proba, threshold, positive)
    strict = np.where(covered, guessed, ABSTAIN)
    n_covered = int(covered.sum())

    def score(metric: str, gold: np.ndarray, pred: np.ndarray) -> float:
        return metric_score(metric, gold, pred, k=k, positive=positive) if len(gold) else 0.0

    return {
        "accuracy": score("accuracy", y, guessed),
        "f1": score("f1", y, guessed),
        "macro_f1": score("macro_f1", y, guessed),
        "coverage": n_covered / len(y),
        "accuracy_covered": score("accuracy", y[covered], guessed[covered]),
        "f1_covered": score("f1", y[covered], guessed[covered]),
        "accuracy_abstain_wrong": score("accuracy", y, strict),
        "f1_abstain_wrong": score("f1", y, strict),
    }


# --- the fitted labeler --------------------------------------------------------------------


class Labeler:
    """A fitted way of labeling rows from their LF votes: majority vote, a weighted vote or
    a Snorkel LabelModel, with a class prior for rows no LF voted on and, for two classes,
    an optional decision threshold.

    Usage::

        labeler = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev, metric="f1").best
        proba = labeler.predict_proba(L)     # (n, k); the class prior where no LF voted
        labels = labeler.predict(L)          # ABSTAIN where no LF voted
        labeler.metrics(L_test, y_test)      # accuracy, f1, macro_f1, coverage, ...

    Build one with :func:`fit_label_model` or :func:`fit_labeler`.

    Args:
        config: what kind of labeler, and how it was fitted.
        cardinality: the number of classes k.
        n_lfs: the number of LFs (columns of L) it expects.
        model: the fitted Snorkel LabelModel (``kind="label_model"`` only).
        prior: the class prior (k probabilities) given to rows no LF voted on and, with
            ``config.dev_prior``, multiplied into covered rows; uniform when omitted.
        lf_weights: one vote weight per LF (``kind="weighted_vote"`` only).
        threshold: for two classes, predict ``positive`` where P(positive) >= threshold
            instead of taking the argmax; None for the argmax.
        positive: the class a threshold and the binary F1 are about.
    """

    def __init__(
        self,
        config: LabelModelConfig,
        cardinality: int,
        n_lfs: int,
        model: LabelModel | None = None,
        *,
        prior: np.ndarray | Sequence[float] | None = None,
        lf_weights: np.ndarray | None = None,
        threshold: float | None = None,
        positive: int = 1,
    ) -> None:
        _check_cardinality(cardinality)
        if (config.kind == "label_model") != (model is not None):
            needs = "a fitted LabelModel" if model is None else "model=None"
            raise ValueError(f"a {config.kind} labeler needs {needs}")
        if (config.kind == "weighted_vote") != (lf_weights is not None):
            needs = "lf_weights" if lf_weights is None else "lf_weights=None"
            raise ValueError(f"a {config.kind} labeler needs {needs}")
        if lf_weights is not None and np.shape(lf_weights) != (n_lfs,):
            raise ValueError(
                f"lf_weights has shape {np.shape(lf_weights)} but there are {n_lfs} LFs"
            )
        check_metric("accuracy", k=cardinality, positive=positive)
        if prior is None:
            prior = np.full(cardinality, 1.0 / cardinality)
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != (cardinality,) or (prior <= 0).any() or abs(prior.sum() - 1) > 1e-6:
            raise ValueError(
                f"prior must be {cardinality} positive probabilities summing to 1, got "
                f"{prior.tolist()}"
            )
        if threshold is not None:
            if cardinality != 2:
                raise ValueError(f"a decision threshold needs two classes, got k = {cardinality}")
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        self._config = config
        self._cardinality = cardinality
        self._n_lfs = n_lfs
        self._model = model
        self._prior = prior
        self._lf_weights = None if lf_weights is None else np.asarray(lf_weights, np.float64)
        self._threshold = None if threshold is None else float(threshold)
        self._positive = int(positive)
        self._log_mu: np.ndarray | None = None
        self._fit_prior: np.ndarray | None = None
        if model is not None:
            mu = model.mu.detach().cpu().numpy().astype(np.float64)
            self._log_mu = np.log(np.clip(mu, 1e-300, None))
            self._fit_prior = np.asarray(model.p, dtype=np.float64)

    @property
    def config(self) -> LabelModelConfig:
        """The configuration this labeler was fitted with."""
        return self._config

    @property
    def cardinality(self) -> int:
        """Number of classes k."""
        return self._cardinality

    @property
    def n_lfs(self) -> int:
        """Number of labeling functions (columns of L) it expects."""
        return self._n_lfs

    @property
    def model(self) -> LabelModel | None:
        """The underlying Snorkel LabelModel, or None for majority and weighted vote."""
        return self._model

    @property
    def prior(self) -> np.ndarray:
        """The class prior of rows no LF voted on (a copy)."""
        return self._prior.copy()

    @property
    def lf_weights(self) -> np.ndarray | None:
        """The weighted vote's weight of each LF (a copy), None for other kinds."""
        return None if self._lf_weights is None else self._lf_weights.copy()

    @property
    def threshold(self) -> float | None:
        """The decision threshold on P(positive) (two classes), or None for the argmax."""
        return self._threshold

    @property
    def positive(self) -> int:
        """The class a threshold and the binary F1 are about."""
        return self._positive

    def with_threshold(self, threshold: float | None) -> Labeler:
        """The same labeler deciding by ``threshold`` (None: by the argmax)."""
        return Labeler(
            self._config,
            self._cardinality,
            self._n_lfs,
            self._model,
            prior=self._prior,
            lf_weights=self._lf_weights,
            threshold=threshold,
            positive=self._positive,
        )

    def __repr__(self) -> str:
        extra = "" if self._threshold is None else f", threshold={self._threshold:.4g}"
        return (
            f"Labeler({self._config}, cardinality={self._cardinality}, n_lfs={self._n_lfs}{extra})"
        )

    def _check(self, L: np.ndarray) -> np.ndarray:
        matrix = check_label_matrix(L, self._cardinality, min_lfs=1)
        if matrix.shape[1] != self._n_lfs:
            raise ValueError(
                f"L has {matrix.shape[1]} labeling function(s) (columns) but this labeler was "
                f"fitted on {self._n_lfs}"
            )
        return matrix

    def predict_proba(self, L: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, k). Rows no LF voted on get the class prior
        (:attr:`prior`: estimated on the gold dev rows by :func:`fit_labeler`, uniform for
        a labeler fitted without them)."""
        matrix = self._check(L)
        return self._proba(matrix)

    def _evidence(self, matrix: np.ndarray) -> np.ndarray:
        if self._log_mu is not None:
            return _log_likelihoods(matrix, self._cardinality, self._log_mu)
        return _weighted_counts(matrix, self._cardinality, self._lf_weights)

    def _proba(self, matrix: np.ndarray) -> np.ndarray:
        covered = (matrix != ABSTAIN).any(axis=1)
        return _posterior(
            self._config, self._evidence(matrix), covered, self._prior, self._fit_prior
        )

    def _decide(self, proba: np.ndarray) -> np.ndarray:
        return _decide(proba, self._threshold, self._positive)

    def predict(
        self, L: np.ndarray, *, tie_break: Literal["random", "abstain"] = "random"
    ) -> np.ndarray:
        """Labels, shape (n,): ABSTAIN for every row no LF voted on, never a guess (the
        pipeline merges such a row without a label; :meth:`predict_proba` still gives it
        the class prior).

        With a :attr:`threshold` a covered row is ``positive`` where P(positive) >=
        threshold, else the other class. Otherwise it is the most probable class; top
        classes that tie go to one of them chosen by Snorkel's deterministic row hash
        (``tie_break="random"``) or to ABSTAIN (``"abstain"``).
        """
        matrix = self._check(L)
        return self._labels(matrix, self._proba(matrix), tie_break)

    def _labels(
        self,
        matrix: np.ndarray,
        proba: np.ndarray,
        tie_break: Literal["random", "abstain"] = "random",
    ) -> np.ndarray:
        if tie_break not in ("random", "abstain"):
            raise ValueError(f"tie_break must be 'random' or 'abstain', got {tie_break!r}")
        preds = self._decide(proba)
        if tie_break == "abstain" and self._threshold is None:
            tied = (np.abs(proba - proba.max(axis=1, keepdims=True)) < _TIE_TOL).sum(axis=1) > 1
            preds[tied] = ABSTAIN
        preds[(matrix == ABSTAIN).all(axis=1)] = ABSTAIN
        return preds

    def metrics(self, L: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Scores against gold labels ``y``.

        - ``accuracy``, ``f1``, ``macro_f1``: every row, decided as :meth:`predict` does
          but with rows no LF voted on given their most probable class under the prior.
          Without a threshold, ties (also a uniform prior's) are broken by Snorkel's
          deterministic hash: ``LabelModel.score(L, y, tie_break_policy="random")``, the
          convention of the Snorkel tutorials and of WRENCH's majority vote.
        - ``coverage``: fraction of rows at least one LF voted on.
        - ``accuracy_covered``, ``f1_covered``: covered rows only.
        - ``accuracy_abstain_wrong``, ``f1_abstain_wrong``: every row, uncovered rows
          counted as wrong (what :meth:`predict` yields, scored strictly).

        F1 is that of class :attr:`positive` when k = 2 and the macro average over classes
        otherwise.
        """
        matrix = self._check(L)
        gold = check_gold(y, self._cardinality, rows=matrix.shape[0])
        covered = (matrix != ABSTAIN).any(axis=1)
        return _metrics(
            self._proba(matrix),
            covered,
            gold,
            threshold=self._threshold,
            positive=self._positive,
        )


# --- fitting -------------------------------------------------------------------------------


class _BlockMaskedLabelModel(LabelModel):  # type: ignore[misc]
    """Snorkel's LabelModel with the same objective computed without its dense mask.

    Snorkel fits ``mu`` (d = m*k rows) by minimising ``||(O - mu P mu^T)[mask]||^2`` with
    ``O`` the (d, d) matrix of LF vote co-occurrences and ``mask`` everything but each LF's
    own (k, k) block; it forms and indexes the d x d residual every epoch, and its L2 term
    multiplies by a d x d identity. With 164 LFs and 9 classes that is a 1476 x 1476 matrix
    and ~0.06 s per epoch. The same loss, expanded, needs only small products:

        ||R||^2 = ||O||^2 - 2 <O mu, mu P> + ||(mu^T mu) P||^2   (R = O - mu P mu^T)
        loss_1  = ||R||^2 - sum_j ||O_jj - mu_j P mu_j^T||^2    (the masked-out blocks)

    with ``O mu`` a sparse product (an LF pair that never votes together adds nothing) and
    the sums in float64, so cancellation costs no precision. Where the mask is not the
    block diagonal (dependencies between LFs), Snorkel's own loss is used.
    """

    def _loss_mu(self, l2: float = 0) -> torch.Tensor:
        if not hasattr(self, "_fast"):
            self._fast = self._prepare_fast()
        if self._fast is None:
            loss: torch.Tensor = super()._loss_mu(l2=l2)
            return loss
        O_sparse, O_blocks, O_norm2, O_diag = self._fast
        k = self.cardinality
        mu = self.mu.double()
        P = self.P.double()
        muP = mu @ P
        cross = (torch.sparse.mm(O_sparse, mu) * muP).sum()
        gram = mu.t() @ mu @ P
        full = O_norm2 - 2.0 * cross + (gram * gram.t()).sum()
        blocks = mu.reshape(self.m, k, k)
        block_fit = blocks @ P @ blocks.transpose(1, 2)
        masked_out = ((O_blocks - block_fit) ** 2).sum()
        loss_1 = full - masked_out
        loss_2 = ((muP.sum(dim=1) - O_diag) ** 2).sum()
        total = loss_1 + loss_2
        if isinstance(l2, int | float):
            total = total + float(l2) ** 2 * ((mu - self.mu_init.double()) ** 2).sum()
        else:
            total = total + self._loss_l2(l2=l2).double()
        out: torch.Tensor = total.float()
        return out

    def _prepare_fast(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
        k, m, d = self.cardinality, self.m, self.d
        if d != m * k:
            return None
        lf_of = torch.arange(d) // k
        own_block = lf_of[:, None] == lf_of[None, :]
        if not torch.equal(self.mask, ~own_block):
            return None
        co = self.O.double()
        index = torch.arange(d).reshape(m, k)
        blocks_of_o = co[index[:, :, None], index[:, None, :]]
        return co.to_sparse(), blocks_of_o, (co * co).sum(), torch.diag(co)


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    # LabelModel.fit seeds Python's, NumPy's and torch's global generators; put them back so
    # fitting has no side effect on the caller's randomness.
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


@contextmanager
def _one_thread() -> Iterator[None]:
    # A LabelModel epoch is a few small products (d x k, k x k); on more threads each one
    # waits at a barrier, and on a busy machine those waits made fits 10x slower than on
    # one thread, which is as fast on an idle one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit_snorkel(matrix: np.ndarray, config: LabelModelConfig, cardinality: int) -> LabelModel:
    if config.class_balance is not None and len(config.class_balance) != cardinality:
        raise ValueError(
            f"class_balance {config.class_balance} has {len(config.class_balance)} entries "
            f"but cardinality is {cardinality}"
        )
    model = _BlockMaskedLabelModel(cardinality=cardinality, verbose=False)
    balance = list(config.class_balance) if config.class_balance is not None else None
    with _global_rng_preserved(), _one_thread():
        model.fit(
            matrix,
            class_balance=balance,
            n_epochs=config.n_epochs,
            lr=config.lr,
            l2=config.l2,
            seed=config.seed,
            log_freq=max(config.n_epochs, 1),
            progress_bar=False,
        )
    return model


def fit_label_model(
    L_train: np.ndarray,
    config: LabelModelConfig,
    *,
    cardinality: int = 2,
    L_dev: np.ndarray | None = None,
    y_dev: np.ndarray | None = None,
    positive: int = 1,
) -> Labeler:
    """Fit one configuration: a LabelModel on ``L_train`` (majority and weighted vote have
    nothing to fit there), then what the config estimates on the gold dev rows
    (``L_dev``, ``y_dev``): the class prior of uncovered rows and, for a weighted vote, the
    LF weights. Without dev rows the prior is uniform; a weighted vote needs them.
    The labeler decides by the argmax; see :meth:`Labeler.with_threshold`.
    """
    matrix = check_label_matrix(L_train, cardinality, name="L_train")
    model = _fit_snorkel(matrix, config, cardinality) if config.kind == "label_model" else None
    if L_dev is None or y_dev is None:
        if L_dev is not None or y_dev is not None:
            raise ValueError("pass both L_dev and y_dev, or neither")
        if config.kind == "weighted_vote" or config.dev_prior:
            raise ValueError(f"{config.describe()} estimates on dev rows: pass L_dev and y_dev")
        return Labeler(config, cardinality, matrix.shape[1], model, positive=positive)
    dev, gold = _check_dev(matrix, L_dev, y_dev, cardinality)
    weights = (
        _lf_weights(dev, gold, cardinality, config.smoothing)[1]
        if config.kind == "weighted_vote"
        else None
    )
    return Labeler(
        config,
        cardinality,
        matrix.shape[1],
        model,
        prior=class_prior(gold, cardinality),
        lf_weights=weights,
        positive=positive,
    )


def _check_dev(
    train: np.ndarray, L_dev: np.ndarray, y_dev: np.ndarray, cardinality: int
) -> tuple[np.ndarray, np.ndarray]:
    dev = check_label_matrix(L_dev, cardinality, name="L_dev")
    if dev.shape[1] != train.shape[1]:
        raise ValueError(
            f"L_dev has {dev.shape[1]} labeling functions (columns) but L_train has "
            f"{train.shape[1]}"
        )
    return dev, check_gold(y_dev, cardinality, rows=dev.shape[0], name="y_dev")


# --- choosing ------------------------------------------------------------------------------


def default_grid(
    *,
    class_balances: Sequence[tuple[float, ...] | None] = (None,),
    n_epochs: Sequence[int] = (100, 500),
    lrs: Sequence[float] = (0.01,),
    l2s: Sequence[float] = (0.0, 0.1),
    smoothings: Sequence[float] = (1.0, 4.0, 16.0),
    seed: int = 123,
) -> list[LabelModelConfig]:
    """The candidates :func:`fit_labeler` tries besides majority vote.

    - Weighted votes: smoothing (pseudo-votes toward the pooled dev accuracy) in
      ``smoothings``, each without and with the dev class prior.
    - LabelModels: fit prior in ``class_balances`` x epochs x learning rate x L2, each
      without and with the dev class prior at prediction time. Snorkel trains with
      full-batch SGD, so lr and n_epochs mostly trade against each other and one lr is
      enough. No LabelModel is fitted with a prior taken from the dev rows: everything
      estimated on dev is re-estimated inside each cross-validation fold, and refitting a
      LabelModel per fold would multiply its cost; the dev prior enters at prediction
      time instead, where it is exact Bayes (posterior = likelihoods x prior).

    Defaults: 6 weighted votes and 8 LabelModel candidates from 4 fits per class balance.
    """
    grid = [
        LabelModelConfig("weighted_vote", smoothing=s, dev_prior=p)
        for s, p in itertools.product(smoothings, (False, True))
    ]
    grid += [
        LabelModelConfig(
            "label_model", n_epochs=e, lr=lr, l2=l2, class_balance=b, seed=seed, dev_prior=p
        )
        for b, e, lr, l2, p in itertools.product(class_balances, n_epochs, lrs, l2s, (False, True))
    ]
    return grid


def _vote_balance(matrix: np.ndarray, cardinality: int) -> tuple[float, ...] | None:
    """The class balance of majority vote's labels of the covered train rows, add-one
    smoothed: a class prior for fitting a LabelModel that uses no gold label."""
    covered = (matrix != ABSTAIN).any(axis=1)
    if not covered.any():
        return None
    counts = _weighted_counts(matrix[covered], cardinality, None)
    labels = _argmax_random_ties(counts)
    return tuple(float(p) for p in class_prior(labels, cardinality))


@dataclass(frozen=True)
class TuningResult:
    """What :func:`fit_labeler` chose and everything it tried.

    ``best`` is the candidate with the highest cross-validated dev score by ``metric``
    (ties: majority vote, then weighted vote, then LabelModel; fewer epochs; earlier in
    the grid). ``label_model`` and ``weighted_vote`` are the best of their kind (None when
    none was tried or every fit failed). The ``*_dev`` dicts hold the cross-validated dev
    scores (``accuracy``, ``f1``, ``macro_f1``, each with ``*_std`` over repeats).
    ``trials`` holds one row per candidate, majority vote first: the config fields,
    ``dev_accuracy``, ``dev_f1``, ``dev_macro_f1`` (cross-validated), ``dev_<metric>_std``,
    ``dev_coverage``, ``threshold`` (what the candidate would use, fitted on all dev rows),
    ``fit_seconds``, ``error`` (None unless fitting failed) and ``selected``.
    ``cv_folds`` x ``cv_repeats`` is the cross-validation used (0 x 0: dev too small, scored
    on the rows it was estimated on).
    """

    best: Labeler
    majority_vote: Labeler
    label_model: Labeler | None
    majority_vote_dev: dict[str, float]
    label_model_dev: dict[str, float] | None
    trials: list[dict[str, Any]]
    weighted_vote: Labeler | None = None
    weighted_vote_dev: dict[str, float] | None = None
    metric: str = "accuracy"
    positive: int = 1
    cv_folds: int = 0
    cv_repeats: int = 0
    seconds: float = 0.0
    best_dev: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        """The chosen labeler's decision threshold (two classes, F1 metrics), or None."""
        return self.best.threshold


@dataclass
class _Candidate:
    config: LabelModelConfig
    model: LabelModel | None
    index: int


def fit_labeler(
    L_train: np.ndarray,
    *,
    L_dev: np.ndarray,
    y_dev: np.ndarray,
    cardinality: int = 2,
    metric: str = "accuracy",
    positive: int = 1,
    seed: int = 123,
    grid: Sequence[LabelModelConfig] | None = None,
    progress: Progress | None = None,
) -> TuningResult:
    """Choose how to label rows: majority vote and every candidate of ``grid``, each scored
    on the gold dev rows by ``metric`` with repeated stratified cross-validation.

    LabelModels are fitted once, on ``L_train`` only. Everything estimated on dev rows (the
    class prior, a weighted vote's LF accuracies, a binary decision threshold) is estimated
    on the other folds and scored on the held-out fold (:func:`~mlsys.training.evaluate.
    cross_validate`, ``CV_FOLDS`` folds x ``CV_REPEATS`` repeats, seeded by ``seed``); the
    chosen labeler is then estimated on all dev rows. For two classes and ``metric`` f1 or
    macro_f1, a threshold on P(``positive``) is tuned for the metric
    (:func:`~mlsys.training.evaluate.tune_threshold`); accuracy uses the argmax.

    ``grid`` defaults to :func:`default_grid` with two LabelModel fit priors: uniform, and
    the class balance of majority vote's train labels. Its configs are weighted votes and
    LabelModels (majority vote is always scored). A LabelModel whose fit fails (a NaN loss
    from too high a learning rate) is recorded with its error and skipped. ``progress``
    receives a line per fit and per stage.

    Raises:
        ValueError: a bad label matrix, gold label, metric or positive class, naming it.
    """
    started = time.perf_counter()
    say = progress or (lambda line: None)
    check_metric(metric, k=cardinality, positive=positive)
    train = check_label_matrix(L_train, cardinality, name="L_train")
    dev, gold = _check_dev(train, L_dev, y_dev, cardinality)
    if grid is None:
        balances = [None, _vote_balance(train, cardinality)]
        grid = default_grid(class_balances=list(dict.fromkeys(balances)), seed=seed)
    configs = list(grid)
    if not configs:
        raise ValueError("grid is empty; pass at least one LabelModelConfig or grid=None")
    for config in configs:
        if config.kind == "majority_vote":
            raise ValueError(
                f"grid holds weighted_vote and label_model configs (majority vote is always "
                f"scored); got {config}"
            )
        if config.class_balance is not None and len(config.class_balance) != cardinality:
            raise ValueError(
                f"class_balance {config.class_balance} in grid has {len(config.class_balance)} "
                f"entries but cardinality is {cardinality}"
            )

    candidates, trials = _fit_candidates(train, configs, cardinality, say)
    splits = stratified_splits(gold, folds=CV_FOLDS, repeats=CV_REPEATS, seed=seed)
    folds = len(splits[0]) if splits else 0
    say(
        f"label model: scoring {len(candidates)} candidates by {metric} on {len(gold)} dev rows "
        f"({folds}-fold cross-validation x {len(splits)})"
    )
    tune = cardinality == 2 and metric != "accuracy"
    covered = (dev != ABSTAIN).any(axis=1)
    scored: list[tuple[tuple[float, int, int, int], Labeler, dict[str, float]]] = []
    for candidate in candidates:
        choose = _Procedure(candidate, dev, gold, covered, cardinality, metric, positive, tune)
        scores = cross_validate(choose, gold, splits, k=cardinality, positive=positive)
        labeler = choose.labeler()
        row = trials[candidate.index]
        for name in ("accuracy", "f1", "macro_f1"):
            row[f"dev_{name}"] = scores[name]
        row[f"dev_{metric}_std"] = scores[f"{metric}_std"]
        row["dev_coverage"] = float(covered.mean())
        row["threshold"] = labeler.threshold
        config = candidate.config
        epochs = config.n_epochs if config.kind == "label_model" else 0
        key = (-scores[metric], _KIND_ORDER[config.kind], epochs, candidate.index)
        scored.append((key, labeler, scores))

    scored.sort(key=lambda item: item[0])
    best_key, best, best_scores = scored[0]
    trials[best_key[3]]["selected"] = True
    firsts: dict[str, tuple[Labeler, dict[str, float]]] = {}
    for _, labeler, scores in scored:
        firsts.setdefault(labeler.config.kind, (labeler, scores))
    mv, mv_dev = firsts["majority_vote"]
    lm = firsts.get("label_model")
    wv = firsts.get("weighted_vote")
    seconds = time.perf_counter() - started
    say(
        f"label model: chose {best.config.describe()}, dev {metric} {best_scores[metric]:.4f} "
        f"(majority vote {mv_dev[metric]:.4f}) in {seconds:.1f} s"
    )
    return TuningResult(
        best=best,
        majority_vote=mv,
        label_model=lm[0] if lm else None,
        majority_vote_dev=mv_dev,
        label_model_dev=lm[1] if lm else None,
        trials=trials,
        weighted_vote=wv[0] if wv else None,
        weighted_vote_dev=wv[1] if wv else None,
        metric=metric,
        positive=positive,
        cv_folds=folds,
        cv_repeats=len(splits),
        seconds=seconds,
        best_dev=best_scores,
    )


def _fit_candidates(
    train: np.ndarray, configs: list[LabelModelConfig], cardinality: int, say: Progress
) -> tuple[list[_Candidate], list[dict[str, Any]]]:
    """Majority vote and every config, LabelModels fitted on ``train`` (a fit shared by
    configs that differ only in ``dev_prior``); one trials row each."""
    candidates = [_Candidate(LabelModelConfig("majority_vote"), None, 0)]
    trials = [_trial(candidates[0].config, 0.0, None)]
    fits: dict[tuple[Any, ...], tuple[LabelModel | None, float, str | None]] = {}
    n_fits = len({_fit_key(c) for c in configs if c.kind == "label_model"})
    for config in configs:
        model: LabelModel | None = None
        seconds, error = 0.0, None
        if config.kind == "label_model":
            key = _fit_key(config)
            if key not in fits:
                say(f"label model: fitting {len(fits) + 1}/{n_fits}: {config.describe()}")
                begun = time.perf_counter()
                try:
                    fitted: LabelModel | None = _fit_snorkel(train, config, cardinality)
                    failure = None
                except Exception as exc:  # Snorkel raises a bare Exception for a NaN loss
                    if "NaN" not in str(exc):
                        raise
                    fitted, failure = None, str(exc)
                fits[key] = (fitted, time.perf_counter() - begun, failure)
            model, seconds, error = fits[key]
        trials.append(_trial(config, seconds, error))
        if error is None:
            candidates.append(_Candidate(config, model, len(trials) - 1))
    return candidates, trials


def _fit_key(config: LabelModelConfig) -> tuple[Any, ...]:
    return (config.n_epochs, config.lr, config.l2, config.class_balance, config.seed)


class _Procedure:
    """One candidate's dev-side estimation as a function of the rows it may use: the class
    prior, a weighted vote's LF weights and the threshold, estimated on ``fit_rows``; called
    by :func:`cross_validate` per fold, then by :meth:`labeler` on every dev row."""

    def __init__(
        self,
        candidate: _Candidate,
        dev: np.ndarray,
        gold: np.ndarray,
        covered: np.ndarray,
        k: int,
        metric: str,
        positive: int,
        tune: bool,
    ) -> None:
        self.candidate = candidate
        self.dev, self.gold, self.covered, self.k = dev, gold, covered, k
        self.metric, self.positive, self.tune = metric, positive, tune
        # Majority vote's and a LabelModel's evidence do not depend on the dev rows: made once.
        self.fixed: np.ndarray | None = None
        self.fit_prior: np.ndarray | None = None
        if candidate.config.kind != "weighted_vote":
            fixed = Labeler(candidate.config, k, dev.shape[1], candidate.model, positive=positive)
            self.fixed, self.fit_prior = fixed._evidence(dev), fixed._fit_prior

    def estimate(
        self, fit_rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, float | None, np.ndarray]:
        config = self.candidate.config
        prior = class_prior(self.gold[fit_rows], self.k)
        weights = None
        if self.fixed is None:
            weights = _lf_weights(
                self.dev[fit_rows], self.gold[fit_rows], self.k, config.smoothing
            )[1]
            evidence = _weighted_counts(self.dev, self.k, weights)
        else:
            evidence = self.fixed
        proba = _posterior(config, evidence, self.covered, prior, self.fit_prior)
        threshold = None
        if self.tune:
            threshold = tune_threshold(
                self.gold[fit_rows],
                proba[fit_rows, self.positive],
                metric=self.metric,
                positive=self.positive,
            )
        return prior, weights, threshold, proba

    def __call__(self, fit_rows: np.ndarray) -> np.ndarray:
        _, _, threshold, proba = self.estimate(fit_rows)
        return _decide(proba, threshold, self.positive)

    def labeler(self) -> Labeler:
        prior, weights, threshold, _ = self.estimate(np.ones(len(self.gold), dtype=bool))
        return Labeler(
            self.candidate.config,
            self.k,
            self.dev.shape[1],
            self.candidate.model,
            prior=prior,
            lf_weights=weights,
            threshold=threshold,
            positive=self.positive,
        )


def _trial(config: LabelModelConfig, seconds: float, error: str | None) -> dict[str, Any]:
    row = config.as_row()
    for name in ("accuracy", "f1", "macro_f1", "coverage"):
        row[f"dev_{name}"] = float("nan")
    row.update(threshold=None, fit_seconds=round(seconds, 4), error=error, selected=False)
    return row


# --- output frame --------------------------------------------------------------------------


def weak_label_frame(
    L: np.ndarray, labeler: Labeler, *, index: pd.Index | None = None
) -> pd.DataFrame:
    """One row per row of ``L``: ``weak_label``, ``proba_0`` .. ``proba_{k-1}``, ``confidence``.

    ``weak_label`` is int64, decided as :meth:`Labeler.predict` does (by the labeler's
    threshold when it has one), with ABSTAIN (-1) where no LF voted: those rows get no
    label in the merge, and their probabilities are the labeler's class prior.
    ``confidence`` is the probability of the row's weak label (of the most probable class
    for an ABSTAIN row). ``index`` (e.g. the batch's index) is used for the frame when
    given, so it aligns with gold labels.
    """
    matrix = labeler._check(L)
    proba = labeler._proba(matrix)
    labels = labeler._labels(matrix, proba)
    if index is not None and len(index) != matrix.shape[0]:
        raise ValueError(f"index has {len(index)} entries but L has {matrix.shape[0]} rows")
    columns: dict[str, Any] = {"weak_label": labels.astype(np.int64)}
    for c in range(labeler.cardinality):
        columns[f"proba_{c}"] = proba[:, c]
    chosen = np.where(labels == ABSTAIN, proba.argmax(axis=1), labels)
    columns["confidence"] = proba[np.arange(len(labels)), chosen]
    return pd.DataFrame(columns, index=index if index is not None else pd.RangeIndex(len(labels)))
