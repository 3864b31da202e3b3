"""The serving suite's row rules compiled to plain Python checks, run on every request.

Running Great Expectations per request would cost milliseconds; a suite's row rules are
simple predicates on one value, so they are compiled once into closures and applied to
each row before anything of the request reaches the model, the cache or the log.

What is compiled, from the critical expectations (``severity`` critical, no ``mostly``
below 1; warnings and ``info`` refuse nothing, the ``serving_report`` flow judges them on
the prediction log):

========================================================  ================================
expectation                                                a row is refused when
========================================================  ================================
``expect_table_columns_to_match_set``, ``..._to_exist``   a listed column is absent
``expect_column_values_to_not_be_null``                    the value is null
``expect_column_values_to_be_in_type_list``               the value is of none of the
                                                           types (JSON has no dtypes: a
                                                           dtype name maps to Python types)
``expect_column_values_to_be_in_set`` / ``not_be_in_set``  the value is outside / inside
``expect_column_values_to_be_between``                     the value is outside the bounds
``expect_column_value_lengths_to_be_between``              ``len(str(value))`` is outside
``expect_column_values_to_match_regex`` / ``not_match``    ``re.search`` fails / succeeds on
                                                           ``str(value)``
========================================================  ================================

As in GX, a null passes every rule but the not-null one; columns the suite does not name
pass through. ``expect_column_values_to_be_unique`` is about a batch, not a row, and is
left to ``serving_report``.

Usage::

    rules = RowRules.from_suite(json.loads(path.read_text()))
    for refusal in rules.check(rows):
        print(refusal)   # row 0: expect_column_value_lengths_to_be_between on 'text': ...
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlsys.serving.payload import Rows
from mlsys.validation.suites import is_row_rule

__all__ = ["SIGNATURE_RULE", "Refusal", "RowRules"]

Check = Callable[[Any], str | None]
"""A compiled rule on one non-null value: None when it passes, else why it fails."""

SIGNATURE_RULE = "model_signature"
"""The rule named by refusals that come from the model's input signature."""

_COLUMN_SETS = ("expect_table_columns_to_match_set", "expect_column_to_exist")
_TYPE_LIST = "expect_column_values_to_be_in_type_list"


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the row (None: every row), the rule and the column."""

    row: int | None
    rule: str
    column: str
    reason: str

    def __str__(self) -> str:
        where = "every row" if self.row is None else f"row {self.row}"
        return f"{where}: {self.rule} on column {self.column!r}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "rule": self.rule, "column": self.column, "reason": self.reason}


@dataclass(frozen=True)
class _ColumnRule:
    rule: str
    column: str
    check: Check


class RowRules:
    """Compiled row rules: columns that must be present, and per-value checks.

    Rules made by :meth:`from_suite` pickle as their suite and compile again when unpickled
    (a worker process of ``mlsys serve`` gets them so); others do not pickle.

    Args:
        required: ``(column, rule)`` pairs: the column must be in every request.
        rules: the per-value checks, each naming its expectation type and column.
        not_null: ``(column, rule)`` pairs whose values must not be null.
    """

    def __init__(
        self,
        required: Sequence[tuple[str, str]] = (),
        rules: Sequence[_ColumnRule] = (),
        not_null: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.required = tuple(dict.fromkeys(required))
        self.rules = tuple(rules)
        self.not_null = tuple(dict.fromkeys(not_null))
        self._suite: Mapping[str, Any] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        if self._suite is None:
            raise TypeError("only RowRules made by RowRules.from_suite can be pickled")
        return (RowRules.from_suite, (self._suite,))

    @classmethod
    def from_suite(cls, suite: Mapping[str, Any]) -> RowRules:
        """The row rules of a GX suite document (see :mod:`mlsys.validation.suites`).

        Raises:
            ValueError: a rule cannot be compiled (a bad regex, bounds that are not
                numbers or strings), naming the expectation.
        """
        required: list[tuple[str, str]] = []
        not_null: list[tuple[str, str]] = []
        rules: list[_ColumnRule] = []
        for exp in suite.get("expectations", []):
            type_ = str(exp.get("type"))
            kwargs = exp.get("kwargs", {})
            critical = exp.get("severity", "critical") == "critical"
            if not critical:
                continue
            if type_ in _COLUMN_SETS:
                columns = kwargs.get("column_set") or [kwargs.get("column")]
                required.extend((str(c), type_) for c in columns if c is not None)
            elif type_ == _TYPE_LIST and kwargs.get("mostly", 1) >= 1:
                check = _type_check(kwargs.get("type_list") or [])
                if check is not None:
                    rules.append(_ColumnRule(type_, str(kwargs["column"]), check))
            elif is_row_rule(exp):
                column = str(kwargs["column"])
                if type_ == "expect_column_values_to_not_be_null":
                    not_null.append((column, type_))
                    continue
                compiled = _compile(type_, kwargs)
                if compiled is not None:
                    rules.append(_ColumnRule(type_, column, compiled))
        made = cls(required, rules, not_null)
        made._suite = suite
        return made

    @classmethod
    def from_signature(cls, inputs: Sequence[tuple[str, str]]) -> RowRules:
        """Rules of a model's input signature (``(column, MLflow type)`` pairs): each
        column present, non-null, of its type; checked here once per row, so the model is
        called without MLflow's per-call schema enforcement."""
        rules = []
        for column, kind in inputs:
            check = _mlflow_type_check(kind)
            if check is not None:
                rules.append(_ColumnRule(SIGNATURE_RULE, column, check))
        pairs = [(column, SIGNATURE_RULE) for column, _ in inputs]
        return cls(pairs, rules, pairs)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column a rule names, in the order the rules name them."""
        names = [c for c, _ in self.required] + [r.column for r in self.rules]
        names += [c for c, _ in self.not_null]
        return tuple(dict.fromkeys(names))

    def check(self, rows: Rows) -> list[Refusal]:
        """Every rule each row breaks, in row order; empty when all rows pass."""
        refusals = [
            Refusal(None, rule, column, "the column is missing")
            for column, rule in self.required
            if column not in rows.columns
        ]
        missing = {r.column for r in refusals}
        per_row: list[tuple[int, Refusal]] = []
        for column, rule in self.not_null:
            if column in missing or column not in rows.columns:
                continue
            for i, value in enumerate(rows.columns[column]):
                if _is_null(value):
                    per_row.append((i, Refusal(i, rule, column, "the value is null")))
        for compiled in self.rules:
            values = rows.columns.get(compiled.column)
            if values is None:
                continue
            for i, value in enumerate(values):
                if _is_null(value):
                    continue
                reason = compiled.check(value)
                if reason is not None:
                    per_row.append((i, Refusal(i, compiled.rule, compiled.column, reason)))
        per_row.sort(key=lambda pair: pair[0])
        return refusals + [refusal for _, refusal in per_row]

    def __add__(self, other: RowRules) -> RowRules:
        return RowRules(
            self.required + other.required,
            self.rules + other.rules,
            self.not_null + other.not_null,
        )


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _compile(type_: str, kwargs: Mapping[str, Any]) -> Check | None:
    """The check of one row rule, or None for a rule that is not about one row."""
    if type_ == "expect_column_values_to_be_in_set":
        allowed = _value_set(kwargs.get("value_set"), type_)
        return lambda v: None if _member(v, allowed) else f"{_short(v)} is not in {allowed}"
    if type_ == "expect_column_values_to_not_be_in_set":
        forbidden = _value_set(kwargs.get("value_set"), type_)
        return lambda v: f"{_short(v)} is in {forbidden}" if _member(v, forbidden) else None
    if type_ == "expect_column_values_to_be_between":
        within = _bounds(kwargs, type_)
        return lambda v: within(v, _short(v))
    if type_ == "expect_column_value_lengths_to_be_between":
        within = _bounds(kwargs, type_)
        return lambda v: within(len(str(v)), f"length {len(str(v))}")
    if type_ in ("expect_column_values_to_match_regex", "expect_column_values_to_not_match_regex"):
        pattern = _regex(kwargs.get("regex"), type_)
        if type_.endswith("_not_match_regex"):
            return lambda v: (
                f"{_short(v)} matches {pattern.pattern!r}" if pattern.search(str(v)) else None
            )
        return lambda v: (
            None if pattern.search(str(v)) else f"{_short(v)} does not match {pattern.pattern!r}"
        )
    return None


def _value_set(values: Any, type_: str) -> list[Any]:
    if not isinstance(values, list):
        raise ValueError(f"{type_}: value_set must be a list, got {values!r}")
    return values


def _member(value: Any, values: list[Any]) -> bool:
    try:
        return value in values
    except TypeError:
        return False


def _bounds(kwargs: Mapping[str, Any], type_: str) -> Callable[[Any, str], str | None]:
    """A check of ``low <= x <= high`` (strict where the rule says), None bounds open."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    for name, bound in (("min_value", low), ("max_value", high)):
        usable = isinstance(bound, int | float | str) and not isinstance(bound, bool)
        if bound is not None and not usable:
            raise ValueError(f"{type_}: {name} must be a number or a string, got {bound!r}")
    strict_low, strict_high = bool(kwargs.get("strict_min")), bool(kwargs.get("strict_max"))
    shown = (
        f"{'(' if strict_low else '['}{'-inf' if low is None else low}, "
        f"{'inf' if high is None else high}{')' if strict_high else ']'}"
    )

    def within(x: Any, label: str) -> str | None:
        try:
            below = low is not None and (x <= low if strict_low else x < low)
            above = high is not None and (x >= high if strict_high else x > high)
        except TypeError:
            return f"{label} cannot be compared with the bounds {shown}"
        if isinstance(x, bool) or below or above:
            return f"{label} is outside {shown}"
        return None

    return within


def _regex(regex: Any, type_: str) -> re.Pattern[str]:
    try:
        return re.compile(str(regex))
    except re.error as exc:
        raise ValueError(f"{type_}: regex {regex!r} does not compile: {exc}") from exc


# JSON carries str, int, float, bool, lists and objects; a dtype name accepts these.
_STRING = (str,)
_INTEGER = (int,)
_NUMBER = (int, float)
_BOOLEAN = (bool,)


def _python_types(name: str) -> tuple[type, ...] | None:
    """The Python types a value of GX type ``name`` may have; None: any value."""
    lowered = name.lower()
    if lowered in ("str", "string", "stringdtype", "unicode") or lowered.startswith(
        ("datetime", "date")
    ):
        return _STRING
    if lowered.startswith(("int", "uint")):
        return _INTEGER
    if lowered.startswith("float"):
        return _NUMBER
    if lowered in ("bool", "boolean", "booleandtype"):
        return _BOOLEAN
    return None


def _type_check(type_list: Iterable[Any]) -> Check | None:
    names = [str(t) for t in type_list]
    accepted: list[type] = []
    for name in names:
        types = _python_types(name)
        if types is None:  # object, category, or a name this table does not know
            return None
        accepted.extend(types)
    if not accepted:
        return None
    return _instance_check(tuple(accepted), f"of type {names}")


_MLFLOW_TYPES: dict[str, tuple[type, ...]] = {
    "string": _STRING,
    "long": _INTEGER,
    "integer": _INTEGER,
    "double": _NUMBER,
    "float": _NUMBER,
    "boolean": _BOOLEAN,
    "datetime": _STRING,
}


def _mlflow_type_check(kind: str) -> Check | None:
    types = _MLFLOW_TYPES.get(kind)
    return None if types is None else _instance_check(types, f"an MLflow {kind}")


def _instance_check(types: tuple[type, ...], wanted: str) -> Check:
    numeric = bool in types or not any(t in (int, float) for t in types)

    def check(value: Any) -> str | None:
        # bool is an int in Python, but not a number in a schema.
        if isinstance(value, types) and (numeric or not isinstance(value, bool)):
            return None
        return f"{_short(value)} ({type(value).__name__}) is not {wanted}"

    return check


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
