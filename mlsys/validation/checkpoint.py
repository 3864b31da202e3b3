"""Run a suite as a Great Expectations checkpoint and turn its result into a verdict.

The GX project is the ``gx/`` folder of the repository: suites as JSON, one pandas data
source with a dataframe asset per suite, a validation definition and a checkpoint per
suite (created idempotently by :func:`ensure_project`). Each run works on a scratch
copy of that folder, so runs never write into the repository, never see each other's
results, and the Data Docs they build show exactly one validation.

The verdict adds what GX does not do: which rows to quarantine and why (row rules, see
:mod:`mlsys.validation.suites`), drift or skew against a reference batch, and whether
the run may go on in ``fail`` or ``quarantine`` mode.

Usage::

    report = run_checkpoint(df, load_suite(suite_path("raw")), mode="quarantine",
                            reference=previous_df, docs_dir=Path("docs"))
    report.passed, report.quarantined       # rows in = passed + quarantined
    if not report.ok:
        raise ValidationFailed(report)
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mlsys.validation.drift import DriftKind, compare
from mlsys.validation.suites import (
    SUITE_NAMES,
    drift_specs,
    dump_suite,
    is_row_rule,
    load_suite,
    suite_version,
    validate_suite,
)
from mlsys.validation.verdict import (
    MAX_VALUES,
    MODES,
    Failure,
    Mode,
    ValidationFailed,
    Verdict,
    examples,
    plain,
    reason,
)

__all__ = [
    "MODES",
    "REASON_COLUMN",
    "CheckpointReport",
    "Failure",
    "Mode",
    "ValidationFailed",
    "Verdict",
    "ensure_project",
    "exception_message",
    "gx_dir",
    "load_shipped_suite",
    "read_failure",
    "run_checkpoint",
    "run_suite",
    "split_rows",
    "suite_path",
]

if TYPE_CHECKING:
    from great_expectations.data_context.data_context.file_data_context import (
        FileDataContext,
    )


PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATASOURCE = "mlsys"
BATCH_DEFINITION = "whole-batch"
REASON_COLUMN = "quarantine_reason"
GC_MIN_ROWS = 20_000

# GX reads these when it is imported: no usage statistics, no progress bars in logs.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def gx_dir(project_root: Path = PROJECT_ROOT) -> Path:
    """The GX project folder (``<project_root>/gx``)."""
    return Path(project_root) / "gx"


def suite_path(name: str, project_root: Path = PROJECT_ROOT) -> Path:
    """Where the shipped suite ``name`` lives in git."""
    return gx_dir(project_root) / "expectations" / f"{name}.json"


def _context(project_root: Path) -> FileDataContext:
    import great_expectations as gx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctx = gx.get_context(mode="file", project_root_dir=str(project_root))
    return ctx


def ensure_project(
    project_root: Path = PROJECT_ROOT, names: Iterable[str] | None = None
) -> list[str]:
    """Create what the checkpoints need, once: the pandas data source, a dataframe asset
    and batch definition per suite, a validation definition and a checkpoint (with a
    Data Docs action) per suite. Existing objects are left as they are, so the ids under
    version control stay stable. Returns what was created, e.g. ``["checkpoint raw"]``.
    """
    import great_expectations as gx
    from great_expectations.checkpoint.actions import UpdateDataDocsAction
    from great_expectations.core.result_format import ResultFormat
    from great_expectations.data_context.types.base import ProgressBarsConfig

    names = list(names) if names is not None else _suite_names(project_root)
    ctx = _context(project_root)
    created: list[str] = []
    bars = ctx.variables.progress_bars
    globally = bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)
    if globally is not False:
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        ctx.variables.save()
        created.append("setting progress_bars off")
    try:
        source: Any = ctx.data_sources.get(DATASOURCE)
    except (KeyError, ValueError):
        source = ctx.data_sources.add_pandas(DATASOURCE)
        created.append(f"data source {DATASOURCE}")
    for name in names:
        suite = ctx.suites.get(name)  # the JSON in gx/expectations must exist
        asset_names = {a.name for a in source.assets}
        if name in asset_names:
            asset = source.get_asset(name)
        else:
            asset = source.add_dataframe_asset(name)
            created.append(f"asset {name}")
        if BATCH_DEFINITION in {b.name for b in asset.batch_definitions}:
            batch = asset.get_batch_definition(BATCH_DEFINITION)
        else:
            batch = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
            created.append(f"batch definition {name}/{BATCH_DEFINITION}")
        try:
            definition = ctx.validation_definitions.get(name)
        except Exception:  # GX raises its own DataContextError for a missing name
            definition = ctx.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch, suite=suite)
            )
            created.append(f"validation definition {name}")
        try:
            ctx.checkpoints.get(name)
        except Exception:
            ctx.checkpoints.add(
                gx.Checkpoint(
                    name=name,
                    validation_definitions=[definition],
                    actions=[UpdateDataDocsAction(name="data-docs")],
                    result_format=ResultFormat.SUMMARY,
                )
            )
            created.append(f"checkpoint {name}")
    return created


def _suite_names(project_root: Path) -> list[str]:
    folder = gx_dir(project_root) / "expectations"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else list(SUITE_NAMES)


@contextlib.contextmanager
def _scratch_project(project_root: Path, suite: Mapping[str, Any]) -> Iterator[Path]:
    """A throw-away copy of the GX project with ``suite`` in place of the shipped one
    (keeping the id the validation definition points at)."""
    source = gx_dir(project_root)
    name = suite["name"]
    definition = source / "validation_definitions" / f"{name}.json"
    if not definition.is_file():
        raise FileNotFoundError(
            f"no validation definition for suite {name!r} in {source}; "
            f"run `mlsys validate init` after adding gx/expectations/{name}.json"
        )
    with tempfile.TemporaryDirectory(prefix="mlsys-gx-") as tmp:
        target = Path(tmp) / "gx"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("uncommitted"))
        (target / "uncommitted").mkdir()
        suite_id = json.loads(definition.read_text())["suite"]["id"]
        (target / "expectations" / f"{name}.json").write_text(
            dump_suite({**suite, "id": suite_id}), encoding="utf-8"
        )
        yield Path(tmp)


@dataclass(kw_only=True)
class CheckpointReport(Verdict):
    """The verdict on one batch checked in one pass, with its rows split in two."""

    passed: pd.DataFrame
    quarantined: pd.DataFrame

    @property
    def rows_passed(self) -> int:
        return len(self.passed)

    @property
    def rows_quarantined(self) -> int:
        return len(self.quarantined)


def run_checkpoint(
    df: pd.DataFrame,
    suite: Mapping[str, Any],
    *,
    mode: Mode = "fail",
    reference: pd.DataFrame | None = None,
    drift_kind: DriftKind = "drift",
    project_root: Path = PROJECT_ROOT,
    docs_dir: Path | None = None,
) -> CheckpointReport:
    """Validate ``df`` against ``suite`` with the suite's GX checkpoint.

    Args:
        df: the batch; its index is not used (rows are numbered 0..n-1 for GX).
        suite: the suite document (see :mod:`mlsys.validation.suites`).
        mode: ``"fail"``: any critical failure fails the batch; ``"quarantine"``: rows
            failing a row rule are set aside with their reasons and the rest may go on.
        reference: the batch to compare against for drift (the previous batch) or skew
            (the training data, ``drift_kind="skew"``); None skips the comparison.
        project_root: the folder holding ``gx/``.
        docs_dir: where to copy the Data Docs site of this run; None builds none.

    Returns:
        The report; ``report.ok`` says whether the run may go on. Rows in always equal
        ``rows_passed + rows_quarantined``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    validate_suite(suite)
    name = str(suite["name"])
    if df.empty:
        raise ValueError(f"the batch has no rows: nothing to validate with suite {name!r}")
    frame = df.reset_index(drop=True)
    results = run_suite(frame, suite, project_root=project_root, docs_dir=docs_dir)
    failures, warnings_, bad_rows = _read_results(results, frame, suite)
    drift = []
    if reference is not None:
        # A column missing or empty on either side is reported by the expectations
        # (column set, nulls); drift is measured on the columns both batches have.
        comparable = [
            spec
            for spec in drift_specs(suite)
            if all(
                spec.column in f.columns and f[spec.column].notna().any()
                for f in (reference, frame)
            )
        ]
        drift = compare(reference, frame, comparable, kind=drift_kind)
    quarantine = mode == "quarantine" and not [f for f in failures if not f.row_rule]
    passed, quarantined = split_rows(frame, bad_rows if quarantine else {})
    return CheckpointReport(
        suite=name,
        version=suite_version(suite),
        mode=mode,
        rows_in=len(frame),
        passed=passed,
        quarantined=quarantined,
        failures=failures,
        warnings=warnings_,
        drift=drift,
        rows_failing=len(bad_rows),
        docs_dir=docs_dir,
    )


def split_rows(
    frame: pd.DataFrame, bad_rows: Mapping[int, Iterable[str]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``frame`` (rows numbered 0..n-1) without the ``bad_rows``, and those rows with their
    reasons joined in :data:`REASON_COLUMN`."""
    if not bad_rows:
        empty = frame.iloc[:0].assign(**{REASON_COLUMN: pd.array([], dtype="string")})
        return frame, empty
    index = pd.Index(sorted(bad_rows))
    quarantined = frame.loc[index].copy()
    quarantined[REASON_COLUMN] = pd.array(["; ".join(bad_rows[i]) for i in index], dtype="string")
    return frame.drop(index=index), quarantined


def run_suite(
    frame: pd.DataFrame,
    suite: Mapping[str, Any],
    *,
    project_root: Path = PROJECT_ROOT,
    docs_dir: Path | None = None,
) -> list[Any]:
    """GX's result for each expectation of ``suite`` on ``frame`` (rows numbered 0..n-1),
    every failing row's index included; the Data Docs go to ``docs_dir`` when given."""
    name = str(suite["name"])
    with _scratch_project(project_root, suite) as scratch:
        ctx = _context(scratch)
        checkpoint = ctx.checkpoints.get(name)
        # Every failing row's index (to quarantine it), not its values (which may be
        # long texts, and are already sampled in partial_unexpected_list).
        checkpoint.result_format = {"result_format": "COMPLETE", "exclude_unexpected_values": True}
        if docs_dir is None:
            checkpoint.actions = []
        checkpoint.save()  # the scratch copy; GX refuses to run an unsaved change
        with _quiet_gx():
            result = checkpoint.run(
                batch_parameters={"dataframe": _gx_frame(frame)},
                expectation_parameters=None,
            )
        if docs_dir is not None:
            site = scratch / "gx" / "uncommitted" / "data_docs" / "local_site"
            if docs_dir.exists():
                shutil.rmtree(docs_dir)
            shutil.copytree(site, docs_dir)
    (validation,) = result.run_results.values()
    results = list(validation.results)
    # GX keeps the context it made last as its module-wide current project, and through
    # it the data source's engine and its cache of the batch just validated: the whole
    # frame would stay alive until the next checkpoint made another context, so a stream
    # of chunks would hold the previous chunk while reading the next one. Let go of it.
    _forget_context(ctx)
    # GX's context, engine and results also reference each other in cycles that keep the
    # batch alive until Python's next full collection; streaming many chunks through
    # checkpoints would grow memory by a chunk per call. Collect them now (~0.25 s, so
    # only for batches large enough for that to matter).
    del validation, result, checkpoint, ctx
    if len(frame) >= GC_MIN_ROWS:
        gc.collect()
    return results


def _forget_context(ctx: FileDataContext) -> None:
    """Unset GX's module-wide current project if it is ``ctx`` (the scratch context a
    checkpoint ran in, whose folder is gone by now); a context made elsewhere stays."""
    from great_expectations.data_context.data_context.context_factory import project_manager
    from great_expectations.exceptions.exceptions import DataContextRequiredError

    try:
        current = project_manager.get_current_project()
    except DataContextRequiredError:  # no current project
        return
    if current is ctx:
        project_manager.set_project(None)


def _gx_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every string column in the one string dtype GX's type check knows
    (``pd.StringDtype()``): pandas has several (``str``, ``string[python]``,
    ``string[pyarrow]``) that hold the same values."""
    target = pd.StringDtype()
    strings = [
        c
        for c, dtype in frame.dtypes.items()
        if isinstance(dtype, pd.StringDtype) and dtype != target
    ]
    if not strings:
        return frame
    return frame.astype(dict.fromkeys(strings, target))


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """GX logs a progress bar per metric and warns about pandas internals; keep logs readable."""
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _read_results(
    results: Iterable[Any], frame: pd.DataFrame, suite: Mapping[str, Any]
) -> tuple[list[Failure], list[Failure], dict[int, list[str]]]:
    """Failures (critical), warnings (warning/info) and, per failing row, its reasons,
    each in the suite's order (GX groups its results by column)."""
    by_id = {e.get("id"): e for e in suite["expectations"]}
    position = {key: i for i, key in enumerate(by_id)}
    failures: list[Failure] = []
    notes: list[Failure] = []
    bad_rows: dict[int, list[str]] = {}
    ordered = sorted(results, key=lambda r: position.get(r.expectation_config.id, len(position)))
    for r in ordered:
        if r.success:
            continue
        failure, indices = read_failure(r, by_id.get(r.expectation_config.id), frame)
        (failures if failure.severity == "critical" else notes).append(failure)
        if failure.row_rule and indices is not None:
            rows = _rows_to_quarantine(failure.expectation, failure.column, indices, frame)
            for i in rows:
                bad_rows.setdefault(int(i), []).append(reason(failure))
    return failures, notes, bad_rows


def read_failure(
    r: Any, declared: Mapping[str, Any] | None, frame: pd.DataFrame
) -> tuple[Failure, list[Any] | None]:
    """One failed GX result as a :class:`Failure`, with the failing rows' indices where GX
    lists them; ``declared`` is the expectation as the suite states it."""
    config = r.expectation_config
    declared = declared or {
        "type": config.type,
        "kwargs": dict(config.kwargs),
        "severity": config.severity.value,
    }
    kwargs = dict(config.kwargs)
    column = kwargs.get("column")
    severity = str(getattr(config.severity, "value", config.severity))
    error = exception_message(r.exception_info)
    result = r.result or {}
    indices = result.get("unexpected_index_list")
    row_rule = is_row_rule(declared) and error is None and indices is not None
    if column is not None and column not in frame.columns:
        observed: Any = f"column {column!r} is missing"
    elif error is not None:
        observed = error
    elif "observed_value" in result:
        observed = plain(result["observed_value"])
    elif indices and column in frame.columns:
        observed = examples(frame.loc[[int(i) for i in indices[:MAX_VALUES]], column].tolist())
    else:
        observed = examples(result.get("partial_unexpected_list") or [])
    count = result.get("unexpected_count")
    failure = Failure(
        expectation=config.type,
        column=column,
        severity=severity,
        observed=observed,
        count=None if count is None else int(count),
        row_rule=row_rule,
        kwargs=plain(kwargs),
    )
    return failure, indices


def _rows_to_quarantine(
    kind: str, column: str | None, indices: list[Any], frame: pd.DataFrame
) -> list[int]:
    rows = [int(i) for i in indices]
    if kind == "expect_column_values_to_be_unique" and column is not None:
        # GX flags every copy of a repeated value; the first copy is kept, the rest go.
        values = frame.loc[sorted(rows), column]
        return [int(i) for i in values.index[values.duplicated(keep="first")]]
    return rows


def exception_message(info: Any) -> str | None:
    """GX's exception info is either one dict or a dict of dicts keyed by metric."""
    if not info:
        return None
    candidates = [info] if "raised_exception" in info else list(info.values())
    for item in candidates:
        if isinstance(item, Mapping) and item.get("raised_exception"):
            message = str(item.get("exception_message") or "error")
            return message.splitlines()[0][:300]
    return None


def load_shipped_suite(name: str, project_root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The suite ``name`` as committed in ``gx/expectations``."""
    if name not in _suite_names(project_root):
        known = ", ".join(_suite_names(project_root))
        raise ValueError(f"unknown suite {name!r}; the GX project has: {known}")
    return load_suite(suite_path(name, project_root))
