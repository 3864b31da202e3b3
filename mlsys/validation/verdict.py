"""A validation's verdict: the expectations not met, the drift, the row counts.

:class:`Verdict` is what every flow logs and acts on, whether the batch was checked in one
pass (:class:`~mlsys.validation.checkpoint.CheckpointReport`, holding the rows) or in
partitions (:mod:`mlsys.validation.partitioned`, holding counts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mlsys.validation.drift import FeatureDrift

Mode = Literal["fail", "quarantine"]
MODES: tuple[str, ...] = ("fail", "quarantine")
MAX_EXAMPLES = 5
MAX_EXAMPLE_CHARS = 80
MAX_VALUES = 1000  # offending values a failure's examples are drawn from, in row order


@dataclass(frozen=True)
class Failure:
    """One expectation that did not hold.

    ``observed`` is GX's observed value for batch rules, or up to five offending values
    (most common first, long ones cut) for row rules; ``count`` is the number of
    offending rows where GX counts them. ``row_rule`` failures quarantine their rows.
    """

    expectation: str
    column: str | None
    severity: str
    observed: Any
    count: int | None
    row_rule: bool
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        where = f"{self.column}: " if self.column else ""
        rows = f" on {self.count} rows" if self.count is not None else ""
        bound = {k: v for k, v in self.kwargs.items() if k not in ("column", "batch_id")}
        return (
            f"{where}{self.expectation} failed{rows} ({self.severity}); "
            f"observed {self.observed!r}; expected {bound}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "expectation": self.expectation,
            "column": self.column,
            "severity": self.severity,
            "observed": self.observed,
            "count": self.count,
            "row_rule": self.row_rule,
            "kwargs": {k: v for k, v in self.kwargs.items() if k != "batch_id"},
        }


@dataclass(kw_only=True)
class Verdict:
    """The verdict on one batch: counts, failures and drift (see :class:`CheckpointReport`
    for one pass holding the rows, :mod:`mlsys.validation.partitioned` for a batch checked
    in partitions)."""

    suite: str
    version: int
    mode: Mode
    rows_in: int
    failures: list[Failure]
    warnings: list[Failure]
    drift: list[FeatureDrift]
    rows_failing: int = 0
    docs_dir: Path | None = None

    @property
    def rows_passed(self) -> int:
        raise NotImplementedError

    @property
    def rows_quarantined(self) -> int:
        raise NotImplementedError

    @property
    def batch_failures(self) -> list[Failure]:
        """Critical failures that judge the whole batch (no row to blame)."""
        return [f for f in self.failures if not f.row_rule]

    @property
    def critical_drift(self) -> list[FeatureDrift]:
        return [d for d in self.drift if d.drifted and d.severity == "critical"]

    @property
    def ok(self) -> bool:
        """Whether the run may go on: in ``fail`` mode only with no critical failure at
        all; in ``quarantine`` mode when every critical failure is a row failure (its
        rows are set aside). Critical drift stops both."""
        if self.critical_drift or self.batch_failures:
            return False
        return self.mode == "quarantine" or not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The shape ``mlsys validate run --json`` prints."""
        return {
            "suite": self.suite,
            "version": self.version,
            "mode": self.mode,
            "success": self.ok,
            "rows_in": self.rows_in,
            "rows_passed": self.rows_passed,
            "rows_quarantined": self.rows_quarantined,
            "rows_failing": self.rows_failing,
            "failed": [f.to_dict() for f in self.failures],
            "warnings": [f.to_dict() for f in self.warnings],
            "drift": [d.to_dict() for d in self.drift],
        }

    def summary(self) -> str:
        """One line per failed expectation and drifted feature, for errors and logs."""
        head = (
            f"suite {self.suite} v{self.version} ({self.mode} mode): {self.rows_in} rows in, "
            f"{self.rows_passed} passed, {self.rows_quarantined} quarantined"
        )
        if self.mode == "fail" and self.rows_failing:
            head += f"; {self.rows_failing} rows break row rules"
        lines = [head]
        lines += [f"  FAILED {f}" for f in self.failures]
        lines += [f"  DRIFT {d} ({d.severity})" for d in self.drift if d.drifted]
        lines += [f"  {f.severity.upper()} {f}" for f in self.warnings]
        return "\n".join(lines)


class ValidationFailed(RuntimeError):
    """A batch failed its checkpoint; the message lists each failed expectation."""

    def __init__(self, report: Verdict) -> None:
        super().__init__(report.summary())
        self.report = report


def reason(failure: Failure) -> str:
    """What a quarantined row's reason column says for one broken row rule."""
    return f"{failure.column}: {failure.expectation}"


def examples(values: list[Any]) -> list[Any]:
    """Up to five of a failure's offending values, most common first, long ones cut."""
    counts = pd.Series(values, dtype=object).value_counts(dropna=False)
    return [plain(v) for v in counts.index[:MAX_EXAMPLES]]


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_EXAMPLE_CHARS:
        return f"{value[:MAX_EXAMPLE_CHARS]}... ({len(value)} chars)"
    return value


def plain(value: Any) -> Any:
    """GX results hold numpy scalars and pandas NA; make them JSON-ready."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if value is pd.NA or value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, str):
        with contextlib.suppress(ValueError, TypeError):
            return value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, str | int | float | bool):
        return _cut(value)
    return str(value)
