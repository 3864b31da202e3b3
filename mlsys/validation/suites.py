"""Expectation suites as plain data: inferred from a batch, versioned, evolved on request.

A suite here is the JSON document Great Expectations stores under
``gx/expectations/<name>.json`` (``name``, ``id``, ``expectations``, ``meta``, ``notes``).
Keeping it as a dict lets schema inference, versioning and evolution run without
importing GX; :mod:`mlsys.validation.checkpoint` hands the dict to GX to run it.

What GX does not model lives in ``meta["mlsys"]``:

- ``version``: 1 for an inferred suite, +1 for each accepted update; ``parent`` is the
  version it came from, ``updated_from`` the batch that caused the update;
- ``drift``: one :class:`~mlsys.validation.drift.DriftSpec` per compared feature
  (statistic, threshold, severity).

Which rules a failing row is quarantined for: a *row rule* is a column-map expectation
(nulls, sets, ranges, lengths, patterns, uniqueness) that is ``critical`` and has no
``mostly`` below 1. Everything else (column sets, types, null fractions with
``mostly``, class balance) judges the batch as a whole.

Usage::

    suite = suite_from_schema(infer_schema(df, id_columns=["comment_id"]), "raw")
    updated, changes = evolve_suite(suite, new_batch, updated_from="s3://.../b2.parquet")
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlsys.validation.drift import DriftSpec, FeatureDrift, schema_drift_specs
from mlsys.validation.profile import ISO_DATE, FeatureSchema, Schema

Suite = dict[str, Any]

SUITE_NAMES: tuple[str, ...] = ("raw", "training", "serving")

# Column-map expectations: GX reports the failing rows of each (unexpected_index_list).
ROW_RULES = frozenset(
    {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_in_set",
        "expect_column_values_to_be_between",
        "expect_column_value_lengths_to_be_between",
        "expect_column_values_to_match_regex",
        "expect_column_values_to_not_match_regex",
        "expect_column_values_to_be_unique",
    }
)


def gx_type(dtype: Any) -> str:
    """The name under which GX's ``expect_column_values_to_be_in_type_list`` accepts a
    pandas column of ``dtype``: the class name of an extension dtype (``StringDtype``,
    ``Int64Dtype``), the numpy name otherwise (``int64``, ``float64``, ``bool``)."""
    resolved = pd.api.types.pandas_dtype(dtype)
    if isinstance(resolved, pd.api.extensions.ExtensionDtype):
        return type(resolved).__name__
    return str(resolved.name)


def expectation(
    type_: str, *, severity: str = "critical", meta: Mapping[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """One expectation in GX's JSON form, with a fresh id."""
    if severity not in ("critical", "warning", "info"):
        raise ValueError(f"severity of {type_} must be critical, warning or info; got {severity!r}")
    return {
        "id": str(uuid.uuid4()),
        "type": type_,
        "kwargs": dict(kwargs),
        "meta": dict(meta or {}),
        "severity": severity,
    }


def is_row_rule(exp: Mapping[str, Any]) -> bool:
    """Whether a failure of ``exp`` quarantines rows rather than failing the batch."""
    mostly = exp.get("kwargs", {}).get("mostly")
    return (
        exp.get("type") in ROW_RULES
        and exp.get("severity", "critical") == "critical"
        and (mostly is None or mostly >= 1)
    )


def suite_from_schema(
    schema: Schema,
    name: str,
    *,
    notes: str | None = None,
    inferred_from: str | None = None,
) -> Suite:
    """The GX suite that enforces ``schema``: the exact column set, each column's type,
    its nulls, value set, bounds, text lengths, date format and uniqueness, plus the
    schema's drift thresholds in ``meta``.

    A column that may be null (``max_null_fraction > 0``) gets a ``mostly`` on its
    not-null expectation, which makes it a batch rule: a null is allowed, too many are not.
    """
    expectations = [
        expectation(
            "expect_table_columns_to_match_set",
            column_set=[f.name for f in schema.features],
            exact_match=True,
        )
    ]
    for feature in schema.features:
        expectations.extend(_feature_expectations(feature))
    meta: dict[str, Any] = {
        "version": 1,
        "parent": None,
        "drift": [spec.to_dict() for spec in schema_drift_specs(schema)],
    }
    if inferred_from is not None:
        meta["inferred_from"] = inferred_from
    return {
        "name": name,
        "id": str(uuid.uuid4()),
        "expectations": expectations,
        "meta": {"mlsys": meta},
        "notes": notes,
    }


def _feature_expectations(f: FeatureSchema) -> list[dict[str, Any]]:
    col = f.name
    out = [
        expectation(
            "expect_column_values_to_be_in_type_list", column=col, type_list=[gx_type(f.dtype)]
        )
    ]
    if f.max_null_fraction == 0:
        out.append(expectation("expect_column_values_to_not_be_null", column=col))
    elif f.max_null_fraction < 1:
        mostly = math.floor((1 - f.max_null_fraction) * 1000) / 1000
        out.append(expectation("expect_column_values_to_not_be_null", column=col, mostly=mostly))
    if f.value_set is not None:
        out.append(
            expectation(
                "expect_column_values_to_be_in_set", column=col, value_set=list(f.value_set)
            )
        )
    if f.min_value is not None and f.max_value is not None:
        out.append(
            expectation(
                "expect_column_values_to_be_between",
                column=col,
                min_value=f.min_value,
                max_value=f.max_value,
            )
        )
    if f.min_length is not None and f.max_length is not None:
        out.append(
            expectation(
                "expect_column_value_lengths_to_be_between",
                column=col,
                min_value=f.min_length,
                max_value=f.max_length,
            )
        )
    if f.kind == "datetime" and not f.dtype.startswith("datetime"):
        out.append(expectation("expect_column_values_to_match_regex", column=col, regex=ISO_DATE))
    if f.unique:
        out.append(expectation("expect_column_values_to_be_unique", column=col))
    return out


def mlsys_meta(suite: Mapping[str, Any]) -> dict[str, Any]:
    """The suite's ``meta["mlsys"]`` (version, parent, drift), empty for a bare GX suite."""
    meta = suite.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"suite {suite.get('name')!r}: meta must be an object, got {meta!r}")
    value = meta.get("mlsys", {})
    if not isinstance(value, dict):
        raise ValueError(
            f"suite {suite.get('name')!r}: meta.mlsys must be an object, got {value!r}"
        )
    return value


def suite_version(suite: Mapping[str, Any]) -> int:
    """The suite's version: 1 for an inferred or hand-written one, then +1 per update."""
    version = mlsys_meta(suite).get("version", 1)
    if not isinstance(version, int) or version < 1:
        raise ValueError(
            f"suite {suite.get('name')!r} has version {version!r}; expected an int >= 1"
        )
    return version


def drift_specs(suite: Mapping[str, Any]) -> list[DriftSpec]:
    """The suite's drift and skew thresholds, one per compared feature."""
    return [DriftSpec.from_dict(d) for d in mlsys_meta(suite).get("drift", [])]


def validate_suite(suite: Mapping[str, Any]) -> None:
    """Reject a suite document with a clear message before GX sees it."""
    name = suite.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"a suite needs a non-empty string 'name', got {name!r}")
    expectations = suite.get("expectations")
    if not isinstance(expectations, list):
        raise ValueError(f"suite {name!r}: 'expectations' must be a list")
    for i, exp in enumerate(expectations):
        if not isinstance(exp, dict) or not isinstance(exp.get("type"), str):
            raise ValueError(f"suite {name!r}: expectation {i} has no 'type': {exp!r}")
        if not str(exp["type"]).startswith("expect_"):
            raise ValueError(f"suite {name!r}: expectation {i} has type {exp['type']!r}")
    suite_version(suite)
    drift_specs(suite)


def load_suite(path: Path) -> Suite:
    """Read and check a suite JSON file."""
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no suite file {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"suite file {path} is not valid JSON: {exc}") from exc
    validate_suite(suite)
    return dict(suite)


def dump_suite(suite: Mapping[str, Any]) -> str:
    """The suite as stable, reviewable JSON (sorted keys, two-space indent), as GX writes it."""
    return json.dumps(suite, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class SchemaUpdateRefused(ValueError):
    """A suite update was asked for on a batch that drifted beyond the suite's thresholds."""


def evolve_suite(
    suite: Mapping[str, Any],
    df: pd.DataFrame,
    *,
    updated_from: str,
    drift: Sequence[FeatureDrift] = (),
) -> tuple[Suite, list[str]]:
    """A new version of ``suite`` that accepts ``df``: bounds widened to its values and
    lengths, its new categories added to value sets, ``mostly`` lowered to its non-null
    fraction. Types, column sets and uniqueness are never relaxed: a batch that breaks
    those is a different schema, not an evolution of this one. Nor is a batch that
    drifted: ``drift`` (the checkpoint's comparison of ``df`` with its reference) holding
    a drifted feature refuses the update.

    Returns the new suite (version + 1, ``parent`` the old version) and one line per
    change; no changes means the batch already fits.

    Raises:
        SchemaUpdateRefused: a feature of ``drift`` drifted; the message names each.
    """
    drifted = [d for d in drift if d.drifted]
    if drifted:
        raise SchemaUpdateRefused(
            f"suite {suite.get('name', '?')} v{suite_version(suite)} is not updated because "
            f"the batch drifted beyond its thresholds: " + "; ".join(str(d) for d in drifted)
        )
    new: Suite = copy.deepcopy(dict(suite))
    changes: list[str] = []
    declared = {
        e["kwargs"]["column"]: set(e["kwargs"]["type_list"])
        for e in new["expectations"]
        if e["type"] == "expect_column_values_to_be_in_type_list"
    }
    for exp in new["expectations"]:
        kwargs = exp["kwargs"]
        column = kwargs.get("column")
        if column is None or column not in df.columns:
            continue
        if column in declared and gx_type(df[column].dtype) not in declared[column]:
            continue  # values of another type are another schema, not an evolution
        values = df[column].dropna()
        if values.empty:
            continue
        kind = exp["type"]
        if kind == "expect_column_value_lengths_to_be_between":
            changes += _widen(kwargs, values.astype("string").str.len(), f"{column} length")
        elif kind == "expect_column_values_to_be_between":
            if pd.api.types.is_numeric_dtype(values.dtype):
                changes += _widen(kwargs, values, column)
        elif kind == "expect_column_values_to_be_in_set":
            known = list(kwargs["value_set"])
            added = [v for v in _plain_unique(values) if v not in known]
            if added:
                kwargs["value_set"] = known + sorted(added, key=lambda v: (type(v).__name__, v))
                changes.append(f"{column}: value set + {added}")
        elif kind == "expect_column_values_to_not_be_null" and kwargs.get("mostly") is not None:
            observed = math.floor(df[column].notna().mean() * 1000) / 1000
            if observed < kwargs["mostly"]:
                changes.append(f"{column}: mostly not null {kwargs['mostly']} -> {observed}")
                kwargs["mostly"] = observed
    meta = new.setdefault("meta", {}).setdefault("mlsys", {})
    old_version = suite_version(suite)
    if changes:
        meta.update(
            {
                "version": old_version + 1,
                "parent": old_version,
                "updated_from": updated_from,
                "changes": changes,
            }
        )
    return new, changes


def _widen(kwargs: dict[str, Any], values: pd.Series[Any], what: str) -> list[str]:
    changes = []
    low, high = values.min(), values.max()
    low = low.item() if hasattr(low, "item") else low
    high = high.item() if hasattr(high, "item") else high
    if kwargs.get("min_value") is not None and low < kwargs["min_value"]:
        changes.append(f"{what}: min {kwargs['min_value']} -> {low}")
        kwargs["min_value"] = low
    if kwargs.get("max_value") is not None and high > kwargs["max_value"]:
        changes.append(f"{what}: max {kwargs['max_value']} -> {high}")
        kwargs["max_value"] = high
    return changes


def _plain_unique(values: pd.Series[Any]) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in values.unique()]


def column_subset(suite: Mapping[str, Any], drop: Sequence[str], name: str) -> Suite:
    """A copy of ``suite`` called ``name`` without the expectations and drift specs of the
    ``drop`` columns (and without them in column sets): how the serving suite is the
    training suite without the label."""
    new: Suite = copy.deepcopy(dict(suite))
    new["name"] = name
    new["id"] = str(uuid.uuid4())
    kept = []
    for exp in new["expectations"]:
        kwargs = exp["kwargs"]
        if kwargs.get("column") in drop:
            continue
        if "column_set" in kwargs:
            kwargs["column_set"] = [c for c in kwargs["column_set"] if c not in drop]
        exp["id"] = str(uuid.uuid4())
        kept.append(exp)
    new["expectations"] = kept
    meta = new.setdefault("meta", {}).setdefault("mlsys", {})
    meta["drift"] = [d for d in meta.get("drift", []) if d["column"] not in drop]
    return new
