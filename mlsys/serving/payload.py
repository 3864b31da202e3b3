"""Request bodies of MLflow's scoring protocol, read into rows without building a DataFrame.

``POST /invocations`` takes what ``mlflow models serve`` takes, so its clients switch
without change:

=====================  =====================================================================
content type           body
=====================  =====================================================================
``application/json``   ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``
                       ``{"dataframe_records": [{"col": value, ...}, ...]}``
                       ``{"inputs": {"col": [v, ...]}}`` (or a scalar per column: one row),
                       ``{"inputs": [{"col": value}, ...]}``, and for a model with one input
                       column ``{"inputs": [v, ...]}``; ``instances`` like ``inputs``
``text/csv``           a header line, then rows (``pandas.DataFrame.to_csv``)
``application/vnd.     a Parquet file (``pandas.DataFrame.to_parquet``)
apache.parquet``
=====================  =====================================================================

A ``params`` key is accepted and not passed on (the served models take none). Only UTF-8
is read, as MLflow does. Rows are kept column-wise as plain Python values (:class:`Rows`):
a single-row request, the common case online, costs a dict of one-element lists, and the
batcher builds one DataFrame per batch, not per request.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

__all__ = [
    "CONTENT_TYPES",
    "PayloadError",
    "Rows",
    "media_type",
    "parse_body",
]

JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES: tuple[str, ...] = (JSON, CSV, PARQUET)

_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")


class PayloadError(ValueError):
    """A body the server cannot read: ``status`` 400 (malformed) or 415 (content type),
    with MLflow's ``error_code`` and a message that names what is wrong."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _malformed(message: str) -> PayloadError:
    return PayloadError(400, "BAD_REQUEST", message)


@dataclass(frozen=True)
class Rows:
    """Rows of one request, column-wise: ``columns[name][i]`` is row i's value.

    Every column holds ``count`` values; a value a row lacks (a record without that key)
    is None, as pandas would make it NaN.
    """

    columns: dict[str, list[Any]]
    count: int

    @classmethod
    def from_records(cls, records: Sequence[Any], what: str) -> Rows:
        """Rows from a list of objects; ``what`` names the field in error messages."""
        names: dict[str, None] = {}
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise _malformed(
                    f"{what} must be a list of objects; item {index} is "
                    f"{type(record).__name__} {_short(record)}"
                )
            names.update(dict.fromkeys(record))
        columns = {name: [record.get(name) for record in records] for name in names}
        return cls(columns, len(records))

    def take(self, indices: Sequence[int]) -> Rows:
        """The rows at ``indices``, in that order."""
        return Rows({c: [v[i] for i in indices] for c, v in self.columns.items()}, len(indices))

    def select(self, names: Iterable[str]) -> Rows:
        """Only the columns in ``names`` that the rows have."""
        return Rows({n: self.columns[n] for n in names if n in self.columns}, self.count)

    def keys(self, names: Sequence[str]) -> list[Hashable]:
        """One hashable key per row: its values of ``names`` (what a model reads)."""
        if len(names) == 1:
            return list(self.columns[names[0]])
        return list(zip(*(self.columns[n] for n in names), strict=True))

    def frame(self, names: Sequence[str]) -> pd.DataFrame:
        """The columns ``names`` as a DataFrame (values as given: no dtype casting)."""
        return pd.DataFrame({n: self.columns[n] for n in names}, columns=list(names))

    @staticmethod
    def concat(parts: Sequence[Rows], names: Sequence[str]) -> pd.DataFrame:
        """The columns ``names`` of several requests' rows, one after the other."""
        return pd.DataFrame(Rows.concat_columns(parts, names), columns=list(names))

    @staticmethod
    def concat_columns(parts: Sequence[Rows], names: Sequence[str]) -> dict[str, list[Any]]:
        """:meth:`concat` without the frame: column -> values."""
        if len(parts) == 1:
            return {n: parts[0].columns[n] for n in names}
        return {n: [v for part in parts for v in part.columns[n]] for n in names}


def media_type(header: str | None) -> str:
    """The media type of a ``Content-Type`` header, checked like MLflow's server does.

    Raises:
        PayloadError: 415 for a missing or unknown type, a charset other than UTF-8, or
            another parameter (each named).
    """
    if not header:
        raise PayloadError(
            415,
            "BAD_REQUEST",
            f"no Content-Type; send one of {list(CONTENT_TYPES)}",
        )
    mime, *parameters = (part.strip() for part in header.split(";"))
    mime = mime.lower()
    if mime not in CONTENT_TYPES:
        raise PayloadError(
            415,
            "BAD_REQUEST",
            f"Content-Type {header!r} is not supported; send one of {list(CONTENT_TYPES)}",
        )
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "charset":
            raise PayloadError(415, "BAD_REQUEST", f"unknown Content-Type parameter {parameter!r}")
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise PayloadError(
                415, "BAD_REQUEST", f"charset {value.strip()!r} is not supported; send UTF-8"
            )
    return mime


def parse_body(body: bytes, mime: str, inputs: Sequence[tuple[str, str]]) -> Rows:
    """The rows of a request body of media type ``mime`` (see :func:`media_type`).

    ``inputs`` are the model's input columns with their MLflow types: a bare list under
    ``inputs`` is the values of the only one, and CSV reads a string column as text even
    where it looks like numbers.

    Raises:
        PayloadError: 400 naming what is malformed.
    """
    if mime == JSON:
        return _parse_json(body, [name for name, _ in inputs])
    if mime == CSV:
        frame = _read_csv(body, [name for name, kind in inputs if kind == "string"])
    else:
        frame = _read_parquet(body)
    return Rows({str(c): _plain(frame[c].tolist()) for c in frame.columns}, len(frame))


def _parse_json(body: bytes, inputs: Sequence[str]) -> Rows:
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _malformed(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _malformed(
            f"the body must be a JSON object with one of the fields {list(_FORMATS)}; "
            f"got {type(document).__name__}"
        )
    given = [key for key in _FORMATS if key in document]
    unknown = sorted(set(document) - set(_FORMATS) - {"params"})
    if len(given) != 1 or unknown:
        raise _malformed(
            f"the body must have exactly one of the fields {list(_FORMATS)} (and optionally "
            f"params); got fields {sorted(document)}"
        )
    field = given[0]
    value = document[field]
    if field == "dataframe_split":
        return _split(value)
    if field == "dataframe_records":
        if not isinstance(value, list):
            raise _malformed(
                f"dataframe_records must be a list of records; got {type(value).__name__}"
            )
        return Rows.from_records(value, field)
    return _tensor_input(field, value, inputs)


def _split(value: Any) -> Rows:
    if not isinstance(value, dict) or "data" not in value:
        raise _malformed("dataframe_split must be an object with 'data' (and 'columns')")
    extra = sorted(set(value) - {"columns", "data", "index"})
    if extra:
        raise _malformed(f"dataframe_split has unknown fields {extra}")
    data = value["data"]
    if not isinstance(data, list):
        raise _malformed(f"dataframe_split.data must be a list of rows; got {_short(data)}")
    names = value.get("columns")
    if names is None:
        width = len(data[0]) if data and isinstance(data[0], list) else 0
        names = [str(i) for i in range(width)]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _malformed(f"dataframe_split.columns must be a list of names; got {_short(names)}")
    if len(set(names)) != len(names):
        raise _malformed(f"dataframe_split.columns repeat a name: {names}")
    for index, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(names):
            raise _malformed(
                f"dataframe_split.data row {index} must be a list of {len(names)} values "
                f"(one per column {names}); got {_short(row)}"
            )
    columns = {name: [row[i] for row in data] for i, name in enumerate(names)}
    return Rows(columns, len(data))


def _tensor_input(field: str, value: Any, inputs: Sequence[str]) -> Rows:
    if isinstance(value, dict):
        lengths = {len(v) for v in value.values() if isinstance(v, list)}
        if not lengths:  # one scalar per column: one row
            return Rows({str(k): [v] for k, v in value.items()}, 1 if value else 0)
        if len(lengths) != 1 or any(not isinstance(v, list) for v in value.values()):
            described = {k: len(v) if isinstance(v, list) else "scalar" for k, v in value.items()}
            raise _malformed(f"{field} columns must be lists of one length; got {described}")
        return Rows({str(k): list(v) for k, v in value.items()}, lengths.pop())
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            return Rows.from_records(value, field)
        if len(inputs) == 1:
            return Rows({inputs[0]: list(value)}, len(value))
        raise _malformed(
            f"{field} as a list of values needs a model with one input column; this one takes "
            f"{list(inputs)}: send {{{field!r}: {{column: [values]}}}}"
        )
    raise _malformed(f"{field} must be an object of columns or a list; got {_short(value)}")


def _read_csv(body: bytes, text_columns: Sequence[str]) -> pd.DataFrame:
    try:
        return pd.read_csv(
            io.BytesIO(body), encoding="utf-8", dtype=dict.fromkeys(text_columns, "object")
        )
    except Exception as exc:  # pandas raises several unrelated types for bad CSV
        raise _malformed(f"the body is not CSV with a header line: {exc}") from exc


def _read_parquet(body: bytes) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(body), engine="pyarrow")
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt input
        raise _malformed(f"the body is not a Parquet file: {exc}") from exc


def _plain(values: list[Any]) -> list[Any]:
    """Missing values of a pandas column as None, as a JSON body would carry them."""
    return [None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
