"""Combine labeling-function votes into one label per row: majority vote or Snorkel's LabelModel."""

from __future__ import annotations

import hashlib
import itertools
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score
from snorkel.labeling.model import LabelModel

__all__ = [
    "ABSTAIN",
    "LabelModelConfig",
    "Labeler",
    "TuningResult",
    "check_gold",
    "check_label_matrix",
    "default_grid",
    "fit_label_model",
    "fit_labeler",
    "majority_vote",
    "weak_label_frame",
]

ABSTAIN = -1
"""An LF's vote when it does not label a row, and the label of a row no LF labels."""

Kind = Literal["label_model", "majority_vote"]
LabelMatrix = np.ndarray  # (n rows, m LFs) of ints in [-1, k-1]

# Snorkel's probs_to_preds treats probabilities closer than this as tied.
_TIE_TOL = 1e-5
MIN_LFS = 3


@dataclass(frozen=True)
class LabelModelConfig:
    """One way of turning a label matrix into labels, as tried in tuning.

    ``kind="majority_vote"`` ignores every other field. For ``kind="label_model"`` the fields
    are Snorkel ``LabelModel.fit`` arguments; ``class_balance=None`` means Snorkel's uniform
    class prior (the prior is fixed, never learned), a tuple is a prior with one probability
    per class.
    """

    kind: Kind
    n_epochs: int = 500
    lr: float = 0.01
    l2: float = 0.0
    class_balance: tuple[float, ...] | None = None
    seed: int = 123

    def __post_init__(self) -> None:
        if self.kind not in ("label_model", "majority_vote"):
            raise ValueError(f"kind must be 'label_model' or 'majority_vote', got {self.kind!r}")
        if self.n_epochs < 1:
            raise ValueError(f"n_epochs must be at least 1, got {self.n_epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be non-negative, got {self.l2}")
        if self.class_balance is not None:
            balance = tuple(float(p) for p in self.class_balance)
            object.__setattr__(self, "class_balance", balance)
            if any(not p > 0 for p in balance) or abs(sum(balance) - 1.0) > 1e-6:
                raise ValueError(
                    f"class_balance must be positive and sum to 1, got {balance} "
                    f"(sum {sum(balance):.6g})"
                )

    def as_row(self) -> dict[str, Any]:
        """The config as a flat dict for a trials table (label-model fields blank for MV)."""
        row = asdict(self)
        if self.kind == "majority_vote":
            row.update(n_epochs=None, lr=None, l2=None, class_balance=None, seed=None)
        elif self.class_balance is not None:
            row["class_balance"] = list(self.class_balance)
        return row


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


# --- majority vote and predictions ---------------------------------------------------------


def majority_vote(L: np.ndarray, cardinality: int = 2) -> np.ndarray:
    """Per-row vote shares, shape (n, k): votes for each class over the row's votes.

    A row no LF votes on gets the uniform distribution. The argmax (and its ties) equals
    Snorkel's ``MajorityLabelVoter``, which puts all mass on the winning class instead.
    """
    matrix = check_label_matrix(L, cardinality, min_lfs=1)
    votes = np.stack([(matrix == c).sum(axis=1) for c in range(cardinality)], axis=1)
    totals = votes.sum(axis=1, keepdims=True)
    uniform = np.full_like(votes, 1.0, dtype=np.float64) / cardinality
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, votes / np.maximum(totals, 1), uniform)
    return shares.astype(np.float64)


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
    for i in np.flatnonzero(tied.sum(axis=1) > 1):
        options = np.flatnonzero(tied[i])
        preds[i] = options[_hash(int(i)) % len(options)]
    return preds


def _f1(y: np.ndarray, preds: np.ndarray, cardinality: int) -> float:
    # Binary: F1 of the positive class 1. Multi-class: macro F1. A prediction of ABSTAIN is
    # never a class, so it counts as a miss for the row's true class.
    if cardinality == 2:
        return float(f1_score(y, preds, labels=[1], average="micro", zero_division=0.0))
    labels = list(range(cardinality))
    return float(f1_score(y, preds, labels=labels, average="macro", zero_division=0.0))


def _metrics(proba: np.ndarray, covered: np.ndarray, y: np.ndarray) -> dict[str, float]:
    cardinality = proba.shape[1]
    guessed = _argmax_random_ties(proba)
    strict = np.where(covered, guessed, ABSTAIN)
    n_covered = int(covered.sum())
    return {
        "accuracy": float((guessed == y).mean()),
        "f1": _f1(y, guessed, cardinality),
        "coverage": n_covered / len(y),
        "accuracy_covered": float((guessed[covered] == y[covered]).mean()) if n_covered else 0.0,
        "f1_covered": _f1(y[covered], guessed[covered], cardinality) if n_covered else 0.0,
        "accuracy_abstain_wrong": float((strict == y).mean()),
        "f1_abstain_wrong": _f1(y, strict, cardinality),
    }


# --- the fitted labeler --------------------------------------------------------------------


class Labeler:
    """A fitted way of labeling rows from their LF votes: majority vote or a Snorkel LabelModel.

    Usage::

        labeler = fit_labeler(L_train, L_dev=L_dev, y_dev=y_dev).best
        proba = labeler.predict_proba(L)     # (n, k); uniform where no LF voted
        labels = labeler.predict(L)          # ABSTAIN where no LF voted
        labeler.metrics(L_test, y_test)      # accuracy, f1, coverage, ...

    Build one with :func:`fit_label_model` or :func:`fit_labeler`.
    """

    def __init__(
        self,
        config: LabelModelConfig,
        cardinality: int,
        n_lfs: int,
        model: LabelModel | None = None,
    ) -> None:
        if (config.kind == "label_model") != (model is not None):
            needs = "a fitted LabelModel" if model is None else "model=None"
            raise ValueError(f"a {config.kind} labeler needs {needs}")
        self._config = config
        self._cardinality = cardinality
        self._n_lfs = n_lfs
        self._model = model

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
        """The underlying Snorkel LabelModel, or None for majority vote."""
        return self._model

    def __repr__(self) -> str:
        return f"Labeler({self._config}, cardinality={self._cardinality}, n_lfs={self._n_lfs})"

    def _check(self, L: np.ndarray) -> np.ndarray:
        matrix = check_label_matrix(L, self._cardinality, min_lfs=1)
        if matrix.shape[1] != self._n_lfs:
            raise ValueError(
                f"L has {matrix.shape[1]} labeling function(s) (columns) but this labeler was "
                f"fitted on {self._n_lfs}"
            )
        return matrix

    def predict_proba(self, L: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, k). Rows no LF voted on get exactly 1/k each."""
        matrix = self._check(L)
        return self._proba(matrix)

    def _proba(self, matrix: np.ndarray) -> np.ndarray:
        if self._model is None:
            return majority_vote(matrix, self._cardinality)
        proba = np.asarray(self._model.predict_proba(matrix), dtype=np.float64)
        # Snorkel gives uncovered rows its class prior; we make "no evidence" explicit.
        proba[(matrix == ABSTAIN).all(axis=1)] = 1.0 / self._cardinality
        return proba

    def predict(
        self, L: np.ndarray, *, tie_break: Literal["random", "abstain"] = "random"
    ) -> np.ndarray:
        """Labels, shape (n,): ABSTAIN for every row no LF voted on, never a guess.

        A covered row whose top classes tie gets one of them chosen by Snorkel's
        deterministic row hash (``tie_break="random"``) or ABSTAIN (``"abstain"``).
        """
        matrix = self._check(L)
        return _labels(matrix, self._proba(matrix), tie_break)

    def metrics(self, L: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Scores against gold labels ``y``.

        - ``accuracy``, ``f1``: every row; ties, including rows no LF voted on (uniform
          probabilities), broken by Snorkel's deterministic hash. This is
          ``LabelModel.score(L, y, tie_break_policy="random")``, the convention of the
          Snorkel tutorials (majority vote 0.84, LabelModel 0.86 on YouTube spam).
        - ``coverage``: fraction of rows at least one LF voted on.
        - ``accuracy_covered``, ``f1_covered``: covered rows only.
        - ``accuracy_abstain_wrong``, ``f1_abstain_wrong``: every row, uncovered rows
          counted as wrong (what :meth:`predict` yields, scored strictly).

        F1 is that of class 1 when k = 2 and the macro average over classes otherwise.
        """
        matrix = self._check(L)
        gold = check_gold(y, self._cardinality, rows=matrix.shape[0])
        covered = (matrix != ABSTAIN).any(axis=1)
        return _metrics(self._proba(matrix), covered, gold)


def _labels(
    matrix: np.ndarray, proba: np.ndarray, tie_break: Literal["random", "abstain"]
) -> np.ndarray:
    preds = _argmax_random_ties(proba)
    if tie_break == "abstain":
        tied = (np.abs(proba - proba.max(axis=1, keepdims=True)) < _TIE_TOL).sum(axis=1) > 1
        preds[tied] = ABSTAIN
    elif tie_break != "random":
        raise ValueError(f"tie_break must be 'random' or 'abstain', got {tie_break!r}")
    preds[(matrix == ABSTAIN).all(axis=1)] = ABSTAIN
    return preds


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


def fit_label_model(
    L_train: np.ndarray, config: LabelModelConfig, *, cardinality: int = 2
) -> Labeler:
    """Fit one configuration on ``L_train`` (majority vote has nothing to fit)."""
    matrix = check_label_matrix(L_train, cardinality, name="L_train")
    if config.kind == "majority_vote":
        return Labeler(config, cardinality, matrix.shape[1])
    if config.class_balance is not None and len(config.class_balance) != cardinality:
        raise ValueError(
            f"class_balance {config.class_balance} has {len(config.class_balance)} entries "
            f"but cardinality is {cardinality}"
        )
    model = LabelModel(cardinality=cardinality, verbose=False)
    balance = list(config.class_balance) if config.class_balance is not None else None
    with _global_rng_preserved():
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
    return Labeler(config, cardinality, matrix.shape[1], model)


# --- tuning --------------------------------------------------------------------------------


def default_grid(
    *,
    dev_class_balance: tuple[float, ...] | None = None,
    n_epochs: Sequence[int] = (100, 500, 1000),
    lrs: Sequence[float] = (0.01,),
    l2s: Sequence[float] = (0.0, 0.1),
    seed: int = 123,
) -> list[LabelModelConfig]:
    """LabelModel configs to tune over: class prior x epochs x learning rate x L2.

    The class prior is uniform, plus ``dev_class_balance`` when given. One learning rate by
    default: Snorkel trains with plain SGD, so lr and n_epochs mostly trade against each
    other and one axis is enough. The default 12 configs fit a 1600 x 9 matrix in about
    3 s on 2 CPU cores (each epoch is one full-batch step, ~0.4 ms).
    """
    balances: list[tuple[float, ...] | None] = [None]
    if dev_class_balance is not None:
        balances.append(dev_class_balance)
    return [
        LabelModelConfig("label_model", n_epochs=e, lr=lr, l2=l2, class_balance=b, seed=seed)
        for b, e, lr, l2 in itertools.product(balances, n_epochs, lrs, l2s)
    ]


@dataclass(frozen=True)
class TuningResult:
    """What :func:`fit_labeler` chose and everything it tried.

    ``best`` is the label model or the majority vote, whichever scored the higher dev
    accuracy (majority vote on a tie). ``trials`` holds one row per config tried, majority
    vote first: the config fields, ``dev_*`` metrics (see :meth:`Labeler.metrics`),
    ``fit_seconds``, ``error`` (None unless fitting failed) and ``selected``.
    """

    best: Labeler
    majority_vote: Labeler
    label_model: Labeler | None
    majority_vote_dev: dict[str, float]
    label_model_dev: dict[str, float] | None
    trials: list[dict[str, Any]]


def fit_labeler(
    L_train: np.ndarray,
    *,
    L_dev: np.ndarray,
    y_dev: np.ndarray,
    cardinality: int = 2,
    grid: Sequence[LabelModelConfig] | None = None,
    seed: int = 123,
) -> TuningResult:
    """Fit every LabelModel config of ``grid`` on ``L_train``, score each and majority vote
    on the gold dev rows, and keep the best.

    Configs are ranked by dev ``accuracy`` (see :meth:`Labeler.metrics`); ties go to majority
    vote, then to fewer epochs, then to the earlier config in ``grid``. ``grid`` defaults to
    :func:`default_grid` with the dev class balance and ``seed``. A config whose fit fails
    (e.g. a NaN loss from too high a learning rate) is recorded with its error and skipped.
    """
    train = check_label_matrix(L_train, cardinality, name="L_train")
    dev = check_label_matrix(L_dev, cardinality, name="L_dev")
    if dev.shape[1] != train.shape[1]:
        raise ValueError(
            f"L_dev has {dev.shape[1]} labeling functions (columns) but L_train has "
            f"{train.shape[1]}"
        )
    gold = check_gold(y_dev, cardinality, rows=dev.shape[0], name="y_dev")
    if grid is None:
        counts = np.bincount(gold, minlength=cardinality)
        # A class absent from dev would be a zero prior, which Snorkel rejects.
        dev_balance = tuple(float(c) for c in counts / counts.sum()) if counts.all() else None
        grid = default_grid(dev_class_balance=dev_balance, seed=seed)
    configs = list(grid)
    if not configs:
        raise ValueError("grid is empty; pass at least one LabelModelConfig or grid=None")
    wrong = [c for c in configs if c.kind != "label_model"]
    if wrong:
        raise ValueError(
            f"grid holds LabelModel configs only (majority vote is always scored); got {wrong[0]}"
        )
    for config in configs:
        if config.class_balance is not None and len(config.class_balance) != cardinality:
            raise ValueError(
                f"class_balance {config.class_balance} in grid has {len(config.class_balance)} "
                f"entries but cardinality is {cardinality}"
            )

    mv = fit_label_model(train, LabelModelConfig("majority_vote"), cardinality=cardinality)
    mv_dev = mv.metrics(dev, gold)
    trials: list[dict[str, Any]] = [_trial(mv.config, mv_dev, 0.0, None)]
    ranked: list[tuple[tuple[float, int, int, int], Labeler, dict[str, float]]] = [
        ((-mv_dev["accuracy"], 0, 0, 0), mv, mv_dev)
    ]
    for index, config in enumerate(configs, start=1):
        started = time.perf_counter()
        try:
            labeler = fit_label_model(train, config, cardinality=cardinality)
        except Exception as exc:  # Snorkel raises a bare Exception for a NaN loss
            if "NaN" not in str(exc):
                raise
            trials.append(_trial(config, None, time.perf_counter() - started, str(exc)))
            continue
        scores = labeler.metrics(dev, gold)
        trials.append(_trial(config, scores, time.perf_counter() - started, None))
        ranked.append(((-scores["accuracy"], 1, config.n_epochs, index), labeler, scores))

    ranked.sort(key=lambda item: item[0])
    best_key, best, _ = ranked[0]
    trials[best_key[3]]["selected"] = True
    label_models = [item for item in ranked if item[1].config.kind == "label_model"]
    return TuningResult(
        best=best,
        majority_vote=mv,
        label_model=label_models[0][1] if label_models else None,
        majority_vote_dev=mv_dev,
        label_model_dev=label_models[0][2] if label_models else None,
        trials=trials,
    )


def _trial(
    config: LabelModelConfig,
    scores: dict[str, float] | None,
    seconds: float,
    error: str | None,
) -> dict[str, Any]:
    row = config.as_row()
    for name in ("accuracy", "f1", "coverage", "accuracy_covered", "accuracy_abstain_wrong"):
        row[f"dev_{name}"] = scores[name] if scores is not None else float("nan")
    row.update(fit_seconds=round(seconds, 4), error=error, selected=False)
    return row


# --- output frame --------------------------------------------------------------------------


def weak_label_frame(
    L: np.ndarray, labeler: Labeler, *, index: pd.Index | None = None
) -> pd.DataFrame:
    """One row per row of ``L``: ``weak_label``, ``proba_0`` .. ``proba_{k-1}``, ``confidence``.

    ``weak_label`` is int64 with ABSTAIN (-1) where no LF voted (those rows have uniform
    probabilities); ``confidence`` is the largest class probability, in [1/k, 1]. ``index``
    (e.g. the batch's index) is used for the frame when given, so it aligns with gold labels.
    """
    matrix = labeler._check(L)
    proba = labeler._proba(matrix)
    labels = _labels(matrix, proba, "random")
    if index is not None and len(index) != matrix.shape[0]:
        raise ValueError(f"index has {len(index)} entries but L has {matrix.shape[0]} rows")
    columns: dict[str, Any] = {"weak_label": labels.astype(np.int64)}
    for c in range(labeler.cardinality):
        columns[f"proba_{c}"] = proba[:, c]
    columns["confidence"] = proba.max(axis=1)
    return pd.DataFrame(columns, index=index if index is not None else pd.RangeIndex(len(labels)))
