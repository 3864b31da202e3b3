"""Streaming, resumable batch scoring: chunks in, one prediction part per chunk out.

Input files (Parquet or CSV) are read ``chunk_rows`` rows at a time, so memory stays
bounded by the chunk, not the input. Each chunk is checked (optional), cast to the
model's input signature, scored, and written as its own part; a part that already exists
is skipped, so a re-run after a failure picks up where the last one stopped and never
scores a chunk twice. Chunk names depend only on the input and ``chunk_rows``.

Usage::

    chunks = iter_chunks([Path("in.parquet")], chunk_rows=50_000)
    results = score_chunks(chunks, model.predict, sink, id_column="comment_id",
                           constants={"model_version": "3"})
    assert sum(r.rows_in for r in results) == sum(r.rows_out + r.rows_quarantined for r in results)

Why one module: reading chunks, casting them to the model's signature and scoring them with
quarantine are the three steps of `score_chunks`, kept beside each other so that the row
accounting (in = out + quarantined) reads in one place.
"""

from __future__ import annotations

import bisect
import io
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from mlsys.atomic import write_bytes_atomic
from mlsys.inference.inputs import InputFile
from mlsys.memory import bound_streaming_memory, trim_heap

__all__ = [
    "Chunk",
    "ChunkResult",
    "ParquetRows",
    "PartSink",
    "cast_to_signature",
    "count_chunks",
    "iter_chunks",
    "parquet_frames",
    "part_name",
    "score_chunks",
]

QUARANTINE_REASON = "quarantine_reason"
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})
"""What a ``boolean`` input column may hold as text (any case, surrounding spaces ignored)."""
ROW_COLUMN = "row"
"""The id column of predictions when the input has none: ``<file>:<row>`` positions."""


def part_name(file: int, index: int) -> str:
    """The part written for chunk ``index`` of input file ``file``."""
    return f"part-{file:04d}-{index:05d}.parquet"


@dataclass(frozen=True)
class Chunk:
    """``rows`` consecutive rows of one input file, from row ``start``: ``chunk_rows`` of
    them, or fewer at the file's end. The rows are read by :meth:`read`, so a chunk that
    is skipped (another worker's, or scored by an earlier run) costs no decoding."""

    file: int
    index: int
    start: int
    rows: int
    reader: Callable[[], pd.DataFrame] = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return part_name(self.file, self.index)

    def read(self) -> pd.DataFrame:
        """The chunk's rows, indexed by their row numbers in the file. Each call reads
        them again; Parquet chunks are best read in order (see :func:`iter_chunks`)."""
        frame = self.reader()
        if len(frame) != self.rows:
            raise RuntimeError(f"{self.name}: read {len(frame)} rows, expected {self.rows}")
        frame.index = pd.RangeIndex(self.start, self.start + self.rows)
        return frame


def iter_chunks(
    paths: Sequence[InputFile],
    chunk_rows: int,
    *,
    rename: Mapping[str, str] | None = None,
) -> Iterator[Chunk]:
    """Chunks of every file in ``paths`` (local paths or S3 objects read in place, see
    :mod:`mlsys.inference.inputs`), in order; chunk ``k`` of a file holds its rows
    ``[k * chunk_rows, (k + 1) * chunk_rows)``. ``rename`` maps source column names to the
    names the model and suites expect (e.g. ``CONTENT`` -> ``text``); columns it does not
    name keep their names.

    Parquet chunks are planned from the file's footer and read only when asked
    (:meth:`Chunk.read`), from the row groups that hold them: chunks read in increasing
    order share one decoder that never decodes a row group twice, and whole row groups
    between two read chunks are not decoded at all. CSV is parsed as it is iterated,
    ``chunk_rows`` rows at a time with pandas' chunked reader (all columns as strings,
    empty cells missing).

    Raises:
        ValueError: ``chunk_rows`` is not positive, a file is neither .parquet nor .csv,
            cannot be read, or holds no rows.
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    if not paths:
        raise ValueError("no input files to score")
    for file, path in enumerate(paths):
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from _parquet_chunks(file, path, chunk_rows, rename)
        elif suffix == ".csv":
            yield from _csv_chunks(file, path, chunk_rows, rename)
        else:
            raise ValueError(f"input file {path.name!r} is neither .parquet nor .csv")


def count_chunks(paths: Sequence[InputFile], chunk_rows: int) -> int:
    """How many chunks :func:`iter_chunks` will make: exact for Parquet (from the file
    footers), an estimate for CSV (line count, which overcounts quoted line breaks).
    Cheap enough to size a worker pool before reading anything."""
    total = 0
    for path in paths:
        if path.suffix.lower() == ".parquet":
            rows = _parquet_file(path).metadata.num_rows
        else:
            with path.open("rb") as handle:
                rows = max(
                    sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
                    - 1,
                    0,
                )
        total += max(1, -(-rows // chunk_rows))
    return total


def _renamed(frame: pd.DataFrame, rename: Mapping[str, str] | None) -> pd.DataFrame:
    return frame.rename(columns=dict(rename)) if rename else frame


def _parquet_chunks(
    file: int, path: InputFile, chunk_rows: int, rename: Mapping[str, str] | None
) -> Iterator[Chunk]:
    rows = ParquetRows(path, batch_rows=chunk_rows)
    if rows.num_rows == 0:
        raise ValueError(f"input file {path.name!r} holds no rows")

    def reader(start: int, count: int) -> Callable[[], pd.DataFrame]:
        return lambda: _renamed(
            rows.read(start, count).to_pandas(types_mapper=_types_mapper), rename
        )

    for index, start in enumerate(range(0, rows.num_rows, chunk_rows)):
        count = min(chunk_rows, rows.num_rows - start)
        yield Chunk(file, index, start, count, reader(start, count))


class ParquetRows:
    """Row ranges of one Parquet file, decoded from the row groups that hold them.

    One batch iterator serves consecutive reads: a read at or after the end of the last
    one continues it when the new range starts in the row group the iterator is in, and
    opens a new iterator at the range's row group when it starts further on (the row
    groups between are skipped without decoding). Rows of the current row group before
    the range are decoded and dropped: a row group is the smallest unit Parquet decodes.
    At most ``batch_rows`` decoded rows are held between reads.
    """

    def __init__(self, path: InputFile, batch_rows: int) -> None:
        try:
            # No pre-buffering: with it, the first read caches the compressed column chunks
            # of every row group from there to the end of the file (about 2 MiB per 50k
            # comments), so memory would grow with the input instead of the chunk.
            self._file = _parquet_file(path, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"cannot read Parquet file {path.name!r}: {exc}") from exc
        self.path = path
        self.batch_rows = batch_rows
        meta = self._file.metadata
        self.num_rows: int = meta.num_rows
        self._group_starts = [0]
        for group in range(meta.num_row_groups):
            self._group_starts.append(self._group_starts[-1] + meta.row_group(group).num_rows)
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._pending: pa.RecordBatch | None = None  # decoded rows from self._position on
        self._position = 0

    def _group(self, row: int) -> int:
        return bisect.bisect_right(self._group_starts, row) - 1

    def _seek(self, start: int) -> None:
        if (
            self._batches is None
            or start < self._position
            or self._group(start) > self._group(self._position)
        ):
            group = self._group(start)
            self._batches = self._file.iter_batches(
                batch_size=self.batch_rows,
                row_groups=range(group, len(self._group_starts) - 1),
                use_threads=False,
            )
            self._pending = None
            self._position = self._group_starts[group]
        while self._position < start:
            batch = self._take()
            if self._position + len(batch) <= start:
                self._position += len(batch)
            else:
                cut = start - self._position
                self._pending = batch.slice(cut)
                self._position = start

    def _take(self) -> pa.RecordBatch:
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return batch
        assert self._batches is not None
        try:
            return next(self._batches)
        except StopIteration:
            raise RuntimeError(
                f"{self.path.name}: the row groups ended at row {self._position} of {self.num_rows}"
            ) from None

    def read(self, start: int, count: int) -> pa.Table:
        """Rows ``[start, start + count)`` as a table.

        Raises:
            ValueError: the range is outside the file, or the file cannot be decoded.
        """
        if start < 0 or count < 0 or start + count > self.num_rows:
            raise ValueError(
                f"rows [{start}, {start + count}) are outside {self.path.name!r}, "
                f"which holds {self.num_rows}"
            )
        try:
            self._seek(start)
            pieces: list[pa.RecordBatch] = []
            need = count
            while need > 0:
                batch = self._take()
                if len(batch) > need:
                    self._pending = batch.slice(need)
                    batch = batch.slice(0, need)
                pieces.append(batch)
                need -= len(batch)
                self._position += len(batch)
        except (pa.ArrowInvalid, OSError) as exc:
            self._batches = None
            raise ValueError(f"cannot read Parquet file {self.path.name!r}: {exc}") from exc
        return pa.Table.from_batches(pieces, schema=self._file.schema_arrow)


def parquet_frames(
    path: InputFile, columns: Sequence[str], batch_rows: int
) -> Iterator[pd.DataFrame]:
    """The ``columns`` of one Parquet file that it has, ``batch_rows`` rows at a time, in
    order: only those columns' chunks are fetched (ranged GETs for an S3 object) and at
    most one batch is decoded at a time. A file with none of them gives no frames.

    Raises:
        ValueError: the file cannot be read or decoded (naming it).
    """
    try:
        file = _parquet_file(path, pre_buffer=False)
        names = set(file.schema_arrow.names)
        present = [c for c in columns if c in names]
        if not present:
            return
        for batch in file.iter_batches(batch_size=batch_rows, columns=present, use_threads=False):
            yield pa.Table.from_batches([batch]).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot read Parquet file {path.name!r}: {exc}") from exc


def _parquet_file(path: InputFile, **options: Any) -> pq.ParquetFile:
    """A Parquet reader over a local file, or over an S3 object in place: unbuffered, so
    that each read the reader makes (the footer, a column chunk) is one ranged GET of
    exactly its bytes."""
    return pq.ParquetFile(
        path if isinstance(path, Path) else path.open("rb", buffering=0), **options
    )


def _types_mapper(arrow_type: pa.DataType) -> Any:
    """Arrow strings as pandas' NA-aware string dtype, as the rest of mlsys reads them."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype()
    return None


def _csv_chunks(
    file: int, path: InputFile, chunk_rows: int, rename: Mapping[str, str] | None
) -> Iterator[Chunk]:
    start = 0
    for index, frame in enumerate(_csv_frames(path, chunk_rows)):
        frame = _renamed(frame, rename)
        yield Chunk(file, index, start, len(frame), _copy_of(frame))
        start += len(frame)
    if start == 0:
        raise ValueError(f"input file {path.name!r} holds no rows")


def _copy_of(frame: pd.DataFrame) -> Callable[[], pd.DataFrame]:
    # A shallow copy, so that setting the index of what read() returns leaves frame be.
    return lambda: frame.copy(deep=False)


def _csv_frames(path: InputFile, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        reader = pd.read_csv(
            path if isinstance(path, Path) else path.open("rb"),
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
            chunksize=chunk_rows,
            index_col=False,
        )
        for frame in reader:
            yield frame.astype("string").replace("", pd.NA)
    except pd.errors.EmptyDataError:
        return
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ValueError(f"cannot parse CSV file {path.name!r}: {exc}") from exc


def cast_to_signature(frame: pd.DataFrame, inputs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The signature's input columns of ``frame``, cast to the signature's types.

    ``inputs`` are ``(column, mlflow type)`` pairs, e.g. ``[("text", "string")]``; strings
    become Python ``str`` objects (what MLflow's schema enforcement accepts), integers
    ``int64`` (a value with a fraction is refused, not truncated), floats ``float64``,
    booleans ``bool``: ``true``/``1``/``yes`` and ``false``/``0``/``no`` as text (any case),
    0 and 1 as numbers.

    Raises:
        ValueError: a column is missing (named, with the columns found) or a value cannot
            be cast (the column, the row and the value are named).
    """
    missing = [name for name, _ in inputs if name not in frame.columns]
    if missing:
        raise ValueError(
            f"input lacks column(s) {missing} of the model signature; found {list(frame.columns)}"
        )
    out: dict[str, Any] = {}
    for name, kind in inputs:
        if kind not in _CASTS:
            raise ValueError(
                f"column {name!r} has signature type {kind!r}, which is not supported; "
                f"supported: {sorted(_CASTS)}"
            )
        column = frame[name]
        nulls = column.isna()
        if nulls.any():
            row = column.index[nulls.to_numpy()][0]
            raise ValueError(f"column {name!r} is missing a value in row {row}")
        try:
            out[name] = _CASTS[kind](column)
        except (TypeError, ValueError, OverflowError) as exc:
            bad = _first_uncastable(column, kind)
            where = f"row {bad[0]} holds {bad[1]!r}" if bad is not None else str(exc)
            hint = " (booleans are true/false, 1/0 or yes/no)" if kind == "boolean" else ""
            raise ValueError(f"column {name!r} cannot be cast to {kind}: {where}{hint}") from exc
    return pd.DataFrame(out, index=frame.index)


def _to_string(column: pd.Series[Any]) -> pd.Series[Any]:
    return column.astype(str).astype(object)


def _to_long(column: pd.Series[Any]) -> pd.Series[Any]:
    numbers = pd.to_numeric(column, errors="raise")
    if not (numbers == np.trunc(numbers)).all():
        raise ValueError("a value has a fraction")
    return numbers.astype("int64")


def _to_double(column: pd.Series[Any]) -> pd.Series[Any]:
    return pd.to_numeric(column, errors="raise").astype("float64")


def _to_bool(column: pd.Series[Any]) -> pd.Series[Any]:
    truth = _truth(column)
    if truth.isna().any():
        raise ValueError("not a boolean")
    return truth.astype("bool")


def _truth(column: pd.Series[Any]) -> pd.Series[Any]:
    """True, False, or missing where a value is not a boolean, row by row."""
    if is_bool_dtype(column):
        return column.astype("boolean")
    if is_numeric_dtype(column):
        return column.map({0: False, 1: True}).astype("boolean")
    words = column.astype(str).str.strip().str.lower()
    truth = pd.Series(pd.NA, index=column.index, dtype="boolean")
    truth[words.isin(TRUE_WORDS).to_numpy()] = True
    truth[words.isin(FALSE_WORDS).to_numpy()] = False
    return truth


_CASTS: dict[str, Callable[[pd.Series[Any]], pd.Series[Any]]] = {
    "string": _to_string,
    "long": _to_long,
    "integer": _to_long,
    "double": _to_double,
    "float": _to_double,
    "boolean": _to_bool,
}


def _first_uncastable(column: pd.Series[Any], kind: str) -> tuple[Any, Any] | None:
    """The row and value of ``column``'s first value that cannot be cast to ``kind``, or
    None when each value casts on its own."""
    if kind == "boolean":
        bad = _truth(column).isna()
    elif kind in ("long", "integer", "double", "float"):
        numbers = pd.to_numeric(column, errors="coerce")
        bad = numbers.isna() & column.notna()
        if kind in ("long", "integer") and is_numeric_dtype(numbers):
            bad |= numbers.notna() & (numbers != np.trunc(numbers))
    else:  # string: every value has one
        return None
    if bad.any():
        row = column.index[bad.to_numpy()][0]
        value = column.loc[row]
        return row, value.item() if isinstance(value, np.generic) else value
    return None


class PartSink(Protocol):
    """Where parts go: an S3 prefix, a local folder."""

    def rows(self, name: str) -> int | None:
        """The row count of part ``name``, or None when it does not exist."""

    def write(self, name: str, data: bytes) -> None:
        """Store part ``name`` (atomically: a part is either whole or absent)."""


class FolderSink:
    """Parts as files in a local folder (tests, benchmarks, local runs)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def rows(self, name: str) -> int | None:
        path = self.folder / name
        return pq.ParquetFile(path).metadata.num_rows if path.is_file() else None

    def write(self, name: str, data: bytes) -> None:
        write_bytes_atomic(self.folder / name, data)


@dataclass(frozen=True)
class ChunkResult:
    """What happened to one chunk; ``skipped`` chunks were scored by an earlier run."""

    name: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    skipped: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_quarantined": self.rows_quarantined,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 4),
        }


Check = Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]
"""A chunk check: ``frame -> (passed, quarantined)``; quarantined rows carry a reason."""


def score_chunks(
    chunks: Iterable[Chunk],
    predict: Callable[[pd.DataFrame], pd.DataFrame],
    sink: PartSink,
    *,
    inputs: Sequence[tuple[str, str]] = (("text", "string"),),
    outputs: Sequence[tuple[str, str]] | None = None,
    id_column: str | None = None,
    constants: Mapping[str, Any] | None = None,
    check: Check | None = None,
    quarantine: PartSink | None = None,
    partition: tuple[int, int] = (0, 1),
    progress: Callable[[ChunkResult], None] | None = None,
) -> list[ChunkResult]:
    """Score every chunk of this ``partition`` not already in ``sink``.

    For each chunk: ``check`` splits it into passed and quarantined rows (the latter go to
    ``quarantine`` under the chunk's part name), the passed rows are cast to ``inputs``
    and given to ``predict``, and the predictions (``id_column``'s values, or ``row`` =
    ``<file>:<row>`` when there is none; then the model's outputs; then ``constants``
    such as model name and version) are written to ``sink`` as one Parquet part. The
    prediction part is written last, so its presence means the chunk is done. Whatever
    columns the model returns are kept as they are: for a text classifier, ``label``,
    ``probability`` and one ``proba_*`` column per class, however many classes there are.

    Only chunks of this partition that are not done are read (:meth:`Chunk.read`), one
    at a time; before the first, the process's allocators are set to return what a chunk
    frees (:func:`mlsys.memory.bound_streaming_memory`, process-wide), and the heap is
    trimmed after each chunk.

    Args:
        inputs: the model's input columns and their MLflow types (its signature's inputs).
        outputs: the model's output columns and their MLflow types (its signature's
            outputs): a chunk whose rows are all quarantined is written as an empty part
            with these columns, so that every part has the same columns. None: such a
            part holds the id column and the constants only.
        partition: ``(i, n)``: this call scores chunks whose running number is ``i`` mod
            ``n``, so ``n`` workers can share an input; with Parquet input, a worker
            decodes only the row groups that hold its chunks.

    Returns:
        One result per chunk of the partition, in input order.

    Raises:
        ValueError: bad ``partition``, a chunk fails the cast, or ``predict`` returns a
            different number of rows than it was given.
    """
    worker, workers = partition
    if workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"partition must be (i, n) with 0 <= i < n, got {partition!r}")
    constants = dict(constants or {})
    results: list[ChunkResult] = []
    bound_streaming_memory()
    for number, chunk in enumerate(chunks):
        if number % workers != worker:
            continue
        began = time.perf_counter()
        done = sink.rows(chunk.name)
        if done is not None:
            held = quarantine.rows(chunk.name) if quarantine is not None else None
            result = ChunkResult(chunk.name, chunk.rows, done, held or 0, True, 0.0)
        else:
            result = _score_chunk(
                chunk,
                predict,
                sink,
                inputs,
                outputs,
                id_column,
                constants,
                check,
                quarantine,
                began,
            )
        if result.rows_in != result.rows_out + result.rows_quarantined:
            raise RuntimeError(
                f"{chunk.name}: {result.rows_in} rows in but {result.rows_out} predicted and "
                f"{result.rows_quarantined} quarantined"
            )
        results.append(result)
        trim_heap()
        if progress is not None:
            progress(result)
    return results


def _score_chunk(
    chunk: Chunk,
    predict: Callable[[pd.DataFrame], pd.DataFrame],
    sink: PartSink,
    inputs: Sequence[tuple[str, str]],
    outputs: Sequence[tuple[str, str]] | None,
    id_column: str | None,
    constants: Mapping[str, Any],
    check: Check | None,
    quarantine: PartSink | None,
    began: float,
) -> ChunkResult:
    frame = chunk.read()
    if check is not None:
        passed, held = check(frame)
        if len(passed) + len(held) != len(frame):
            raise RuntimeError(
                f"{chunk.name}: the check returned {len(passed)} + {len(held)} rows of {len(frame)}"
            )
        if len(held):
            if quarantine is None:
                raise ValueError(f"{chunk.name}: {len(held)} rows quarantined but no sink given")
            quarantine.write(chunk.name, _parquet(held))
    else:
        passed, held = frame, frame.iloc[:0]
    if id_column is not None and id_column not in frame.columns:
        raise ValueError(
            f"id column {id_column!r} is not in the input; found {list(frame.columns)}"
        )
    if len(passed):
        try:
            scored = predict(cast_to_signature(passed, inputs))
        except ValueError as exc:
            raise ValueError(f"{chunk.name} (rows from {chunk.start}): {exc}") from exc
        if len(scored) != len(passed):
            raise ValueError(
                f"{chunk.name}: the model returned {len(scored)} rows for {len(passed)} inputs"
            )
        ids = (
            passed[id_column].reset_index(drop=True)
            if id_column is not None
            else pd.Series([f"{chunk.file}:{i}" for i in passed.index], dtype="string")
        )
        predictions = pd.concat(
            [ids.rename(id_column or ROW_COLUMN), scored.reset_index(drop=True)], axis=1
        )
        for key, value in constants.items():
            predictions[key] = value
        sink.write(chunk.name, _parquet(predictions))
    else:
        # An empty part still marks the chunk done, so a re-run does not redo it.
        ids = frame[id_column].iloc[:0] if id_column is not None else pd.Series([], dtype="string")
        empty = pd.DataFrame({id_column or ROW_COLUMN: ids.reset_index(drop=True)})
        for name, kind in outputs or ():
            empty[name] = pd.Series([], dtype=_EMPTY_DTYPES.get(kind, object))
        for key, value in constants.items():
            empty[key] = pd.Series([value]).iloc[:0].reset_index(drop=True)
        sink.write(chunk.name, _parquet(empty))
    return ChunkResult(
        chunk.name, len(frame), len(passed), len(held), False, time.perf_counter() - began
    )


# The pandas dtype of each MLflow column type, for the columns of an empty part.
_EMPTY_DTYPES: dict[str, Any] = {
    "string": str,
    "long": "int64",
    "integer": "int32",
    "double": "float64",
    "float": "float32",
    "boolean": "bool",
}


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", index=False)
    return buffer.getvalue()
