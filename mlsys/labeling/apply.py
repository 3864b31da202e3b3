"""Apply labeling functions to a DataFrame fast, with exactly PandasLFApplier's label matrix."""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import numpy as np
import pandas as pd
from pandas.api.types import (
    is_bool_dtype,
    is_datetime64_any_dtype,
    is_float_dtype,
    is_integer_dtype,
    is_object_dtype,
    is_string_dtype,
    is_timedelta64_dtype,
)
from snorkel.labeling import LabelingFunction

from mlsys.labeling.lf import ABSTAIN, VectorSpec, not_a_str_error, vector_spec

__all__ = ["MIN_LFS", "LFApplyResult", "LFError", "apply_lfs"]

Progress = Callable[[int, int], None]
ErrorMode = Literal["raise", "abstain"]

MIN_LFS = 3
# Below this many distinct rows a process pool costs more than it saves (fork, pipes).
_POOL_MIN_ROWS = 2000
# Chunks bound the memo caches and give progress reports; several per worker balance load.
_CHUNK_ROWS = 2000
_CHUNKS_PER_WORKER = 4


@dataclass(frozen=True)
class LFApplyResult:
    """The label matrix of one ``apply_lfs`` call and what it took.

    ``matrix[i, j]`` is LF ``j``'s vote on row ``i`` (``-1``: abstain), int64, equal to
    ``PandasLFApplier(lfs).apply(df)``. ``errors`` maps an LF name to the number of rows
    where it raised and was counted as abstaining (``errors="abstain"``; LFs that never
    raised are absent). ``unique_rows`` is the number of distinct values of ``fields``,
    each evaluated once.
    """

    matrix: np.ndarray
    lf_names: list[str]
    errors: dict[str, int]
    unique_rows: int
    seconds: float


class LFError(RuntimeError):
    """A labeling function failed on a row; the message names the LF, the row and the error.

    ``lf_name`` and ``row`` (the ``id_column`` value, else the index label) carry the same
    facts for code; ``__cause__`` is the original exception.
    """

    def __init__(self, message: str, *, lf_name: str = "", row: object = None) -> None:
        super().__init__(message)
        self.lf_name = lf_name
        self.row = row


def apply_lfs(
    df: pd.DataFrame,
    lfs: Sequence[LabelingFunction],
    *,
    fields: Sequence[str] = ("text",),
    n_jobs: int | None = None,
    errors: ErrorMode = "raise",
    id_column: str | None = None,
    progress: Progress | None = None,
) -> LFApplyResult:
    """Label every row of ``df`` with every LF; the matrix equals Snorkel's PandasLFApplier's.

        result = apply_lfs(batch, dataset.lf_set(), id_column=dataset.id_column)
        result.matrix        # (len(batch), 9) int64, -1 = abstain

    Contract: LFs read only the columns named in ``fields`` (an LF reading another
    column fails with an ``AttributeError``), are deterministic, and do not depend on the
    row's index label. Every row needs a value in every field: missing values (None,
    NaN, pd.NA) raise ``ValueError`` naming the first such row, whatever ``errors`` says,
    because Snorkel's LFs would either crash on them or silently treat them as text.

    How the work is cut down, without changing a single vote:

    1. Deduplicate: rows with equal ``fields`` values get the same votes, so each
       distinct value is evaluated once and the votes are scattered back.
    2. Keyword and regex LFs (``keyword_lf``/``regex_lf``, which carry a ``VectorSpec``)
       run over the column of distinct values at once, with Python's own
       ``str.lower``/``re`` (Arrow's Unicode lower-casing differs in corner cases).
    3. Other LFs run on the distinct rows through ``DataFrame.apply(axis=1)``, the very
       call PandasLFApplier makes, so each LF gets a pandas Series as in Snorkel. It
       holds only ``fields`` (under a plain object Index), cast to the dtype pandas gives
       a whole row of ``df``, so ``x.text`` is the same Python object PandasLFApplier
       would pass. Snorkel's own LF and preprocessor code runs unchanged: a memoized
       preprocessor is computed once per distinct row and shared by the LFs that use it.
       Chunks of rows go to ``n_jobs`` processes when there are at least 2,000 distinct
       rows.

    Args:
        df: the batch; its index labels name rows in errors.
        lfs: at least ``MIN_LFS`` Snorkel LFs with unique names.
        fields: the columns the LFs read, the deduplication key.
        n_jobs: processes for the row-by-row LFs; None: one per CPU; 1: this process.
        errors: "raise": the first failing LF (in row order, then LF order, as
            PandasLFApplier meets it) raises ``LFError``; "abstain": failures vote
            ABSTAIN and are counted in ``result.errors`` (Snorkel's ``fault_tolerant``).
            An LF returning something that is not a number always raises.
        id_column: a column whose value names a failing row (default: the index label).
        progress: called as ``progress(done, total)`` in distinct rows as chunks finish.

    Memoized preprocessors have their caches cleared after each chunk (deduplication
    already shares the work; the caches would otherwise grow by one row copy per
    distinct row).
    """
    started = time.perf_counter()
    lf_list = _check_lfs(lfs)
    field_list = _check_fields(df, fields, lf_list, id_column)
    workers = _check_n_jobs(n_jobs)
    if errors not in ("raise", "abstain"):
        raise ValueError(f'errors must be "raise" or "abstain", got {errors!r}')
    _check_not_missing(df, field_list, id_column)

    codes, first = _distinct(df, field_list)
    rows = _distinct_rows(df, field_list, first)
    n_distinct = len(first)
    labels = np.full((n_distinct, len(lf_list)), ABSTAIN, dtype=np.int64)
    failed = np.zeros(labels.shape, dtype=bool)
    stop_on_error = errors == "raise"

    specs = [vector_spec(lf) for lf in lf_list]
    failures = _label_vectorized(rows, lf_list, specs, labels, failed)
    generic = [j for j, spec in enumerate(specs) if spec is None]
    # In "raise" mode only rows up to the first vectorized failure can hold an earlier one.
    limit = min(f.row for f in failures) + 1 if failures and stop_on_error else n_distinct
    if generic:
        chunks = _run_generic(
            rows, [lf_list[j] for j in generic], generic, limit, stop_on_error, workers, progress
        )
        for chunk in chunks:
            stop = chunk.start + len(chunk.labels)
            labels[chunk.start : stop, generic] = chunk.labels
            failed[chunk.start : stop, generic] = chunk.failed
            if chunk.failure is not None:
                failures.append(chunk.failure)
    elif progress is not None:
        progress(n_distinct, n_distinct)

    fatal = [f for f in failures if f.fatal or stop_on_error]
    if fatal:
        _raise_failure(min(fatal, key=lambda f: (f.row, f.lf)), lf_list, df, first, id_column)

    counts = np.bincount(codes, minlength=n_distinct)
    error_counts = {
        lf_list[j].name: int(counts[failed[:, j]].sum())
        for j in range(len(lf_list))
        if failed[:, j].any()
    }
    return LFApplyResult(
        matrix=labels[codes],
        lf_names=[lf.name for lf in lf_list],
        errors=error_counts,
        unique_rows=n_distinct,
        seconds=time.perf_counter() - started,
    )


# --- checks --------------------------------------------------------------------------------


def _check_lfs(lfs: Sequence[LabelingFunction]) -> list[LabelingFunction]:
    lf_list = list(lfs)
    for lf in lf_list:
        if not isinstance(lf, LabelingFunction):
            raise TypeError(f"{lf!r} is not a Snorkel LabelingFunction")
    if len(lf_list) < MIN_LFS:
        raise ValueError(
            f"got {len(lf_list)} labeling function(s); at least {MIN_LFS} are needed, since a "
            f"label model cannot estimate LF accuracies from fewer"
        )
    names = [lf.name for lf in lf_list]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"labeling function names must be unique; repeated: {duplicated}")
    return lf_list


def _check_fields(
    df: pd.DataFrame,
    fields: Sequence[str],
    lfs: list[LabelingFunction],
    id_column: str | None,
) -> list[str]:
    if len(df) == 0:
        raise ValueError("empty batch: the DataFrame has no rows to label")
    if isinstance(fields, str):
        raise ValueError(f"fields must be a list of column names, not the string {fields!r}")
    field_list = list(fields)
    if not field_list:
        raise ValueError("fields is empty; name the column(s) the LFs read, e.g. ['text']")
    columns = list(df.columns)
    for name in [*field_list, *([id_column] if id_column is not None else [])]:
        if name not in columns:
            raise ValueError(f"column {name!r} is not in the DataFrame; its columns: {columns}")
        if columns.count(name) > 1:
            raise ValueError(f"column {name!r} appears {columns.count(name)} times in the frame")
    if len(set(field_list)) < len(field_list):
        raise ValueError(f"fields repeats a column: {field_list}")
    for lf in lfs:
        spec = vector_spec(lf)
        if spec is not None and spec.field not in field_list:
            raise ValueError(
                f"labeling function {lf.name!r} reads field {spec.field!r}, which is not in "
                f"fields {field_list}"
            )
    return field_list


def _check_n_jobs(n_jobs: int | None) -> int:
    if n_jobs is None:
        return os.cpu_count() or 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be an int >= 1 or None (one per CPU), got {n_jobs!r}")
    return n_jobs


def _check_not_missing(df: pd.DataFrame, fields: list[str], id_column: str | None) -> None:
    missing = df[fields].isna()
    rows = missing.any(axis=1).to_numpy()
    if not rows.any():
        return
    position = int(rows.argmax())
    per_field = {f: int(n) for f, n in missing.sum().items() if n}
    raise ValueError(
        f"{int(rows.sum())} row(s) have a missing value in fields {per_field}, first at row "
        f"{_row_name(df, position, id_column)}; LFs need a value in every field they read: "
        f"drop or fill those rows first"
    )


def _row_id(df: pd.DataFrame, position: int, id_column: str | None) -> object:
    value = df[id_column].iloc[position] if id_column is not None else df.index[position]
    # Show 11 rather than np.int64(11): the message is for a person finding the row.
    return value.item() if isinstance(value, np.generic) else value


def _row_name(df: pd.DataFrame, position: int, id_column: str | None) -> str:
    row = _row_id(df, position, id_column)
    return f"{id_column}={row!r}" if id_column is not None else f"with index {row!r}"


# --- deduplication -------------------------------------------------------------------------


def _distinct(df: pd.DataFrame, fields: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the distinct ``fields`` values per row (in order of first appearance), and
    the position of each value's first row."""
    codes = _column_codes(df[fields[0]])
    for field in fields[1:]:
        codes = _combine(codes, _column_codes(df[field]))
    _, first = np.unique(codes, return_index=True)
    return codes, first.astype(np.int64)


def _column_codes(column: pd.Series) -> np.ndarray:
    """Equal codes only for values no LF could tell apart.

    ``pd.factorize`` merges values that compare equal, but 1, 1.0 and True compare equal
    and print differently, as do 0.0 and -0.0. So: strings, integers, booleans, dates
    and categories are keyed by value; floats by value and sign; object columns only
    when every value is exactly a ``str``; any other column is not deduplicated.
    """
    dtype = column.dtype
    if is_object_dtype(dtype):
        safe = all(type(v) is str for v in column.to_numpy())
    else:
        safe = (
            is_string_dtype(dtype)
            or is_integer_dtype(dtype)
            or is_bool_dtype(dtype)
            or is_float_dtype(dtype)
            or is_datetime64_any_dtype(dtype)
            or is_timedelta64_dtype(dtype)
            or isinstance(dtype, pd.CategoricalDtype)
        )
    if not safe:
        return np.arange(len(column), dtype=np.int64)
    codes = pd.factorize(column, sort=False)[0].astype(np.int64)
    if is_float_dtype(dtype):
        signs = np.signbit(column.to_numpy(dtype=np.float64)).astype(np.int64)
        codes = _combine(codes, signs)
    return codes


def _combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    codes = pd.factorize(a * (int(b.max()) + 1) + b, sort=False)[0]
    return np.asarray(codes, dtype=np.int64)


def _distinct_rows(df: pd.DataFrame, fields: list[str], first: np.ndarray) -> pd.DataFrame:
    """The first row of each distinct value, ``fields`` only, as DataFrame.apply sees it.

    DataFrame.apply(axis=1) hands each row over as a Series of the dtype common to all
    columns (object for a typical mixed frame), so a str column arrives as Python str
    objects. Casting the selected columns to that dtype makes the rows built here hold
    the same objects as the rows PandasLFApplier builds from the whole frame.
    """
    row_dtype = df.iloc[0].dtype
    rows = df[fields].iloc[first]
    if any(dtype != row_dtype for dtype in rows.dtypes):
        rows = rows.astype(row_dtype)
    # Column labels as a plain object Index: same labels, but pandas 3's Arrow-backed
    # string Index makes every x.<field> lookup and every preprocessor copy of a row
    # several times slower (measured: 134 vs 83 us per copy, 56 vs 9 us per lookup).
    return rows.set_axis(pd.Index(rows.columns.tolist(), dtype=object), axis=1)


# --- vectorized keyword and regex LFs -----------------------------------------------------


@dataclass
class _Failure:
    row: int  # distinct-row index
    lf: int  # index into the LF list
    exc: BaseException
    fatal: bool = False  # a non-label return value: raised whatever ``errors`` says
    remote_traceback: str | None = None


def _label_vectorized(
    rows: pd.DataFrame,
    lfs: list[LabelingFunction],
    specs: list[VectorSpec | None],
    labels: np.ndarray,
    failed: np.ndarray,
) -> list[_Failure]:
    """Fill the columns of LFs that have a spec; return each one's first failure."""
    values: dict[str, list[Any]] = {}
    lowered: dict[str, list[str]] = {}
    valid: dict[str, np.ndarray] = {}
    failures: list[_Failure] = []
    for j, spec in enumerate(specs):
        if spec is None:
            continue
        field = spec.field
        if field not in values:
            values[field] = rows[field].tolist()
            valid[field] = np.fromiter(
                (isinstance(v, str) for v in values[field]), dtype=bool, count=len(rows)
            )
        texts = values[field]
        ok = valid[field]
        if not ok.all():
            texts = [v if isinstance(v, str) else "" for v in texts]
        if spec.kind == "keyword":
            if field not in lowered:
                lowered[field] = [t.lower() for t in texts]
            hits = _keyword_hits(lowered[field], spec.keywords)
        else:
            search = spec.compiled().search
            hits = np.fromiter((search(t) is not None for t in texts), dtype=bool, count=len(rows))
        labels[:, j] = np.where(hits & ok, spec.label, ABSTAIN)
        if not ok.all():
            failed[:, j] = ~ok
            row = int((~ok).argmax())
            exc = not_a_str_error(lfs[j].name, field, values[field][row])
            failures.append(_Failure(row=row, lf=j, exc=exc))
    return failures


def _keyword_hits(lowered: list[str], keywords: tuple[str, ...]) -> np.ndarray:
    n = len(lowered)
    if len(keywords) == 1:
        word = keywords[0]
        return np.fromiter((word in t for t in lowered), dtype=bool, count=n)
    return np.fromiter((any(w in t for w in keywords) for t in lowered), dtype=bool, count=n)


# --- row-by-row LFs ------------------------------------------------------------------------


@dataclass
class _Chunk:
    start: int
    labels: np.ndarray  # (rows, generic LFs) int64
    failed: np.ndarray  # (rows, generic LFs) bool
    failure: _Failure | None  # the chunk's first failure, when it stopped there


class _Stop(Exception):
    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure)
        self.failure = failure


def _label_rows(
    rows: pd.DataFrame,
    lfs: list[LabelingFunction],
    columns: list[int],
    start: int,
    stop: int,
    stop_on_error: bool,
) -> _Chunk:
    """Run ``lfs`` on distinct rows ``start:stop`` as PandasLFApplier does on each row."""
    chunk = rows.iloc[start:stop]
    labels = np.full((len(chunk), len(lfs)), ABSTAIN, dtype=np.int64)
    failed = np.zeros(labels.shape, dtype=bool)
    position = 0

    def label_row(x: pd.Series) -> int:
        nonlocal position
        i = position
        position += 1
        for k, lf in enumerate(lfs):
            try:
                y = lf(x)
            except Exception as exc:
                if stop_on_error:
                    raise _Stop(_Failure(row=start + i, lf=columns[k], exc=exc)) from exc
                failed[i, k] = True
                continue
            try:
                # Snorkel keeps a vote y when y >= 0 and abstains otherwise.
                if y >= 0:
                    labels[i, k] = y
            except Exception as exc:
                bad = TypeError(f"returned {y!r}, which is not an int label")
                raise _Stop(_Failure(row=start + i, lf=columns[k], exc=bad, fatal=True)) from exc
        return 0

    failure = None
    try:
        chunk.apply(label_row, axis=1)
    except _Stop as stopped:
        failure = stopped.failure
    finally:
        _clear_memo_caches(lfs)
    return _Chunk(start=start, labels=labels, failed=failed, failure=failure)


def _clear_memo_caches(lfs: list[LabelingFunction]) -> None:
    pending = [p for lf in lfs for p in getattr(lf, "_pre", [])]
    while pending:
        mapper = pending.pop()
        if getattr(mapper, "memoize", False):
            mapper.reset_cache()
        pending.extend(getattr(mapper, "_pre", []))


def _run_generic(
    rows: pd.DataFrame,
    lfs: list[LabelingFunction],
    columns: list[int],
    n_rows: int,
    stop_on_error: bool,
    workers: int,
    progress: Progress | None,
) -> list[_Chunk]:
    """Label distinct rows ``0:n_rows`` with ``lfs``, in this process or in a pool."""
    # Processes, not threads: LFs are pure Python and hold the GIL. A fork-started
    # ProcessPoolExecutor rather than Dask: the children inherit the distinct rows and the
    # LFs through fork, so nothing is pickled on the way in (LFs made with Snorkel's
    # decorators cannot even be pickled by reference), while Dask's process scheduler
    # cloudpickles LFs and chunks into spawn-started workers that must first import
    # pandas, Snorkel and TextBlob. Measured on 8,000 unique YouTube comments, 2 CPUs:
    # this pool 2.2 s; Dask processes 4.9 s (spawn, its default) or 2.7 s (fork); Dask
    # threads 3.9 s. Where fork does not exist, the work stays in this process.
    # A daemonic process (e.g. a Dask worker) may not start children.
    use_pool = (
        workers > 1
        and n_rows >= _POOL_MIN_ROWS
        and "fork" in multiprocessing.get_all_start_methods()
        and not multiprocessing.current_process().daemon
    )
    if not use_pool:
        return _run_in_process(rows, lfs, columns, n_rows, stop_on_error, progress)
    size = max(1, min(_CHUNK_ROWS, math.ceil(n_rows / (workers * _CHUNKS_PER_WORKER))))
    starts = list(range(0, n_rows, size))
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(starts)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(rows, lfs, columns, stop_on_error),
    )
    chunks: list[_Chunk] = []
    done = 0
    try:
        futures: dict[Future[_Chunk], int] = {
            pool.submit(_label_rows_in_worker, s, min(n_rows, s + size)): s for s in starts
        }
        for future in as_completed(futures):
            if future.cancelled():
                continue
            chunk = future.result()
            chunks.append(chunk)
            done += len(chunk.labels)
            if chunk.failure is not None and (stop_on_error or chunk.failure.fatal):
                # Later chunks cannot hold an earlier failure; earlier ones still can.
                for other, start in futures.items():
                    if start > chunk.start:
                        other.cancel()
            if progress is not None:
                progress(done, n_rows)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for chunk in chunks:
        if chunk.failure is not None and chunk.failure.remote_traceback is not None:
            chunk.failure.exc.__cause__ = _RemoteTraceback(chunk.failure.remote_traceback)
    return sorted(chunks, key=lambda c: c.start)


def _run_in_process(
    rows: pd.DataFrame,
    lfs: list[LabelingFunction],
    columns: list[int],
    n_rows: int,
    stop_on_error: bool,
    progress: Progress | None,
) -> list[_Chunk]:
    chunks = []
    for start in range(0, n_rows, _CHUNK_ROWS):
        stop = min(n_rows, start + _CHUNK_ROWS)
        chunk = _label_rows(rows, lfs, columns, start, stop, stop_on_error)
        chunks.append(chunk)
        if progress is not None:
            progress(stop, n_rows)
        if chunk.failure is not None and (stop_on_error or chunk.failure.fatal):
            break
    return chunks


_WORKER_STATE: tuple[pd.DataFrame, list[LabelingFunction], list[int], bool] | None = None


def _init_worker(
    rows: pd.DataFrame, lfs: list[LabelingFunction], columns: list[int], stop_on_error: bool
) -> None:
    global _WORKER_STATE
    _WORKER_STATE = (rows, lfs, columns, stop_on_error)


def _label_rows_in_worker(start: int, stop: int) -> _Chunk:
    if _WORKER_STATE is None:
        raise RuntimeError("worker started without its rows and LFs")
    rows, lfs, columns, stop_on_error = _WORKER_STATE
    chunk = _label_rows(rows, lfs, columns, start, stop, stop_on_error)
    failure = chunk.failure
    if failure is not None:
        failure.remote_traceback = "".join(traceback.format_exception(failure.exc))
        try:
            pickle.dumps(failure.exc)
        except Exception:
            failure.exc = RuntimeError(f"{type(failure.exc).__name__}: {failure.exc}")
    return chunk


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, shown as its cause."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _raise_failure(
    failure: _Failure,
    lfs: list[LabelingFunction],
    df: pd.DataFrame,
    first: np.ndarray,
    id_column: str | None,
) -> NoReturn:
    position = int(first[failure.row])
    name = lfs[failure.lf].name
    exc = failure.exc
    raise LFError(
        f"labeling function {name!r} failed on row {_row_name(df, position, id_column)}: "
        f"{type(exc).__name__}: {exc}",
        lf_name=name,
        row=_row_id(df, position, id_column),
    ) from exc
