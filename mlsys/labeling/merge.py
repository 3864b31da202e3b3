"""Merge gold and weak labels into one training label per row, with a quality weight each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from sklearn.isotonic import IsotonicRegression

from mlsys.labeling.label_model import ABSTAIN

__all__ = [
    "LABEL_SOURCES",
    "MIN_WEIGHT",
    "MergeResult",
    "WeightModel",
    "Weighting",
    "fit_weight_model",
    "merge_labels",
]

Weighting = Literal["confidence", "calibrated", "per_source"]
LABEL_SOURCES: tuple[str, str, str] = ("gold", "weak", "none")
MIN_WEIGHT = 1e-3
"""Floor of a weak row's weight, so a weak label never vanishes from the loss entirely."""

_WEAK_COLUMNS = ("weak_label", "confidence")


@dataclass(frozen=True)
class WeightModel:
    """How a weak row's confidence becomes its training weight, as fitted on gold dev rows.

    - ``confidence``: the label model's own confidence (max class probability), as is.
    - ``calibrated``: P(weak label correct | confidence), fitted by isotonic regression on
      the dev rows, so it rises monotonically with confidence; evaluated by linear
      interpolation between the fitted knots and held constant beyond them.
    - ``per_source``: one weight for every weak row, the weak labels' accuracy on dev.

    Every weight is clipped to ``[MIN_WEIGHT, 1]``. ``dev_rows`` and ``dev_accuracy``
    describe the dev rows it was fitted on (rows with both a gold and a weak label).
    """

    method: Weighting
    dev_rows: int
    dev_accuracy: float | None
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    def weights(self, confidence: np.ndarray) -> np.ndarray:
        """Weights for weak rows with these confidences."""
        conf = np.asarray(confidence, dtype=np.float64)
        if self.method == "confidence":
            raw = conf
        elif self.method == "per_source":
            raw = np.full_like(conf, self.dev_accuracy if self.dev_accuracy is not None else 1.0)
        else:
            raw = np.interp(conf, self.knots_x, self.knots_y)
        return np.clip(raw, MIN_WEIGHT, 1.0)


@dataclass(frozen=True)
class MergeResult:
    """The merged frame and its bookkeeping.

    ``frame`` is the weak frame (same index, same rows, same order) plus ``label`` (Int64,
    <NA> where neither gold nor a weak label exists), ``label_source`` ("gold", "weak" or
    "none") and ``weight`` (float64: 1.0 for gold, the weight model's value for weak, 0.0
    for none). ``counts`` has one entry per label source, always all three, summing to the
    row count.
    """

    frame: pd.DataFrame
    counts: dict[str, int]
    weight_model: WeightModel


def merge_labels(
    weak: pd.DataFrame,
    gold: pd.Series,
    *,
    weighting: Weighting | WeightModel = "calibrated",
    dev_mask: pd.Series | None = None,
) -> MergeResult:
    """Give every row of ``weak`` one label: the gold label where there is one, else the weak
    label, else none, with a weight a trainer's loss can use.

    ``weak`` is a frame from ``weak_label_frame`` (``weak_label`` with ABSTAIN = -1,
    ``confidence``); ``gold`` holds gold labels on the same index, <NA> where a row has none.
    ``weighting`` names how weak rows are weighted (see :class:`WeightModel`), fitted here on
    the rows of ``dev_mask`` (default: every row with a gold label), or is a WeightModel
    fitted before, e.g. on a dev batch, to use as is. No row is ever dropped: rows without
    any label stay, with label <NA>, source "none" and weight 0, and are counted.
    """
    weak_labels, confidence = _check_weak(weak)
    gold_labels = _check_gold(gold, weak)
    if isinstance(weighting, WeightModel):
        model = weighting
    else:
        model = _fit(weighting, weak_labels, confidence, gold_labels, _dev(dev_mask, weak))

    has_gold = gold_labels.notna().to_numpy()
    has_weak = (weak_labels != ABSTAIN) & ~has_gold
    label = pd.Series(pd.NA, index=weak.index, dtype="Int64")
    label[has_weak] = weak_labels[has_weak]
    label[has_gold] = gold_labels[has_gold]
    source = np.where(has_gold, "gold", np.where(has_weak, "weak", "none"))
    weight = np.where(has_gold, 1.0, np.where(has_weak, model.weights(confidence), 0.0))

    frame = weak.copy()
    frame["label"] = label
    frame["label_source"] = pd.Series(source, index=weak.index, dtype="string")
    frame["weight"] = pd.Series(weight.astype(np.float64), index=weak.index)
    counts = {name: int((source == name).sum()) for name in LABEL_SOURCES}
    return MergeResult(frame=frame, counts=counts, weight_model=model)


def fit_weight_model(
    weak: pd.DataFrame,
    gold: pd.Series,
    *,
    weighting: Weighting = "calibrated",
    dev_mask: pd.Series | None = None,
) -> WeightModel:
    """Fit how weak rows are weighted on the rows that have both a gold and a weak label
    (within ``dev_mask`` when given); pass the result to :func:`merge_labels` as ``weighting``.
    """
    weak_labels, confidence = _check_weak(weak)
    gold_labels = _check_gold(gold, weak)
    return _fit(weighting, weak_labels, confidence, gold_labels, _dev(dev_mask, weak))


def _fit(
    weighting: Weighting,
    weak_labels: np.ndarray,
    confidence: np.ndarray,
    gold: pd.Series,
    dev: np.ndarray | None,
) -> WeightModel:
    if weighting not in ("confidence", "calibrated", "per_source"):
        raise ValueError(
            f"weighting must be 'confidence', 'calibrated' or 'per_source', got {weighting!r}"
        )
    usable = gold.notna().to_numpy() & (weak_labels != ABSTAIN)
    if dev is not None:
        usable &= dev
    n = int(usable.sum())
    truth = gold[usable].to_numpy(dtype=np.int64)
    correct = (weak_labels[usable] == truth).astype(np.float64)
    accuracy = float(correct.mean()) if n else None
    if weighting == "confidence":
        return WeightModel("confidence", dev_rows=n, dev_accuracy=accuracy)
    if n == 0:
        raise ValueError(
            f"weighting={weighting!r} needs dev rows with both a gold and a weak label; "
            f"found 0 among {int(gold.notna().sum())} gold row(s) "
            "(use weighting='confidence' or pass a fitted WeightModel)"
        )
    if weighting == "per_source":
        return WeightModel("per_source", dev_rows=n, dev_accuracy=accuracy)
    iso = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(confidence[usable], correct)
    return WeightModel(
        "calibrated",
        dev_rows=n,
        dev_accuracy=accuracy,
        knots_x=tuple(float(x) for x in iso.X_thresholds_),
        knots_y=tuple(float(y) for y in iso.y_thresholds_),
    )


def _check_weak(weak: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in _WEAK_COLUMNS if c not in weak.columns]
    if missing:
        raise ValueError(
            f"weak frame is missing column(s) {', '.join(missing)}; "
            f"found: {', '.join(map(str, weak.columns)) or '(none)'}"
        )
    taken = [c for c in ("label", "label_source", "weight") if c in weak.columns]
    if taken:
        raise ValueError(f"weak frame already has output column(s) {', '.join(taken)}")
    labels = weak["weak_label"]
    if labels.isna().any() or not is_numeric_dtype(labels.dtype) or is_bool_dtype(labels.dtype):
        raise ValueError(
            f"weak_label must be integers with ABSTAIN = {ABSTAIN} for no label, "
            f"got dtype {labels.dtype} with {int(labels.isna().sum())} missing value(s)"
        )
    bad = labels < ABSTAIN
    if bad.any():
        where = labels.index[bad.to_numpy()][0]
        raise ValueError(f"weak_label at index {where!r} is {labels[where]}, below {ABSTAIN}")
    confidence = weak["confidence"].to_numpy(dtype=np.float64, na_value=np.nan)
    out = ~((confidence >= 0.0) & (confidence <= 1.0))
    if out.any():
        position = int(np.flatnonzero(out)[0])
        raise ValueError(
            f"confidence at index {weak.index[position]!r} is {confidence[position]}, "
            "outside [0, 1]"
        )
    return labels.to_numpy(dtype=np.int64), confidence


def _check_gold(gold: pd.Series, weak: pd.DataFrame) -> pd.Series:
    if len(gold) != len(weak) or not gold.index.equals(weak.index):
        raise ValueError(
            f"gold ({len(gold)} rows) must have the same index as the weak frame ({len(weak)} rows)"
        )
    try:
        labels = gold.astype("Int64")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gold labels must be whole numbers or <NA>: {exc}") from exc
    cardinality = sum(1 for c in weak.columns if str(c).startswith("proba_"))
    bad = labels.notna() & (labels < 0)
    if cardinality:
        bad |= labels.notna() & (labels >= cardinality)
    if bad.any():
        where = labels.index[bad.to_numpy(dtype=bool)][0]
        upper = f"{cardinality - 1}" if cardinality else "k-1"
        raise ValueError(f"gold label at index {where!r} is {labels[where]}, outside [0, {upper}]")
    return labels


def _dev(dev_mask: pd.Series | None, weak: pd.DataFrame) -> np.ndarray | None:
    if dev_mask is None:
        return None
    if len(dev_mask) != len(weak) or not dev_mask.index.equals(weak.index):
        raise ValueError(
            f"dev_mask ({len(dev_mask)} rows) must have the same index as the weak frame "
            f"({len(weak)} rows)"
        )
    if not is_bool_dtype(dev_mask.dtype) or dev_mask.isna().any():
        raise ValueError(f"dev_mask must be boolean without missing values, got {dev_mask.dtype}")
    return dev_mask.to_numpy(dtype=bool)
