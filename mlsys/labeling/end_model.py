"""The end model of weak supervision: the pipeline's text classifier trained on a label
model's output, as `mlsys label evaluate --end-model` scores it on a benchmark.

The label model only labels rows some LF voted on; the end model generalizes from their
text to every row. Here it learns from the covered train rows (the label model's most
probable class, weighted by its probability), is chosen on the valid split's gold labels
from a small grid (learning rate x hidden widths x epochs), and is scored once on test.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mlsys.labeling.label_model import ABSTAIN, Labeler
from mlsys.models.text import (
    HashingFeaturizer,
    TextDataset,
    build_text_classifier,
    pipeline_featurizer,
    score_texts,
)
from mlsys.training import fit

__all__ = ["EndModelConfig", "EndModelResult", "default_end_model_grid", "train_end_model"]


@dataclass(frozen=True)
class EndModelConfig:
    """One end-model candidate: Adam learning rate, hidden widths ([] is logistic
    regression on the hashed features), epochs and batch size."""

    lr: float = 0.01
    hidden: tuple[int, ...] = (64,)
    epochs: int = 8
    batch_size: int = 64


def default_end_model_grid() -> list[EndModelConfig]:
    """lr in {0.003, 0.01, 0.03} x hidden in {linear, [64]} x epochs in {4, 8}: 12 fits."""
    return [
        EndModelConfig(lr=lr, hidden=hidden, epochs=epochs)
        for lr in (0.003, 0.01, 0.03)
        for hidden in ((), (64,))
        for epochs in (4, 8)
    ]


@dataclass
class EndModelResult:
    """The chosen end model's scores on test (and valid), its config, and every trial."""

    test: dict[str, float]
    valid: dict[str, float]
    config: EndModelConfig
    train_rows: int
    trials: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """JSON-ready: ``accuracy`` and ``f1`` on test, then what was chosen and how."""
        return {
            "accuracy": self.test["accuracy"],
            "f1": self.test["f1"],
            "valid_accuracy": self.valid["accuracy"],
            "train_rows": self.train_rows,
            "config": {**asdict(self.config), "hidden": list(self.config.hidden)},
        }


def train_end_model(
    labeler: Labeler,
    train: tuple[Sequence[str], np.ndarray],
    valid: tuple[Sequence[str], np.ndarray],
    test: tuple[Sequence[str], np.ndarray],
    *,
    featurizer: HashingFeaturizer | None = None,
    grid: Sequence[EndModelConfig] | None = None,
    seed: int = 123,
) -> EndModelResult:
    """Train the text classifier on ``labeler``'s labels of ``train`` = (texts, L), choose
    the grid point with the best accuracy on ``valid`` = (texts, gold labels) (ties: lower
    log loss, then the earlier point), and score it on ``test`` = (texts, gold labels).

    Raises:
        ValueError: no train row has an LF vote, or the grid is empty.
    """
    featurizer = featurizer or pipeline_featurizer()
    configs = list(grid) if grid is not None else default_end_model_grid()
    if not configs:
        raise ValueError("the end-model grid is empty")
    texts, L = train
    L = np.asarray(L)
    covered = (L != ABSTAIN).any(axis=1)
    if not covered.any():
        raise ValueError(f"no LF voted on any of the {len(L)} train rows: nothing to learn from")
    proba = labeler.predict_proba(L[covered])
    data = TextDataset(
        [t for t, c in zip(texts, covered, strict=True) if c],
        proba.argmax(axis=1),
        featurizer,
        weights=proba.max(axis=1),
        n_classes=labeler.cardinality,
    )
    best: tuple[float, float] | None = None
    chosen: tuple[EndModelConfig, nn.Module, dict[str, float]] | None = None
    trials = []
    for config in configs:
        torch.manual_seed(seed)
        model = build_text_classifier(
            featurizer.n_features, hidden=config.hidden, n_classes=labeler.cardinality
        )
        fitted = fit(
            model,
            data,
            strategy="plain",
            optimizer=functools.partial(torch.optim.Adam, lr=config.lr),
            loss=nn.CrossEntropyLoss(reduction="none"),
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=seed,
            shuffle=True,
        )
        scores, _ = score_texts(fitted.model, featurizer, valid[0], valid[1])
        trials.append({**asdict(config), **{f"valid_{k}": v for k, v in scores.items()}})
        key = (scores["accuracy"], -scores["log_loss"])
        if best is None or key > best:
            best, chosen = key, (config, fitted.model, scores)
    assert chosen is not None
    config, best_model, valid_scores = chosen
    test_scores, _ = score_texts(best_model, featurizer, test[0], test[1])
    return EndModelResult(
        test=test_scores,
        valid=valid_scores,
        config=config,
        train_rows=int(covered.sum()),
        trials=trials,
    )
