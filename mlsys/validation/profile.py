"""Schema inference and checking, after TFDV's ``infer_schema`` / ``validate_statistics``.

A schema is plain data (one :class:`FeatureSchema` per column) so it can be reviewed,
versioned as JSON next to the code, and turned into a Great Expectations suite by a later
step. Inference is deliberately loose (bounds widened by ``slack``) because a schema
learnt from one batch must accept the next healthy batch; a person tightens it by editing
the JSON, as TFDV intends.

Usage::

    schema = infer_schema(train_df, id_columns=("comment_id",))
    violations = schema.check(new_df)           # what is wrong, per column
    bad = schema.failing_rows(new_df)           # which rows to quarantine
    passed, quarantined = new_df[~bad], new_df[bad]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import pandas as pd

Kind = Literal["numeric", "categorical", "text", "datetime", "id"]
Expectation = Literal[
    "column_exists",
    "dtype",
    "max_null_fraction",
    "value_set",
    "numeric_bounds",
    "text_length_bounds",
    "datetime_format",
    "unique",
]
Statistic = Literal["js", "linf"]
Scalar = str | int | float | bool
Observed = Scalar | tuple[Scalar, ...]

KINDS: tuple[str, ...] = get_args(Kind)
MAX_EXAMPLES = 5
# ISO 8601 only: unambiguous (no day/month guessing) and parsed without pandas's slow,
# per-element dateutil fallback.
ISO_DATE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?"


@dataclass(frozen=True)
class FeatureSchema:
    """What one column may hold.

    Args:
        name: the column.
        kind: how the column is constrained and compared for drift.
        dtype: the pandas dtype, as ``str(series.dtype)``.
        null_fraction: the fraction of nulls observed at inference.
        max_null_fraction: the fraction of nulls allowed; 0 means a null fails its row.
        value_set: allowed values of a categorical column, sorted.
        min_value, max_value: allowed range of a numeric column.
        min_length, max_length: allowed character length of a text column.
        unique: whether values must be distinct (id columns).
        drift_statistic, drift_threshold: how drift is measured and when it is flagged;
            ``None`` for kinds that are not compared (ids, dates).
    """

    name: str
    kind: Kind
    dtype: str
    null_fraction: float
    max_null_fraction: float
    value_set: tuple[Scalar, ...] | None = None
    min_value: float | None = None
    max_value: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    unique: bool = False
    drift_statistic: Statistic | None = None
    drift_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields in declaration order, JSON-ready (tuples become lists)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "dtype": self.dtype,
            "null_fraction": self.null_fraction,
            "max_null_fraction": self.max_null_fraction,
            "value_set": None if self.value_set is None else list(self.value_set),
            "min_value": self.min_value,
            "max_value": self.max_value,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "unique": self.unique,
            "drift_statistic": self.drift_statistic,
            "drift_threshold": self.drift_threshold,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Inverse of :meth:`to_dict`; rejects unknown keys and kinds so a typo in a
        hand-edited schema fails loudly instead of silently dropping a constraint."""
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"feature {data.get('name')!r} has unknown keys {unknown}")
        required = {"name", "kind", "dtype", "null_fraction", "max_null_fraction"}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"feature {data.get('name')!r} lacks keys {missing}")
        if data.get("kind") not in KINDS:
            name, kind = data.get("name"), data.get("kind")
            raise ValueError(f"feature {name!r} has kind {kind!r}; expected one of {KINDS}")
        values = data.get("value_set")
        return cls(**{**data, "value_set": None if values is None else tuple(values)})

    def row_failures(self, series: pd.Series[Any]) -> dict[Expectation, pd.Series[bool]]:
        """Per row-level rule, the rows of ``series`` that break it.

        Column-level rules (presence, dtype, the null fraction when nulls are allowed) are
        not here: they judge the batch, not a row.
        """
        present = series.notna()
        failures: dict[Expectation, pd.Series[bool]] = {}
        if self.max_null_fraction == 0:
            failures["max_null_fraction"] = ~present
        if self.value_set is not None:
            failures["value_set"] = present & ~series.isin(list(self.value_set))
        if self.min_value is not None and self.max_value is not None:
            values = series.astype("Float64")
            outside = (values < self.min_value) | (values > self.max_value)
            failures["numeric_bounds"] = outside.fillna(False).astype(bool)
        if self.min_length is not None and self.max_length is not None:
            lengths = series.str.len()
            outside = (lengths < self.min_length) | (lengths > self.max_length)
            failures["text_length_bounds"] = outside.fillna(False).astype(bool)
        if self.kind == "datetime" and not pd.api.types.is_datetime64_any_dtype(series.dtype):
            iso = series.astype("string").str.match(ISO_DATE)
            failures["datetime_format"] = present & ~iso.fillna(False).astype(bool)
        if self.unique:
            failures["unique"] = present & series.duplicated(keep="first")
        return failures

    def check(self, df: pd.DataFrame) -> list[Violation]:
        """The violations of this feature in ``df``, column-level rules first."""
        if self.name not in df.columns:
            return [Violation(self.name, "column_exists", "missing", "present", len(df))]
        series = df[self.name]
        dtype = str(series.dtype)
        if dtype != self.dtype:
            # Value rules would compare values of another type: report the cause only.
            return [Violation(self.name, "dtype", dtype, self.dtype, len(df))]
        violations: list[Violation] = []
        nulls = int(series.isna().sum())
        fraction = nulls / len(series) if len(series) else 0.0
        if fraction > self.max_null_fraction:
            violations.append(
                Violation(self.name, "max_null_fraction", fraction, self.max_null_fraction, nulls)
            )
        for expectation, mask in self.row_failures(series).items():
            count = int(mask.sum())
            if expectation == "max_null_fraction" or count == 0:
                continue
            bad = series[mask]
            if expectation == "text_length_bounds":
                bad = bad.str.len()
            examples = tuple(_scalar(v) for v in bad.value_counts().index[:MAX_EXAMPLES])
            violations.append(
                Violation(self.name, expectation, examples, self._bound(expectation), count)
            )
        return violations

    def _bound(self, expectation: Expectation) -> Observed:
        if expectation == "value_set" and self.value_set is not None:
            return self.value_set
        if expectation == "numeric_bounds" and self.min_value is not None:
            return (self.min_value, cast(float, self.max_value))
        if expectation == "text_length_bounds" and self.min_length is not None:
            return (self.min_length, cast(int, self.max_length))
        if expectation == "datetime_format":
            return "ISO 8601"
        return "unique"


@dataclass(frozen=True)
class Violation:
    """One broken rule: which column, which rule, what was seen, and what was allowed.

    ``observed`` is the statistic for batch rules (a dtype, a null fraction) and up to
    five offending values (most frequent first; lengths for text) for row rules.
    ``count`` is the number of offending rows (all rows for a missing column or a wrong
    dtype).
    """

    column: str
    expectation: Expectation
    observed: Observed
    bound: Observed
    count: int

    def __str__(self) -> str:
        return (
            f"{self.column}: {self.expectation} failed on {self.count} rows: "
            f"observed {self.observed!r}, allowed {self.bound!r}"
        )


@dataclass(frozen=True)
class Schema:
    """The inferred schema of a batch: one :class:`FeatureSchema` per column, in order."""

    features: tuple[FeatureSchema, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"schema has repeated feature names {repeated}")

    def feature(self, name: str) -> FeatureSchema:
        """The feature called ``name``."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r}; the schema has {[f.name for f in self.features]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with a stable key order so versioned schemas diff cleanly."""
        return {"features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        """Inverse of :meth:`to_dict`."""
        if set(data) != {"features"}:
            raise ValueError(f"a schema dict has exactly the key 'features'; got {sorted(data)}")
        return cls(tuple(FeatureSchema.from_dict(f) for f in data["features"]))

    def check(self, df: pd.DataFrame) -> list[Violation]:
        """Every violation of ``df``, feature by feature.

        Columns of ``df`` that the schema does not name are not reported: later stages add
        columns (labels, probabilities) and a schema only constrains what it knows.
        """
        return [v for f in self.features for v in f.check(df)]

    def failing_rows(self, df: pd.DataFrame) -> pd.Series[bool]:
        """True for rows that break a row-level rule, so a caller can quarantine them
        (rows in = passed + quarantined). A missing column or a wrong dtype fails the
        batch as a whole and marks no rows: see :meth:`check`."""
        failing = pd.Series(False, index=df.index, dtype=bool)
        for f in self.features:
            if f.name not in df.columns or str(df[f.name].dtype) != f.dtype:
                continue
            for mask in f.row_failures(df[f.name]).values():
                failing |= mask
        return failing


def infer_schema(
    df: pd.DataFrame,
    *,
    text_columns: Sequence[str] = ("text",),
    id_columns: Sequence[str] = (),
    max_categories: int = 20,
    quantiles: tuple[float, float] = (0.001, 0.999),
    slack: float = 0.1,
    js_threshold: float = 0.1,
    linf_threshold: float = 0.1,
) -> Schema:
    """Infer a :class:`Schema` from a batch, the way TFDV's ``infer_schema`` does.

    Kinds, in order of precedence: a column in ``text_columns`` is text (checked by its
    character length) and one in ``id_columns`` is an id (must be unique, even if this
    batch already repeats a value: declaring it says what the data should be); datetime
    dtypes and strings that are all ISO 8601 dates are dates; floats are numeric; other
    columns with at most ``max_categories`` distinct values are categorical; remaining
    integers are numeric; remaining strings are ids when all distinct and text otherwise.

    Bounds come from the ``quantiles`` (not min/max, so one outlier in the training batch
    does not widen the schema) and are widened by ``slack`` times their range; the allowed
    null fraction is the observed one plus ``slack`` (capped at 1), or 0 if none was seen.

    Args:
        df: the batch, at least one row.
        text_columns: free-text columns.
        id_columns: columns whose values must be unique.
        max_categories: the most distinct values a categorical column may have.
        quantiles: lower and upper quantile for numeric and length bounds.
        slack: relative widening of bounds and of the null fraction.
        js_threshold: drift threshold of numeric and text (length) features.
        linf_threshold: drift threshold of categorical features.
    """
    if df.empty:
        raise ValueError(f"cannot infer a schema from an empty batch ({df.shape[0]} rows)")
    for name, declared in (("text_columns", text_columns), ("id_columns", id_columns)):
        missing = [c for c in declared if c not in df.columns]
        if missing:
            raise ValueError(f"{name} {missing} are not columns of the batch {list(df.columns)}")
    both = sorted(set(text_columns) & set(id_columns))
    if both:
        raise ValueError(f"columns {both} are in both text_columns and id_columns")
    if max_categories < 1:
        raise ValueError(f"max_categories must be at least 1, got {max_categories}")
    low, high = quantiles
    if not 0 <= low < high <= 1:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    if not (math.isfinite(slack) and slack >= 0):
        raise ValueError(f"slack must be a finite number >= 0, got {slack}")
    for name, threshold in (("js_threshold", js_threshold), ("linf_threshold", linf_threshold)):
        if not 0 < threshold <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {threshold}")
    return Schema(
        tuple(
            _infer_feature(
                str(column),
                df[column],
                text=column in text_columns,
                identifier=column in id_columns,
                max_categories=max_categories,
                quantiles=quantiles,
                slack=slack,
                thresholds={"js": js_threshold, "linf": linf_threshold},
            )
            for column in df.columns
        )
    )


def _infer_feature(
    name: str,
    series: pd.Series[Any],
    *,
    text: bool,
    identifier: bool,
    max_categories: int,
    quantiles: tuple[float, float],
    slack: float,
    thresholds: Mapping[Statistic, float],
) -> FeatureSchema:
    present = series.dropna()
    null_fraction = 1 - len(present) / len(series)
    common: dict[str, Any] = {
        "name": name,
        "dtype": str(series.dtype),
        "null_fraction": null_fraction,
        "max_null_fraction": min(1.0, null_fraction + slack) if null_fraction > 0 else 0.0,
    }
    dtype = series.dtype
    stringlike = pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)
    if text:
        if not stringlike:
            raise ValueError(f"text column {name!r} has dtype {dtype}, not a string dtype")
        return _text(present, quantiles, slack, thresholds["js"], common)
    if identifier:
        return FeatureSchema(kind="id", unique=True, **common)
    if pd.api.types.is_datetime64_any_dtype(dtype) or (
        stringlike and len(present) > 0 and bool(present.astype("string").str.match(ISO_DATE).all())
    ):
        return FeatureSchema(kind="datetime", **common)
    if pd.api.types.is_float_dtype(dtype):
        return _numeric(present, quantiles, slack, thresholds["js"], common)
    distinct = present.unique()
    if len(distinct) <= max_categories:
        values = sorted((_scalar(v) for v in distinct), key=lambda v: (type(v).__name__, v))
        return FeatureSchema(
            kind="categorical",
            value_set=tuple(values),
            drift_statistic="linf",
            drift_threshold=thresholds["linf"],
            **common,
        )
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return _numeric(present, quantiles, slack, thresholds["js"], common)
    if not stringlike:
        raise ValueError(f"column {name!r} has dtype {dtype}, which no schema kind covers")
    if len(distinct) == len(present):
        return FeatureSchema(kind="id", unique=True, **common)
    return _text(present, quantiles, slack, thresholds["js"], common)


def _text(
    present: pd.Series[Any],
    quantiles: tuple[float, float],
    slack: float,
    threshold: float,
    common: dict[str, Any],
) -> FeatureSchema:
    """A text feature: bounds on its length in characters, drift of that length by JS."""
    low, high = _widened(present.str.len(), quantiles, slack)
    return FeatureSchema(
        kind="text",
        min_length=max(0, math.floor(low)),
        max_length=math.ceil(high),
        drift_statistic="js",
        drift_threshold=threshold,
        **common,
    )


def _numeric(
    present: pd.Series[Any],
    quantiles: tuple[float, float],
    slack: float,
    threshold: float,
    common: Mapping[str, Any],
) -> FeatureSchema:
    low, high = _widened(present, quantiles, slack)
    return FeatureSchema(
        kind="numeric",
        min_value=low,
        max_value=high,
        drift_statistic="js",
        drift_threshold=threshold,
        **common,
    )


def _widened(
    values: pd.Series[Any], quantiles: tuple[float, float], slack: float
) -> tuple[float, float]:
    """The quantile range of ``values`` widened by ``slack`` times its width."""
    array = values.to_numpy(dtype=float, na_value=np.nan)
    array = array[~np.isnan(array)]
    if array.size == 0:
        raise ValueError(f"cannot bound a column with no values ({values.name!r})")
    low, high = (float(q) for q in np.quantile(array, quantiles))
    width = high - low
    return low - slack * width, high + slack * width


def _scalar(value: Any) -> Scalar:
    """A numpy or pandas scalar as the plain Python value JSON can hold."""
    plain = value.item() if isinstance(value, np.generic) else value
    if not isinstance(plain, str | int | float | bool):
        raise ValueError(f"value {value!r} of type {type(value).__name__} is not a JSON scalar")
    return plain
