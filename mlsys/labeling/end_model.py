"""The end model of weak supervision: the pipeline's text classifier trained on a label
model's output and chosen on gold dev rows by the dataset's metric.

The label model only labels rows some LF voted on; the end model generalizes from their
text to every row. :func:`select_end_model` trains each candidate of a small grid on the
weak targets of the covered train rows, scores it on the dev rows after every epoch (so
the number of epochs is chosen for free, like early stopping) and keeps the best;
:func:`train_end_model` does that for a benchmark and scores the choice once on test.

Targets: by default the label model's class probabilities themselves ("soft"), so the
loss is the expected cross-entropy under the label model's posterior, the noise-aware
loss of data programming (Ratner et al., NeurIPS 2016): a row the label model is unsure
about pulls toward each class in proportion, instead of toward its argmax with a smaller
weight ("hard", the other option), which throws away which class was the runner-up.

Class balance: for f1 and macro_f1 a candidate may reweight rows so that each class
carries the same total weight ("uniform"); for two classes and those metrics the decision
threshold on P(positive) is tuned on dev with cross-validation (the threshold the model
is scored with on each dev fold was tuned on the other folds).
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mlsys.labeling.label_model import ABSTAIN, Labeler
from mlsys.models.text import (
    HashingFeaturizer,
    TextDataset,
    build_text_classifier,
    pipeline_featurizer,
    predict_texts,
)
from mlsys.training import fit
from mlsys.training.evaluate import (
    check_metric,
    classification_metrics,
    cross_validate,
    decide,
    stratified_splits,
    tune_threshold,
)
from mlsys.training.fit import Callback

__all__ = [
    "EndModelChoice",
    "EndModelConfig",
    "EndModelResult",
    "default_end_model_grid",
    "end_model_data",
    "select_end_model",
    "train_end_model",
]

Progress = Callable[[str], None]
Targets = Literal["soft", "hard"]
Balance = Literal["none", "uniform"]


@dataclass(frozen=True)
class EndModelConfig:
    """One end-model candidate.

    Args:
        lr: Adam's learning rate.
        hidden: hidden layer widths; ``()`` is logistic regression on the hashed features.
        epochs: the most epochs to train; the epoch with the best dev score is kept.
        batch_size: rows per optimizer step.
        weight_decay: Adam's L2 penalty on every weight.
        targets: ``"soft"`` (learn the label model's class probabilities) or ``"hard"``
            (its most probable class, each row weighted by that class's probability).
        balance: ``"uniform"`` reweights train rows so every class has the same total
            weight; ``"none"`` keeps the weak labels' class distribution.
    """

    lr: float = 0.01
    hidden: tuple[int, ...] = (64,)
    epochs: int = 8
    batch_size: int = 64
    weight_decay: float = 0.0
    targets: Targets = "soft"
    balance: Balance = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be at least 1, got {self.epochs} and {self.batch_size}"
            )
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay!r}")
        if self.targets not in ("soft", "hard"):
            raise ValueError(f"targets must be 'soft' or 'hard', got {self.targets!r}")
        if self.balance not in ("none", "uniform"):
            raise ValueError(f"balance must be 'none' or 'uniform', got {self.balance!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``hidden`` as a list)."""
        return {**asdict(self), "hidden": list(self.hidden)}


def default_end_model_grid(metric: str = "accuracy") -> list[EndModelConfig]:
    """Logistic regression and a one-hidden-layer MLP, each at two learning rates, trained
    up to 10 epochs on soft targets (the epoch is chosen on dev): 4 fits. For f1 and
    macro_f1 each also trains class-balanced: 8 fits."""
    balances: tuple[Balance, ...] = ("none",) if metric == "accuracy" else ("none", "uniform")
    return [
        EndModelConfig(lr=lr, hidden=hidden, epochs=10, balance=balance)
        for hidden in ((), (128,))
        for lr in (0.003, 0.01)
        for balance in balances
    ]


@dataclass
class EndModelChoice:
    """What :func:`select_end_model` chose: the config, the trained model at its best
    epoch, its dev scores (``accuracy``, ``f1``, ``macro_f1``, ``log_loss``, ``rows``;
    with a threshold, ``accuracy``/``f1``/``macro_f1`` are the cross-validated ones the
    choice was made by), the decision threshold (two classes and an F1 metric) or None,
    and one trials row per config (its best epoch and dev scores)."""

    config: EndModelConfig
    model: nn.Sequential
    featurizer: HashingFeaturizer
    epochs: int
    dev: dict[str, float]
    threshold: float | None
    metric: str
    positive: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities (n, k) of ``texts``."""
        return _predict_proba(self.model, self.featurizer, texts)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Classes of ``texts``, by the threshold when there is one."""
        return decide(self.predict_proba(texts), positive=self.positive, threshold=self.threshold)

    def scores(self, texts: Sequence[str], y: np.ndarray) -> dict[str, float]:
        """:func:`~mlsys.training.evaluate.classification_metrics` of ``texts`` against
        gold ``y``, decided as :meth:`predict` does."""
        return classification_metrics(
            np.asarray(y),
            self.predict_proba(texts),
            positive=self.positive,
            threshold=self.threshold,
        )


def _predict_proba(
    model: nn.Sequential, featurizer: HashingFeaturizer, texts: Sequence[str]
) -> np.ndarray:
    """The (n, k) class probabilities of ``texts``: the ``proba_*`` columns of
    :func:`~mlsys.models.text.predict_texts`."""
    frame = predict_texts(model, featurizer, texts)
    return frame[[c for c in frame.columns if c.startswith("proba_")]].to_numpy()


class _Targets(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Featurized train rows with per-row targets (class indices or probability rows) and
    weights, for ``fit``: features from a :class:`TextDataset`, made once."""

    def __init__(self, rows: TextDataset, targets: torch.Tensor, weights: torch.Tensor) -> None:
        self.rows, self.targets, self.weights = rows, targets, weights

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.rows[index][0], self.targets[index], self.weights[index]


def _soft_targets(train_targets: np.ndarray, n_rows: int, n_classes: int) -> np.ndarray:
    """``train_targets`` as an (n, k) probability matrix, checked, naming a bad row."""
    targets = np.asarray(train_targets)
    if targets.ndim == 1:
        if len(targets) != n_rows:
            raise ValueError(
                f"train_targets has {len(targets)} entries but there are {n_rows} train texts"
            )
        if targets.dtype.kind not in "iu" or len(targets) == 0:
            raise ValueError(f"class-index train_targets must be integers, got {targets.dtype}")
        bad = (targets < 0) | (targets >= n_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"train_targets[{row}] = {int(targets[row])} is outside [0, {n_classes - 1}]"
            )
        one_hot: np.ndarray = np.eye(n_classes)[targets]
        return one_hot
    if targets.shape != (n_rows, n_classes):
        raise ValueError(
            f"train_targets must be (n,) class indices or an (n, k) = ({n_rows}, {n_classes}) "
            f"probability matrix, got shape {targets.shape}"
        )
    soft = targets.astype(np.float64)
    bad_rows = ~np.isfinite(soft).all(axis=1) | (soft < 0).any(axis=1)
    bad_rows |= np.abs(soft.sum(axis=1) - 1.0) > 1e-4
    if bad_rows.any():
        row = int(np.argmax(bad_rows))
        raise ValueError(
            f"train_targets[{row}] = {soft[row].round(4).tolist()} is not a probability row"
        )
    return soft


def _config_data(
    rows: TextDataset, soft: np.ndarray, weights: np.ndarray, config: EndModelConfig
) -> _Targets:
    """The train rows as ``config`` learns them: soft targets, or hard ones weighted by
    their probability; weights times the class-balance factors."""
    if config.targets == "soft":
        targets = torch.from_numpy(soft.astype(np.float32))
        row_weights = weights
    else:
        targets = torch.from_numpy(soft.argmax(axis=1))
        row_weights = weights * soft.max(axis=1)
    row_weights = row_weights * _class_weights(soft, row_weights, config.balance)
    return _Targets(rows, targets, torch.from_numpy(row_weights.astype(np.float32)))


def end_model_data(
    texts: Sequence[str],
    targets: np.ndarray,
    weights: np.ndarray | None,
    config: EndModelConfig,
    *,
    n_classes: int,
    featurizer: HashingFeaturizer,
) -> Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The ``(x, target, weight)`` items ``config`` is trained on, as
    :func:`select_end_model` trains it: give ``fit`` these, the config's optimizer and
    epochs and the same seed, and it trains the same model (with any strategy)."""
    text_list = list(texts)
    soft = _soft_targets(targets, len(text_list), n_classes)
    row_weights = np.ones(len(text_list)) if weights is None else np.asarray(weights, float)
    rows = TextDataset(
        text_list, soft.argmax(axis=1), featurizer, weights=row_weights, n_classes=n_classes
    )
    return _config_data(rows, soft, row_weights, config)


def _class_weights(soft: np.ndarray, weights: np.ndarray, balance: Balance) -> np.ndarray:
    """Per-row weight factors that give every class the same total weight ("uniform"),
    from the weighted class mass of the targets; ones for "none"."""
    if balance == "none":
        return np.ones(len(soft))
    mass = (soft * weights[:, None]).sum(axis=0)
    k = soft.shape[1]
    factor = np.where(mass > 0, weights.sum() / (k * np.maximum(mass, 1e-12)), 0.0)
    # A row's factor is the expectation over its target distribution.
    return np.asarray(soft @ factor)


class _EpochScorer(Callback):
    """After each epoch: the model's dev probabilities, the dev score the choice is made by
    and, for the best epoch so far, a copy of the weights and its dev probabilities."""

    def __init__(
        self,
        model: nn.Sequential,
        score: Callable[[np.ndarray], tuple[float, float]],
        featurizer: HashingFeaturizer,
        dev_texts: Sequence[str],
    ) -> None:
        self.model, self.score = model, score
        self.featurizer, self.dev_texts = featurizer, dev_texts
        self.best: tuple[float, float] | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] = {}
        self.best_proba = np.empty((0, 0))
        self.history: list[float] = []

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        proba = _predict_proba(self.model, self.featurizer, self.dev_texts)
        key = self.score(proba)
        self.history.append(key[0])
        if self.best is None or key > self.best:
            self.best, self.best_epoch = key, int(record["epoch"]) + 1
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.best_proba = proba


def select_end_model(
    train_texts: Sequence[str],
    train_targets: np.ndarray,
    train_weights: np.ndarray | None,
    dev_texts: Sequence[str],
    dev_y: np.ndarray,
    *,
    n_classes: int,
    metric: str,
    positive: int = 1,
    featurizer: HashingFeaturizer | None = None,
    grid: Sequence[EndModelConfig] | None = None,
    seed: int = 123,
    progress: Progress | None = None,
) -> EndModelChoice:
    """Train each config of ``grid`` on the weak train rows and keep the one, at the epoch,
    with the best dev ``metric`` (ties: lower dev log loss, then the earlier config).

    Args:
        train_texts: the texts to learn from (covered train rows).
        train_targets: their weak targets: class indices (n,) or class probabilities
            (n, k), e.g. a label model's ``predict_proba``.
        train_weights: a positive weight per row, or None for ones.
        dev_texts, dev_y: gold dev rows, only scored on (never trained on).
        n_classes: k.
        metric: ``accuracy``, ``f1`` or ``macro_f1``: what the choice maximizes.
        positive: the class of the binary F1 and of the threshold.
        featurizer: defaults to :func:`~mlsys.models.text.pipeline_featurizer`.
        grid: defaults to :func:`default_end_model_grid` for ``metric``.
        seed: seeds initialization and shuffling; every config starts from it.
        progress: receives one line per config trained.

    For two classes and an F1 metric, each epoch's dev score is cross-validated with a
    threshold tuned on the other folds; the chosen model's threshold is tuned on all dev.

    Raises:
        ValueError: bad metric, positive class, targets, weights or an empty grid.
    """
    started = time.perf_counter()
    say = progress or (lambda line: None)
    check_metric(metric, k=n_classes, positive=positive)
    featurizer = featurizer or pipeline_featurizer()
    configs = list(grid) if grid is not None else default_end_model_grid(metric)
    if not configs:
        raise ValueError("the end-model grid is empty")
    texts = list(train_texts)
    if not texts:
        raise ValueError("there are no train texts to learn from")
    soft = _soft_targets(train_targets, len(texts), n_classes)
    weights = np.ones(len(texts)) if train_weights is None else np.asarray(train_weights, float)
    if weights.shape != (len(texts),) or not (np.isfinite(weights) & (weights > 0)).all():
        raise ValueError(
            f"train_weights must be {len(texts)} positive finite numbers, got shape {weights.shape}"
        )
    gold = np.asarray(dev_y, dtype=np.int64)
    if len(gold) != len(dev_texts) or len(gold) == 0:
        raise ValueError(
            f"dev_texts ({len(dev_texts)}) and dev_y ({len(gold)}) must be non-empty and of "
            "the same length"
        )
    dev_list = list(dev_texts)
    rows = TextDataset(texts, soft.argmax(axis=1), featurizer, weights=weights, n_classes=n_classes)
    tune = n_classes == 2 and metric != "accuracy"
    splits = stratified_splits(gold, seed=seed) if tune else []

    def dev_score(proba: np.ndarray) -> tuple[float, float]:
        scores = classification_metrics(gold, proba, positive=positive)
        if not tune:
            return scores[metric], -scores["log_loss"]

        def choose(fit_rows: np.ndarray) -> np.ndarray:
            t = tune_threshold(
                gold[fit_rows], proba[fit_rows, positive], metric=metric, positive=positive
            )
            return decide(proba, positive=positive, threshold=t)

        cv = cross_validate(choose, gold, splits, k=n_classes, positive=positive)
        return cv[metric], -scores["log_loss"]

    # (dev score key, config number, config, its scorer) of the best config so far.
    best: tuple[tuple[float, float], int, EndModelConfig, _EpochScorer] | None = None
    trials: list[dict[str, Any]] = []
    for number, config in enumerate(configs):
        begun = time.perf_counter()
        say(f"end model: training {number + 1}/{len(configs)}: {_describe(config)}")
        data = _config_data(rows, soft, weights, config)
        torch.manual_seed(seed)
        model = build_text_classifier(featurizer.n_features, config.hidden, n_classes=n_classes)
        scorer = _EpochScorer(model, dev_score, featurizer, dev_list)
        fit(
            model,
            data,
            strategy="plain",
            optimizer=functools.partial(
                torch.optim.Adam, lr=config.lr, weight_decay=config.weight_decay
            ),
            loss=nn.CrossEntropyLoss(reduction="none"),
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=seed,
            shuffle=True,
            callbacks=[scorer],
        )
        assert scorer.best is not None
        trials.append(
            {
                **config.as_dict(),
                "best_epoch": scorer.best_epoch,
                f"dev_{metric}": scorer.best[0],
                "dev_log_loss": -scorer.best[1],
                f"dev_{metric}_by_epoch": [round(v, 4) for v in scorer.history],
                "seconds": round(time.perf_counter() - begun, 2),
                "selected": False,
            }
        )
        if best is None or scorer.best > best[0]:
            model.load_state_dict(scorer.best_state)
            best = (scorer.best, number, config, scorer)
    assert best is not None
    (score, _), number, config, scorer = best
    trials[number]["selected"] = True
    model, epochs, proba = scorer.model, scorer.best_epoch, scorer.best_proba
    threshold = (
        tune_threshold(gold, proba[:, positive], metric=metric, positive=positive) if tune else None
    )
    dev = classification_metrics(gold, proba, positive=positive, threshold=threshold)
    if tune:
        dev[metric] = score  # the cross-validated score the choice was made by
    seconds = time.perf_counter() - started
    say(
        f"end model: chose {_describe(config)} at epoch {epochs}, dev {metric} "
        f"{score:.4f} in {seconds:.1f} s"
    )
    return EndModelChoice(
        config=config,
        model=model,
        featurizer=featurizer,
        epochs=epochs,
        dev=dev,
        threshold=threshold,
        metric=metric,
        positive=positive,
        trials=trials,
        seconds=seconds,
    )


def _describe(config: EndModelConfig) -> str:
    shape = "logistic regression" if not config.hidden else f"MLP {list(config.hidden)}"
    extra = f", weight decay {config.weight_decay:g}" if config.weight_decay else ""
    return (
        f"{shape}, lr {config.lr:g}, up to {config.epochs} epochs, {config.targets} targets, "
        f"balance {config.balance}{extra}"
    )


@dataclass
class EndModelResult:
    """The chosen end model's scores on test (and dev), its config, and every trial."""

    test: dict[str, float]
    valid: dict[str, float]
    config: EndModelConfig
    train_rows: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    epochs: int = 0
    threshold: float | None = None
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        """JSON-ready: ``accuracy``, ``f1`` and ``macro_f1`` on test, then what was chosen
        and how."""
        return {
            "accuracy": self.test["accuracy"],
            "f1": self.test["f1"],
            "macro_f1": self.test["macro_f1"],
            "valid_accuracy": self.valid["accuracy"],
            "valid_f1": self.valid["f1"],
            "valid_macro_f1": self.valid["macro_f1"],
            "train_rows": self.train_rows,
            "epochs": self.epochs,
            "threshold": self.threshold,
            "seconds": round(self.seconds, 2),
            "config": self.config.as_dict(),
        }


def train_end_model(
    labeler: Labeler,
    train: tuple[Sequence[str], np.ndarray],
    valid: tuple[Sequence[str], np.ndarray],
    test: tuple[Sequence[str], np.ndarray],
    *,
    metric: str = "accuracy",
    featurizer: HashingFeaturizer | None = None,
    grid: Sequence[EndModelConfig] | None = None,
    seed: int = 123,
    progress: Progress | None = None,
) -> EndModelResult:
    """Train the text classifier on ``labeler``'s class probabilities of the covered rows of
    ``train`` = (texts, L), choose it on ``valid`` = (texts, gold labels) by ``metric``
    (:func:`select_end_model`), and score it once on ``test`` = (texts, gold labels).

    Raises:
        ValueError: no train row has an LF vote, or as :func:`select_end_model`.
    """
    texts, L = train
    L = np.asarray(L)
    covered = (L != ABSTAIN).any(axis=1)
    if not covered.any():
        raise ValueError(f"no LF voted on any of the {len(L)} train rows: nothing to learn from")
    proba = labeler.predict_proba(L[covered])
    choice = select_end_model(
        [t for t, c in zip(texts, covered, strict=True) if c],
        proba,
        None,
        valid[0],
        valid[1],
        n_classes=labeler.cardinality,
        metric=metric,
        positive=labeler.positive,
        featurizer=featurizer,
        grid=grid,
        seed=seed,
        progress=progress,
    )
    return EndModelResult(
        test=choice.scores(test[0], test[1]),
        valid=choice.dev,
        config=choice.config,
        train_rows=int(covered.sum()),
        trials=choice.trials,
        epochs=choice.epochs,
        threshold=choice.threshold,
        seconds=choice.seconds,
    )
