"""Drift and skew statistics, after TFDV: Jensen-Shannon for numbers, L-infinity for categories.

Drift compares a batch with an earlier one; skew compares serving data with the training
data. Both are the same computation, so :func:`compare` does both and only the ``kind``
of its result (and so its metric name) differs.

Usage::

    for d in compare(train_df, serving_df, schema_drift_specs(schema), kind="skew"):
        mlflow.log_metric(d.metric_name, d.value)   # e.g. skew_js_text_length
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlsys.validation.profile import Schema, Statistic

DriftKind = Literal["drift", "skew"]
On = Literal["value", "length"]
Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
Binning = Literal["quantile", "uniform"]
FloatArray = npt.NDArray[np.float64]


class _Missing:
    """The category that missing values (None, NaN, NA) are counted in."""

    def __repr__(self) -> str:
        return "<missing>"

    def __reduce__(self) -> str:
        # Unpickled as this module's one instance: a reference profile sent to a worker
        # keeps counting missing values in the category the worker counts them in.
        return "MISSING"


MISSING = _Missing()


@dataclass(frozen=True)
class DriftSpec:
    """How one feature is compared: by which statistic, on its values or (text) lengths,
    and from which value on the move is flagged with which severity.

    A suite keeps these in its ``meta`` (see :mod:`mlsys.validation.suites`), so a person
    tunes a threshold by editing the suite, like any other expectation.
    """

    column: str
    statistic: Statistic
    threshold: float
    on: On = "value"
    severity: Severity = "warning"

    def __post_init__(self) -> None:
        if self.statistic not in ("js", "linf"):
            raise ValueError(
                f"drift statistic of {self.column!r} must be 'js' or 'linf', got {self.statistic!r}"
            )
        if self.on not in ("value", "length"):
            raise ValueError(f"drift of {self.column!r} is on 'value' or 'length', got {self.on!r}")
        if not 0 < self.threshold <= 1:
            raise ValueError(
                f"drift threshold of {self.column!r} must be in (0, 1], got {self.threshold}"
            )
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"drift severity of {self.column!r} must be one of {SEVERITIES}, "
                f"got {self.severity!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "statistic": self.statistic,
            "on": self.on,
            "threshold": self.threshold,
            "severity": self.severity,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftSpec:
        known = {"column", "statistic", "on", "threshold", "severity"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"drift spec {dict(data)!r} has unknown keys {unknown}")
        missing = sorted({"column", "statistic", "threshold"} - set(data))
        if missing:
            raise ValueError(f"drift spec {dict(data)!r} lacks keys {missing}")
        return cls(**data)


def schema_drift_specs(schema: Schema) -> list[DriftSpec]:
    """How each feature of ``schema`` with a drift threshold is compared (text on its
    length)."""
    return [
        DriftSpec(
            column=f.name,
            statistic=f.drift_statistic,
            threshold=f.drift_threshold,
            on="length" if f.kind == "text" else "value",
        )
        for f in schema.features
        if f.drift_statistic is not None and f.drift_threshold is not None
    ]


@dataclass(frozen=True)
class FeatureDrift:
    """How far one feature moved between a reference and a current batch.

    ``on`` says what was compared: the values themselves or, for text, their length.
    """

    feature: str
    kind: DriftKind
    statistic: Statistic
    on: On
    value: float
    threshold: float
    drifted: bool
    severity: Severity = "warning"

    @property
    def metric_name(self) -> str:
        """A tracking metric name, e.g. ``drift_js_text_length`` or ``skew_linf_label``."""
        suffix = "_length" if self.on == "length" else ""
        return f"{self.kind}_{self.statistic}_{self.feature}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "kind": self.kind,
            "statistic": self.statistic,
            "on": self.on,
            "value": self.value,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "severity": self.severity,
        }

    def __str__(self) -> str:
        what = f"{self.feature} length" if self.on == "length" else self.feature
        verdict = "above" if self.drifted else "within"
        return (
            f"{self.kind} of {what}: {self.statistic} {self.value:.4f}, {verdict} "
            f"threshold {self.threshold:g}"
        )


def histograms(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    bins: int = 10,
    binning: Binning = "quantile",
) -> tuple[FloatArray, FloatArray]:
    """Counts of both samples over common bins.

    ``"quantile"`` cuts at the reference's quantiles (so each reference bin holds about the
    same mass, which keeps long-tailed features such as text length from landing in one
    bin) and adds one open bin below the reference's minimum and one above its maximum, so
    current values outside the reference range count as moved mass. ``"uniform"`` uses
    ``bins`` equal bins over the union range of both samples. The default of 10 bins is
    TFDV's; more bins on batches of a few hundred rows mostly measure sampling noise.
    """
    ref = _sample(reference, "reference")
    cur = _sample(current, "current")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if binning == "uniform":
        low = min(ref.min(), cur.min())
        high = max(ref.max(), cur.max())
        edges = np.linspace(low, high, bins + 1) if high > low else np.array([low - 0.5, low + 0.5])
        return (
            np.histogram(ref, edges)[0].astype(np.float64),
            np.histogram(cur, edges)[0].astype(np.float64),
        )
    if binning != "quantile":
        raise ValueError(f"binning must be 'quantile' or 'uniform', got {binning!r}")
    cuts = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    return _quantile_counts(ref, cuts), _quantile_counts(cur, cuts)


def _quantile_counts(sample: FloatArray, cuts: FloatArray) -> FloatArray:
    """Counts in [below min, cuts[0]..cuts[1], ..., cuts[-2]..cuts[-1], above max]; the
    last inner bin is closed so the reference maximum stays inside the reference range."""
    inner = max(len(cuts) - 1, 1)
    index = np.clip(np.searchsorted(cuts, sample, side="right") - 1, 0, inner - 1) + 1
    index = np.where(sample < cuts[0], 0, np.where(sample > cuts[-1], inner + 1, index))
    return np.bincount(index, minlength=inner + 2).astype(np.float64)


def jensen_shannon(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Jensen-Shannon divergence, base 2 (so in [0, 1]), of two histograms.

    The histograms are normalised first; terms with zero mass contribute 0 (0 log 0 = 0).
    This is the square of SciPy's ``jensenshannon(p, q, base=2)``, which is a distance.
    """
    p_arr = np.asarray(p, dtype=np.float64)
    q_arr = np.asarray(q, dtype=np.float64)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"histograms differ in shape: {p_arr.shape} vs {q_arr.shape}")
    for name, h in (("p", p_arr), ("q", q_arr)):
        if (h < 0).any() or not h.sum() > 0:
            raise ValueError(f"histogram {name} needs non-negative counts with a positive sum")
    p_arr = p_arr / p_arr.sum()
    q_arr = q_arr / q_arr.sum()
    m = (p_arr + q_arr) / 2
    divergence = 0.5 * _kl(p_arr, m) + 0.5 * _kl(q_arr, m)
    return float(np.clip(divergence, 0.0, 1.0))


def _kl(p: FloatArray, m: FloatArray) -> float:
    mass = p > 0
    return float(np.sum(p[mass] * np.log2(p[mass] / m[mass])))


def js_divergence(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    bins: int = 10,
    binning: Binning = "quantile",
) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two numeric samples, histogrammed
    on common bins (see :func:`histograms`): 0 for the same distribution, 1 for disjoint
    supports."""
    return jensen_shannon(*histograms(reference, current, bins=bins, binning=binning))


def linf_distance(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """L-infinity distance of two categorical samples: the largest absolute difference in
    a category's frequency, over the union of categories, missing values counting as one
    category of their own (a rising null rate is drift too)."""
    return _linf(
        _category_counts(pd.Series(reference), "reference"),
        _category_counts(pd.Series(current), "current"),
    )


def _linf(reference: pd.Series[float], current: pd.Series[float]) -> float:
    """L-infinity distance of two samples given as counts per category."""
    ref = reference / reference.sum()
    cur = current / current.sum()
    categories = ref.index.union(cur.index, sort=False)
    diff = ref.reindex(categories, fill_value=0.0) - cur.reindex(categories, fill_value=0.0)
    return float(diff.abs().max())


def compare(
    reference_df: pd.DataFrame,
    current_df: pd.DataFrame,
    specs: Iterable[DriftSpec],
    *,
    kind: DriftKind = "drift",
    bins: int = 10,
) -> list[FeatureDrift]:
    """Compare ``reference_df`` and ``current_df`` on every feature of ``specs``.

    Numeric features are compared by JS divergence of their values, text features by JS
    divergence of their character lengths (``on="length"``), categorical ones by
    L-infinity distance. Nulls are left out of the JS samples (null fractions are bounded
    by expectations) and kept as a category for L-infinity. Pass training data as
    reference and serving data as current with ``kind="skew"`` for a training/serving
    skew check.

    The same numbers come out of the reference's :class:`ReferenceProfile`, the current
    batch's :func:`feature_counts` summed over any split of its rows, and
    :func:`drift_from_counts`; this function is that path on one whole batch.
    """
    if kind not in ("drift", "skew"):
        raise ValueError(f"kind must be 'drift' or 'skew', got {kind!r}")
    results: list[FeatureDrift] = []
    for spec in specs:
        name = spec.column
        for label, df in (("reference", reference_df), ("current", current_df)):
            if name not in df.columns:
                raise ValueError(f"feature {name!r} is missing from the {label} batch")
            if df[name].notna().sum() == 0:
                raise ValueError(f"feature {name!r} has no values in the {label} batch")
        profile = reference_profile(reference_df, spec, bins=bins)
        results.append(drift_from_counts(profile, feature_counts(current_df, profile), kind))
    return results


@dataclass(frozen=True)
class ReferenceProfile:
    """What the current batch is counted against for one feature: the reference's bins
    (quantile cuts, for JS) and counts per bin, or its counts per category (L-infinity).
    Counts of the current batch add up over any split of its rows, so a batch validated in
    partitions gets the drift of one pass over it."""

    spec: DriftSpec
    counts: pd.Series[float]  # per bin (JS: 0..len(cuts)) or per category (L-infinity)
    cuts: FloatArray | None = None


def reference_profile(
    reference_df: pd.DataFrame, spec: DriftSpec, *, bins: int = 10
) -> ReferenceProfile:
    """The reference batch's bins and counts for ``spec`` (see :func:`histograms`)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    column = reference_df[spec.column]
    if spec.statistic == "linf":
        return ReferenceProfile(spec, _category_counts(column, "reference"))
    return _binned(spec, _sample(_numbers(column, spec.on), "reference"), bins)


def _binned(spec: DriftSpec, ref: FloatArray, bins: int) -> ReferenceProfile:
    """The profile of a numeric feature: ``bins`` quantile bins of the reference values."""
    cuts = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    return ReferenceProfile(spec, pd.Series(_quantile_counts(ref, cuts)), cuts)


def reference_profiles(
    parts: Iterable[pd.DataFrame], specs: Sequence[DriftSpec], *, bins: int = 10
) -> list[ReferenceProfile]:
    """The reference batch's profile for each of ``specs`` whose column holds a value in
    it, read in one pass over the batch's ``parts`` (consecutive row ranges, in order):
    the profiles :func:`reference_profile` gives on the whole batch. Between parts it
    keeps the categories' counts and, for a numeric feature, one float per value (the
    quantile cuts need them all), never the parts' other columns."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    counts: dict[int, list[pd.Series[float]]] = {}
    numbers: dict[int, list[FloatArray]] = {}
    valued: set[int] = set()
    for part in parts:
        for at, spec in enumerate(specs):
            if spec.column not in part.columns:
                continue
            column = part[spec.column]
            if column.notna().any():
                valued.add(at)
            if spec.statistic == "linf":
                counts.setdefault(at, []).append(_category_counts(column, None))
            else:
                numbers.setdefault(at, []).append(_numbers(column, spec.on))
    profiles = []
    for at, spec in enumerate(specs):
        if at not in valued:
            continue
        if spec.statistic == "linf":
            profiles.append(ReferenceProfile(spec, add_counts(counts[at])))
            continue
        ref = _sample(np.concatenate(numbers.pop(at)), "reference")
        profiles.append(_binned(spec, ref, bins))
    return profiles


def feature_counts(df: pd.DataFrame, profile: ReferenceProfile) -> pd.Series[float]:
    """``df``'s counts on ``profile``'s bins or categories (empty when the feature has no
    values here); add the counts of a batch's parts with :func:`add_counts`."""
    column = df[profile.spec.column]
    if profile.cuts is None:
        return _category_counts(column, None)
    values = _numbers(column, profile.spec.on)
    if values.size == 0:
        return pd.Series(np.zeros(len(profile.counts)))
    return pd.Series(_quantile_counts(_sample(values, "current"), profile.cuts))


def add_counts(parts: Iterable[pd.Series[float]]) -> pd.Series[float]:
    """The counts of a batch from the counts of its parts."""
    frames = [p for p in parts if not p.empty]
    if not frames:
        return pd.Series(dtype=np.float64)
    total = pd.concat(frames)
    return total.groupby(level=0, sort=False).sum().astype(np.float64)


def drift_from_counts(
    profile: ReferenceProfile, current: pd.Series[float], kind: DriftKind = "drift"
) -> FeatureDrift:
    """How far the current batch (its counts on ``profile``) moved from the reference."""
    spec = profile.spec
    if not current.sum() > 0:
        raise ValueError(f"feature {spec.column!r} has no values in the current batch")
    if profile.cuts is None:
        value = _linf(profile.counts, current)
    else:
        value = jensen_shannon(profile.counts.to_numpy(), current.to_numpy())
    return FeatureDrift(
        feature=spec.column,
        kind=kind,
        statistic=spec.statistic,
        on=spec.on,
        value=value,
        threshold=spec.threshold,
        drifted=value > spec.threshold,
        severity=spec.severity,
    )


def _category_counts(values: pd.Series[Any], label: str | None) -> pd.Series[float]:
    """Counts per category, missing values counting as one category of their own."""
    series = values.astype(object)
    if series.empty:
        if label is not None:
            raise ValueError(f"the {label} sample is empty")
        return pd.Series(dtype=np.float64)
    series = series.where(series.notna(), MISSING)
    return series.value_counts(dropna=False, sort=False).astype(np.float64)


def _numbers(series: pd.Series[Any], on: On) -> FloatArray:
    values = series.dropna()
    if on == "length":
        values = values.str.len()
    return values.to_numpy(dtype=np.float64)


def _sample(values: npt.ArrayLike, label: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"the {label} sample is empty")
    nan = int(np.isnan(array).sum())
    if nan:
        raise ValueError(f"the {label} sample has {nan} NaN values; drop them first")
    return array
