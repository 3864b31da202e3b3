"""A suite checked partition by partition, merged into the verdict of one pass.

A batch too large for one process, or spread over the files of a source, is validated
where its partitions are: :func:`check_partition` runs the suite's GX checkpoint on one
partition for what holds row by row (nulls, sets, ranges, lengths, patterns; the column
set and types) and reduces the rest to statistics that add up over partitions (counts of
offending rows and of rows considered, sums for means, 64-bit hashes of the values of a
unique column, counts on the drift reference's bins). :class:`Merge` adds them up and
gives the :class:`PartitionedVerdict` one pass over the whole batch would give: the same
failures with the same counts and examples, the same drift, the same rows quarantined
for the same reasons (tests check this against :func:`~mlsys.validation.run_checkpoint`).

Uniqueness is decided on hashes first; when some hash repeats, the rows carrying it are
read back (:func:`key_values`) and the duplicates are decided on their values, so a hash
collision can cost a read but never a wrong verdict.

Usage (each call of ``check_partition`` and ``key_values`` runs where its partition is)::

    profiles = drift_profiles(reference_df, suite)          # None: no drift measured
    checks = [check_partition(part, suite, profiles=profiles) for part in parts]
    merge = Merge(suite, checks)
    values = {(p, e): key_values(parts[p], merge.key_column(e), rows)
              for (p, e), rows in merge.repeated_keys().items()}
    verdict = merge.verdict(mode="quarantine", key_values=values, profiles=profiles)
    passed, quarantined = split_rows(parts[0], verdict.drops[0])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlsys.validation.checkpoint import PROJECT_ROOT, exception_message, read_failure, run_suite
from mlsys.validation.drift import (
    DriftKind,
    FeatureDrift,
    ReferenceProfile,
    add_counts,
    drift_from_counts,
    feature_counts,
    reference_profiles,
)
from mlsys.validation.suites import ROW_RULES, drift_specs, is_row_rule, suite_version
from mlsys.validation.verdict import MAX_VALUES, Failure, Mode, Verdict, examples, plain

__all__ = [
    "Merge",
    "PartitionCheck",
    "PartitionedVerdict",
    "check_partition",
    "drift_columns",
    "drift_profiles",
    "key_values",
    "unmergeable",
]

UNIQUE = "expect_column_values_to_be_unique"
MEAN = "expect_column_mean_to_be_between"
MAP_RULES = ROW_RULES - {UNIQUE}
"""Column-map expectations: GX counts their offending rows per partition."""
SAME_EVERYWHERE = frozenset(
    {
        "expect_table_columns_to_match_set",
        "expect_column_to_exist",
        "expect_column_values_to_be_in_type_list",
    }
)
"""Expectations on the columns and their types, which every partition of a batch shares."""
LIFTED = frozenset({UNIQUE, MEAN})
"""Expectations computed here from merged statistics, not by GX per partition."""

IntArray = npt.NDArray[np.int32]
HashArray = npt.NDArray[np.uint64]
_HASH_SLICE_BITS = 4
_HASH_SLICES = 1 << _HASH_SLICE_BITS
"""Uniqueness looks for repeated hashes one slice of the hash space at a time."""


def unmergeable(suite: Mapping[str, Any]) -> list[str]:
    """The expectation types of ``suite`` whose partition results do not add up to one
    pass's (a batch with them is validated in one pass)."""
    known = MAP_RULES | SAME_EVERYWHERE | LIFTED
    return sorted({str(e["type"]) for e in suite["expectations"] if e["type"] not in known})


def drift_profiles(
    reference: pd.DataFrame | Iterable[pd.DataFrame] | None, suite: Mapping[str, Any]
) -> list[ReferenceProfile] | None:
    """The reference batch's bins and counts for each drift feature of ``suite`` it has
    values of (what a partition counts its own values on); None without a reference. The
    batch is a frame, or its parts in order (:func:`~mlsys.validation.drift.
    reference_profiles`: one part read at a time, the same profiles)."""
    if reference is None:
        return None
    parts = [reference] if isinstance(reference, pd.DataFrame) else reference
    return reference_profiles(parts, drift_specs(suite))


def drift_columns(suite: Mapping[str, Any]) -> list[str]:
    """The columns ``suite``'s drift features read (what a reference profile needs)."""
    return list(dict.fromkeys(spec.column for spec in drift_specs(suite)))


@dataclass(frozen=True)
class _MapCount:
    considered: int
    unexpected: int
    values: list[Any]  # the first MAX_VALUES offending values, in row order


@dataclass
class PartitionCheck:
    """One partition's share of a validation: small (counts, a few values, one hash per
    value of a unique column), so it travels through a cluster's scheduler."""

    rows: int
    maps: dict[int, _MapCount] = field(default_factory=dict)
    failed: dict[int, Failure] = field(default_factory=dict)  # errors, column set, types
    broken: dict[int, list[int]] = field(default_factory=dict)  # row -> row rules broken
    keys: dict[int, tuple[HashArray, IntArray]] = field(default_factory=dict)
    sums: dict[int, tuple[float, int]] = field(default_factory=dict)
    kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)
    drift: list[pd.Series[float]] = field(default_factory=list)
    drift_values: list[int] = field(default_factory=list)  # non-null values per feature


def check_partition(
    frame: pd.DataFrame,
    suite: Mapping[str, Any],
    *,
    profiles: Sequence[ReferenceProfile] | None = None,
    project_root: Path = PROJECT_ROOT,
) -> PartitionCheck:
    """Check one partition (its index is not used: rows are numbered 0..n-1 within it)."""
    part = frame.reset_index(drop=True)
    expectations = list(suite["expectations"])
    check = PartitionCheck(rows=len(part))
    in_gx = [e for e in expectations if e["type"] not in LIFTED]
    position = {e.get("id"): i for i, e in enumerate(expectations)}
    results = run_suite(part, {**suite, "expectations": in_gx}, project_root=project_root)
    for r in results:
        i = position[r.expectation_config.id]
        declared = expectations[i]
        check.kwargs[i] = plain(dict(r.expectation_config.kwargs))
        result = r.result or {}
        error = exception_message(r.exception_info)
        if declared["type"] in MAP_RULES and error is None and "unexpected_count" in result:
            indices = [int(j) for j in result.get("unexpected_index_list") or []]
            column = declared["kwargs"].get("column")
            check.maps[i] = _MapCount(
                considered=int(result.get("element_count", 0))
                - int(result.get("missing_count") or 0),
                unexpected=int(result["unexpected_count"]),
                values=part.loc[indices[:MAX_VALUES], column].tolist() if indices else [],
            )
            if is_row_rule(declared):
                for j in indices:
                    check.broken.setdefault(j, []).append(i)
        elif not r.success:
            check.failed[i] = read_failure(r, declared, part)[0]
    for i, e in enumerate(expectations):
        column = e["kwargs"].get("column")
        if e["type"] not in LIFTED:
            continue
        if column not in part.columns:
            check.failed[i] = Failure(
                expectation=str(e["type"]),
                column=column,
                severity=str(e.get("severity", "critical")),
                observed=f"column {column!r} is missing",
                count=None,
                row_rule=False,
                kwargs=plain(dict(e["kwargs"])),
            )
            continue
        values = part[column]
        present = values.notna().to_numpy()
        if e["type"] == UNIQUE:
            hashes = pd.util.hash_array(values[present].to_numpy(dtype=object))
            check.keys[i] = (hashes.astype(np.uint64), np.flatnonzero(present).astype(np.int32))
        else:
            numbers = values[present].to_numpy(dtype=np.float64)
            check.sums[i] = (float(numbers.sum()), int(numbers.size))
    for profile in profiles or []:
        column = profile.spec.column
        has = column in part.columns
        check.drift_values.append(int(part[column].notna().sum()) if has else 0)
        check.drift.append(feature_counts(part, profile) if has else pd.Series(dtype=float))
    return check


def key_values(frame: pd.DataFrame, column: str, rows: Sequence[int]) -> list[Any]:
    """The values of ``column`` at ``rows`` (numbered 0..n-1) of one partition."""
    return frame.reset_index(drop=True).loc[list(rows), column].tolist()


@dataclass(kw_only=True)
class PartitionedVerdict(Verdict):
    """One pass's verdict on a batch checked in partitions, with what leaves each
    partition: ``drops[p]`` maps a row of partition ``p`` to its quarantine reasons."""

    passed_rows: int
    drops: list[dict[int, list[str]]]

    @property
    def rows_passed(self) -> int:
        return self.passed_rows

    @property
    def rows_quarantined(self) -> int:
        return self.rows_in - self.passed_rows


class Merge:
    """The partitions' checks of one batch, in row order, added up."""

    def __init__(self, suite: Mapping[str, Any], checks: Sequence[PartitionCheck]) -> None:
        if not checks:
            raise ValueError("no partition checks to merge")
        self.suite = suite
        self.checks = list(checks)
        self.expectations = list(suite["expectations"])
        self.offsets = np.cumsum([0] + [c.rows for c in self.checks])
        self._repeated: dict[tuple[int, int], list[int]] | None = None

    def key_column(self, i: int) -> str:
        return str(self.expectations[i]["kwargs"]["column"])

    def repeated_keys(self) -> dict[tuple[int, int], list[int]]:
        """For each (partition, unique expectation): the rows whose value's hash occurs
        more than once in the batch (their values decide, see :meth:`verdict`)."""
        if self._repeated is not None:
            return self._repeated
        wanted: dict[tuple[int, int], list[int]] = {}
        for i in self._unique_expectations():
            repeats = self._repeated_hashes(i)
            if not repeats.size:
                continue
            for p, check in enumerate(self.checks):
                hashes, rows = check.keys[i]
                at = np.searchsorted(repeats, hashes)
                at[at == repeats.size] = 0
                hit = rows[repeats[at] == hashes]
                if hit.size:
                    wanted[(p, i)] = [int(r) for r in hit]
        self._repeated = wanted
        return wanted

    def verdict(
        self,
        *,
        mode: Mode,
        key_values: Mapping[tuple[int, int], Sequence[Any]] | None = None,
        profiles: Sequence[ReferenceProfile] | None = None,
        drift_kind: DriftKind = "drift",
    ) -> PartitionedVerdict:
        """The verdict of one pass: ``key_values`` holds the values at
        :meth:`repeated_keys`' rows, ``profiles`` the drift reference's."""
        failures: list[Failure] = []
        notes: list[Failure] = []
        broken: list[dict[int, list[int]]] = [
            {row: list(rules) for row, rules in c.broken.items()} for c in self.checks
        ]
        for i, e in enumerate(self.expectations):
            failure = self._merged(i, e, key_values or {}, broken)
            if failure is not None:
                (failures if failure.severity == "critical" else notes).append(failure)
        drift = self._drift(profiles or [], drift_kind)
        name = str(self.suite["name"])
        quarantine = mode == "quarantine" and all(f.row_rule for f in failures)
        failing = sum(len(b) for b in broken)
        drops = [
            {
                row: [self._reason(i) for i in sorted(set(rules))]
                for row, rules in sorted(part.items())
            }
            if quarantine
            else {}
            for part in broken
        ]
        rows_in = int(self.offsets[-1])
        return PartitionedVerdict(
            suite=name,
            version=suite_version(self.suite),
            mode=mode,
            rows_in=rows_in,
            failures=failures,
            warnings=notes,
            drift=drift,
            rows_failing=failing,
            passed_rows=rows_in - sum(len(d) for d in drops),
            drops=drops,
        )

    # --- one expectation -----------------------------------------------------------------

    def _merged(
        self,
        i: int,
        e: Mapping[str, Any],
        key_values: Mapping[tuple[int, int], Sequence[Any]],
        broken: list[dict[int, list[int]]],
    ) -> Failure | None:
        failed = [c.failed[i] for c in self.checks if i in c.failed]
        if failed:
            # Errors, the column set and types: every partition sees the same columns.
            return failed[0]
        if e["type"] in MAP_RULES:
            counts = [c.maps[i] for c in self.checks if i in c.maps]
            considered = sum(c.considered for c in counts)
            unexpected = sum(c.unexpected for c in counts)
            values = [v for c in counts for v in c.values][:MAX_VALUES]
            return self._failure(i, e, considered, unexpected, values, row_rule=is_row_rule(e))
        if e["type"] == UNIQUE and i in self.checks[0].keys:
            return self._unique(i, e, key_values, broken)
        if e["type"] == MEAN and i in self.checks[0].sums:
            total = sum(c.sums[i][0] for c in self.checks)
            count = sum(c.sums[i][1] for c in self.checks)
            mean = total / count if count else float("nan")
            if _between(mean, e["kwargs"]):
                return None
            return self._declared_failure(i, e, observed=plain(mean), count=None)
        return None

    def _failure(
        self,
        i: int,
        e: Mapping[str, Any],
        considered: int,
        unexpected: int,
        values: list[Any],
        *,
        row_rule: bool,
    ) -> Failure | None:
        mostly = e["kwargs"].get("mostly")
        mostly = 1.0 if mostly is None else float(mostly)
        if considered == 0 or (considered - unexpected) / considered >= mostly:
            return None
        failure = self._declared_failure(i, e, observed=examples(values), count=unexpected)
        return replace(failure, row_rule=row_rule)

    def _declared_failure(
        self, i: int, e: Mapping[str, Any], *, observed: Any, count: int | None
    ) -> Failure:
        kwargs = self.checks[0].kwargs.get(i, plain(dict(e["kwargs"])))
        return Failure(
            expectation=str(e["type"]),
            column=e["kwargs"].get("column"),
            severity=str(e.get("severity", "critical")),
            observed=observed,
            count=count,
            row_rule=False,
            kwargs=kwargs,
        )

    def _unique(
        self,
        i: int,
        e: Mapping[str, Any],
        key_values: Mapping[tuple[int, int], Sequence[Any]],
        broken: list[dict[int, list[int]]],
    ) -> Failure | None:
        repeated = {k: rows for k, rows in self.repeated_keys().items() if k[1] == i}
        # (global row, partition, row, value) of every row whose hash repeats, row order.
        candidates = []
        for (p, _), rows in sorted(repeated.items()):
            values = key_values.get((p, i))
            if values is None or len(values) != len(rows):
                raise ValueError(
                    f"the values of {self.key_column(i)!r} at partition {p}'s repeated rows "
                    "are needed to decide uniqueness (see Merge.repeated_keys)"
                )
            for row, value in zip(rows, values, strict=True):
                candidates.append((int(self.offsets[p]) + row, p, row, value))
        candidates.sort()
        frame = pd.DataFrame(candidates, columns=["at", "part", "row", "value"])
        duplicated = frame["value"].duplicated(keep=False)
        unexpected = frame[duplicated]
        considered = sum(len(c.keys[i][0]) for c in self.checks)
        values = unexpected["value"].tolist()[:MAX_VALUES]
        failure = self._failure(i, e, considered, len(unexpected), values, row_rule=is_row_rule(e))
        if failure is not None and failure.row_rule:
            # Every copy is unexpected; the first is kept and the rest go, as in one pass.
            later = unexpected[unexpected["value"].duplicated(keep="first")]
            for p, row in zip(later["part"], later["row"], strict=True):
                broken[int(p)].setdefault(int(row), []).append(i)
        return failure

    def _reason(self, i: int) -> str:
        e = self.expectations[i]
        return f"{e['kwargs'].get('column')}: {e['type']}"

    def _repeated_hashes(self, i: int) -> HashArray:
        """The hashes that occur more than once among the batch's values of unique
        expectation ``i``, sorted. The hash space is taken a slice at a time (by the top
        bits, ``_HASH_SLICES`` of them), so the one sorted copy this needs is a slice's
        share of the batch's hashes, not all of them: for 10M hashes in 200 partitions, 14 MiB
        at its peak instead of 86 MiB (tracemalloc), beside the checks themselves."""
        shift = np.uint64(64 - _HASH_SLICE_BITS)
        found = []
        for top in range(_HASH_SLICES):
            part = np.concatenate(
                [h[(h >> shift) == top] for h in (c.keys[i][0] for c in self.checks)]
            )
            part.sort()
            found.append(np.unique(part[1:][part[1:] == part[:-1]]))
        # Slices in the order of their top bits: the concatenation is sorted.
        repeats: HashArray = np.concatenate(found)
        return repeats

    def _unique_expectations(self) -> list[int]:
        return [
            i
            for i, e in enumerate(self.expectations)
            if e["type"] == UNIQUE and i in self.checks[0].keys
        ]

    def _drift(self, profiles: Sequence[ReferenceProfile], kind: DriftKind) -> list[FeatureDrift]:
        drift = []
        for k, profile in enumerate(profiles):
            if sum(c.drift_values[k] for c in self.checks) == 0:
                continue  # no values here: the expectations report that
            counts = add_counts(c.drift[k] for c in self.checks)
            drift.append(drift_from_counts(profile, counts, kind))
        return drift


def _between(value: float, kwargs: Mapping[str, Any]) -> bool:
    """GX's bounds check of an observed statistic (None: unbounded on that side)."""
    if value != value:  # NaN: no values to average
        return False
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and (value < low or (kwargs.get("strict_min") and value == low)):
        return False
    return not (high is not None and (value > high or (kwargs.get("strict_max") and value == high)))
