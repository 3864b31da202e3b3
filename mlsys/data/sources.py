"""Read a dataset's source (folder, file, S3 object or URL) into a normalized raw batch.

The dataset's definition (:mod:`mlsys.data.definition`) says how: the format, the header,
which columns are the id, the text (or a template over columns), the gold label and the
kept columns, and the classes the labels name. Every raw batch of a dataset has the same
columns, whatever its source looks like::

    <id column>  text  label  <kept columns...>  source_file  source_row

Usage::

    definition = load_dataset("youtube-spam")
    raw = read_dataset(definition)                      # its default source
    raw = read_dataset(definition, "s3://mlsys/incoming/2026-11-25.zip", s3_client=s3)

Why one module: locating files (folders, archives, S3, URLs), parsing each format and
normalizing to the dataset's columns are the three steps of `read_dataset`, and they share
`_RawFile`, through which every error names the file it came from.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_float_dtype, is_object_dtype

from mlsys.atomic import atomic_write
from mlsys.data.definition import ColumnRoles, DatasetDefinition, DatasetError, kept_name
from mlsys.data.s3 import S3Error, list_keys, object_sizes

__all__ = [
    "PROVENANCE_COLUMNS",
    "SUFFIX_FORMATS",
    "SourceError",
    "normalized_names",
    "read_dataset",
    "read_parquet_bytes",
    "read_table",
    "source_format",
    "write_parquet_bytes",
]

PROVENANCE_COLUMNS: tuple[str, str] = ("source_file", "source_row")

SUFFIX_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""The format a file suffix implies when a definition names none."""

_FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "jsonl": "JSON Lines", "parquet": "Parquet"}
_BOM = "\ufeff"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DOWNLOAD_CHUNK = 1 << 20
_MAX_SHOWN = 10
_DIGEST = "__mlsys_digest"


class SourceError(ValueError):
    """A source could not be read; the message names the offending path, URL, column or value."""


@dataclass(frozen=True)
class _Layout:
    """How a source's files are parsed: the format (None: by suffix), header, column names."""

    format: str | None = None
    header: bool = True
    column_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _RawFile:
    """One file's bytes (or local path) before parsing."""

    name: str  # value for the source_file column
    location: str  # what error messages point at: full path, URI or "member in archive"
    kind: str  # "csv", "tsv", "jsonl" or "parquet"
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)


UnknownLabels = Literal["error", "keep"]


def read_dataset(
    definition: DatasetDefinition,
    source: str | os.PathLike[str] | None = None,
    *,
    s3_client: Any | None = None,
    cache_dir: Path | None = None,
    timeout_s: float = 60.0,
    unknown_labels: UnknownLabels = "error",
) -> pd.DataFrame:
    """Read ``source`` (default: the definition's own source) into one raw batch.

    ``source`` may be a local folder (every file of the dataset's format directly in it,
    sorted by name, dot-files skipped), a local file, a ``.zip`` archive of such files
    (``__MACOSX/`` junk excluded), an ``s3://bucket/key`` object (read with ``s3_client``)
    or an ``http(s)://`` URL to one of those. The format is the definition's ``format``,
    else the file suffix's (:data:`SUFFIX_FORMATS`); ``.parquet`` files are always read as
    Parquet. CSV and TSV cells are read as text, and no token such as "NA" or "null" counts
    as missing; TSV has no quoting (a ``"`` is an ordinary character).

    The batch's columns, in order: the id column (``definition.id_column``; generated when
    the definition names none: a hash of the row's text and kept values and of its
    occurrence among identical rows, so that re-reading the same data gives the same ids
    and duplicates stay distinct), ``text`` (the text column, or the template filled in;
    missing when a field it needs is), ``label`` (``Int64`` class index; missing where the
    source has no label, and everywhere when it lacks the label column), the kept columns
    under :func:`~mlsys.data.definition.kept_name` (with the gold policy's column), then
    ``source_file`` and ``source_row`` (0-based row within its file). Every column but
    ``label`` and ``source_row`` is pandas ``string``; empty strings are missing. Columns
    the definition does not name are dropped.

    A raw batch this function wrote (normalized names plus provenance columns, e.g. the
    Parquet ``ingest`` stores) reads back unchanged.

    Downloads go to ``cache_dir`` and are reused from there on later calls with the same
    URL; without a ``cache_dir`` they go to a temporary folder removed before returning.
    ``timeout_s`` bounds each network wait, not the whole download.

    A label value that is no class is an error naming it (``unknown_labels="error"``),
    or is kept for the raw suite to quarantine its row (``"keep"``, as ``ingest`` reads):
    a whole number stays as it is (an index outside the classes), anything else becomes
    -1; the batch's ``attrs["unknown_labels"]`` then lists the values as found.

    Raises:
        SourceError: the source is missing, unreadable or empty, a file cannot be parsed,
            lacks a column the definition names, or holds label values that are no class.
    """
    if unknown_labels not in ("error", "keep"):
        raise ValueError(f"unknown_labels must be 'error' or 'keep', got {unknown_labels!r}")
    text = os.fspath(source) if source is not None else definition.resolved_source()
    names = _output_names(definition)
    layout = _Layout(definition.format, definition.header, definition.column_names)
    files = _locate(text, layout.format, s3_client, cache_dir, timeout_s)
    unknown: list[str] = []
    frames = [_normalize(_parse(f, layout), definition, f, unknown) for f in files]
    if unknown and unknown_labels == "error":
        raise SourceError(unknown[0])
    if sum(len(frame) for frame in frames) == 0:
        raise SourceError(f"source {text} has no rows")
    combined = pd.concat(frames, ignore_index=True, sort=False)
    if _DIGEST in combined.columns:
        combined = _fill_generated_ids(combined, definition.id_column)
    out = _enforce_dtypes(combined[names], definition)
    out.attrs["unknown_labels"] = unknown
    return out


@dataclass(frozen=True)
class SourceFile:
    """One file of a source: where it is, and its size in bytes (None: not known before
    reading, e.g. a download)."""

    location: str
    size: int | None = None


def source_files(
    definition: DatasetDefinition,
    source: str | os.PathLike[str] | None = None,
    *,
    s3_client: Any | None = None,
) -> list[SourceFile]:
    """The files :func:`read_dataset` reads ``source`` from, in its order, each a source
    of its own: one per file of a local folder or an S3 folder (``s3://bucket/prefix/``);
    the source itself for one file, an archive or a download, which are read whole.
    Reading each and concatenating gives the batch read at once, but for generated ids (a
    row's occurrence among identical rows counts across files)."""
    text = os.fspath(source) if source is not None else definition.resolved_source()
    scheme = _SCHEME_RE.match(text)
    if scheme is None and Path(text).is_dir():
        return [
            SourceFile(f.location, f.path.stat().st_size if f.path else None)
            for f in _local_files(Path(text), definition.format)
        ]
    if scheme is not None and scheme.group(1).lower() == "s3" and text.endswith("/"):
        parsed = urllib.parse.urlparse(text)
        sizes = object_sizes(s3_client, parsed.netloc, parsed.path.lstrip("/")) if s3_client else {}
        return [
            SourceFile(uri, sizes.get(urllib.parse.urlparse(uri).path.lstrip("/")))
            for uri in _s3_folder(text, s3_client, definition.format)
        ]
    return [SourceFile(text)]


def group_files(files: Sequence[SourceFile], target_bytes: int) -> list[list[str]]:
    """``files`` in order, cut into groups of about ``target_bytes`` (a group closes once
    it reaches that size; a larger file is a group of its own; a file of unknown size
    closes its group): one task's worth of reading each."""
    if target_bytes < 1:
        raise ValueError(f"target_bytes must be at least 1, got {target_bytes}")
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for f in files:
        current.append(f.location)
        size += f.size if f.size is not None else target_bytes
        if size >= target_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def read_table(
    source: str | os.PathLike[str],
    *,
    format: str | None = None,
    header: bool = True,
    column_names: Sequence[str] | None = None,
    max_rows: int | None = None,
    s3_client: Any | None = None,
    cache_dir: Path | None = None,
    timeout_s: float = 60.0,
) -> pd.DataFrame:
    """The source's own columns, unmapped: what ``mlsys dataset init`` guesses roles from.

    Files are found and parsed as :func:`read_dataset` does; column names lose a leading
    byte-order mark and surrounding spaces; every value becomes text (pandas ``string``,
    empty strings missing). ``max_rows`` stops reading once that many rows are in.
    """
    text = os.fspath(source)
    layout = _Layout(format, header, tuple(column_names) if column_names else None)
    frames: list[pd.DataFrame] = []
    count = 0
    for raw in _locate(text, layout.format, s3_client, cache_dir, timeout_s):
        left = None if max_rows is None else max_rows - count
        if left is not None and left <= 0:
            break
        frame = _clean_names(_parse(raw, layout, limit=left))
        frames.append(frame.head(left) if left is not None else frame)
        count += len(frames[-1])
    table = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    return pd.DataFrame(
        {str(c): _to_string(table[c]) for c in table.columns}, index=pd.RangeIndex(len(table))
    )


def source_format(source: str | os.PathLike[str]) -> str | None:
    """The format a source's file suffixes imply (for a folder or zip archive: its files'
    one format), or None when they imply none or several."""
    text = os.fspath(source)
    path = Path(text)
    if not _SCHEME_RE.match(text) and path.is_dir():
        kinds = {_suffix_format(p.name) for p in path.iterdir() if _is_data_file(p.name)}
    elif PurePosixPath(text).suffix.lower() == ".zip" and path.is_file():
        with zipfile.ZipFile(path) as archive:
            kinds = {
                _suffix_format(PurePosixPath(i.filename).name)
                for i in archive.infolist()
                if _is_archive_member(i)
            }
    else:
        kinds = {_suffix_format(urllib.parse.urlparse(text).path if "://" in text else text)}
    kinds.discard(None)
    return kinds.pop() if len(kinds) == 1 else None


def normalized_names(definition: DatasetDefinition) -> dict[str, str]:
    """How the columns of a file in the dataset's own layout (e.g. its raw CSVs) are renamed
    to a raw batch's names: id, text, gold label and kept columns (``CONTENT`` -> ``text``).
    Columns whose name does not change are left out, so a batch already normalized matches
    no entry."""
    roles = definition.columns
    rename: dict[str, str] = {}
    if roles.id is not None:
        rename[roles.id] = definition.id_column
    if roles.text is not None:
        rename[roles.text] = "text"
    if roles.label is not None:
        rename[roles.label] = "label"
    kept = [*roles.keep]
    if definition.gold.by == "column" and definition.gold.column is not None:
        kept.append(definition.gold.column)
    for column in kept:
        rename.setdefault(column, kept_name(column))
    return {source: target for source, target in rename.items() if source != target}


def write_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Serialize ``df`` (index dropped) to Parquet bytes, keeping ``string``/``Int64`` dtypes."""
    buffer = io.BytesIO()
    df.to_parquet(buffer, engine="pyarrow", index=False)
    return buffer.getvalue()


def read_parquet_bytes(data: bytes) -> pd.DataFrame:
    """Load Parquet bytes written by :func:`write_parquet_bytes` back into a DataFrame."""
    try:
        return pd.read_parquet(io.BytesIO(data), engine="pyarrow")
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt input
        raise SourceError(f"cannot read Parquet data ({len(data)} bytes): {exc}") from exc


# --- locating files ------------------------------------------------------------------------


def _suffix_format(name: str) -> str | None:
    return SUFFIX_FORMATS.get(PurePosixPath(name).suffix.lower())


def _file_kind(name: str, wanted: str | None) -> str | None:
    """How to read one named file: an archive, Parquet (self-describing, and what ingest
    writes), else the wanted format, else the suffix's."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".zip":
        return "zip"
    if _suffix_format(name) == "parquet":
        return "parquet"
    return wanted or _suffix_format(name)


def _is_data_file(name: str) -> bool:
    # Dot-files (e.g. macOS "._Youtube01.csv" resource forks) are never data.
    return not name.startswith(".") and _suffix_format(name) is not None


def _is_archive_member(info: zipfile.ZipInfo) -> bool:
    member = PurePosixPath(info.filename)
    return not info.is_dir() and "__MACOSX" not in member.parts and _is_data_file(member.name)


def _what(wanted: str | None) -> str:
    if wanted is not None:
        return f"{_FORMAT_NAMES[wanted]} file"
    return "CSV, TSV, JSON Lines or Parquet file"


def _pick(names: list[str], wanted: str | None, where: str) -> list[tuple[str, str]]:
    """The data files among ``names`` (sorted), each with its format: those of ``wanted``,
    or of the one format their suffixes share."""
    chosen = sorted(n for n in names if _is_data_file(PurePosixPath(n).name))
    if wanted is not None:
        chosen = [n for n in chosen if _suffix_format(n) == wanted]
    else:
        by_format: dict[str, list[str]] = {}
        for name in chosen:
            by_format.setdefault(str(_suffix_format(name)), []).append(name)
        if len(by_format) > 1:
            found = "; ".join(f"{k}: {', '.join(v[:3])}" for k, v in sorted(by_format.items()))
            raise SourceError(
                f"{where} holds files of several formats ({found}); set `format` in the "
                "dataset's definition to read one of them"
            )
    if not chosen:
        raise SourceError(f"{where} holds no {_what(wanted)}")
    return [(n, str(_suffix_format(n))) for n in chosen]


def _locate(
    text: str,
    wanted: str | None,
    s3_client: Any | None,
    cache_dir: Path | None,
    timeout_s: float,
) -> list[_RawFile]:
    scheme_match = _SCHEME_RE.match(text)
    if not scheme_match:
        return _local_files(Path(text), wanted)
    scheme = scheme_match.group(1).lower()
    if scheme == "s3":
        return _s3_files(text, s3_client, wanted)
    if scheme in ("http", "https"):
        if cache_dir is not None:
            return _url_files(text, Path(cache_dir), timeout_s, wanted, reuse_cached=True)
        with tempfile.TemporaryDirectory(prefix="mlsys-download-") as tmp:
            return _url_files(text, Path(tmp), timeout_s, wanted, reuse_cached=False)
    raise SourceError(
        f"unsupported source scheme {scheme!r} in {text}; "
        "expected a local path, s3://, http:// or https://"
    )


def _local_files(path: Path, wanted: str | None) -> list[_RawFile]:
    if path.is_dir():
        files = [p.name for p in path.iterdir() if p.is_file()]
        return [
            _RawFile(name=name, location=str(path / name), kind=kind, path=path / name)
            for name, kind in _pick(files, wanted, f"folder {path}")
        ]
    if path.is_file():
        kind = _file_kind(path.name, wanted)
        if kind == "zip":
            return _zip_members(path.read_bytes(), str(path), wanted)
        if kind is None:
            raise SourceError(
                f"cannot tell the format of {path} from its suffix {path.suffix!r}: set "
                "`format` (csv, tsv, jsonl or parquet) in the dataset's definition"
            )
        return [_RawFile(name=path.name, location=str(path), kind=kind, path=path)]
    raise SourceError(f"source not found: {path}")


def _zip_members(data: bytes, location: str, wanted: str | None) -> list[_RawFile]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise SourceError(f"not a valid zip archive: {location} ({exc})") from exc
    files: list[_RawFile] = []
    with archive:
        members = {i.filename: i for i in archive.infolist() if _is_archive_member(i)}
        for name, kind in _pick(list(members), wanted, f"archive {location}"):
            # Members are read into memory and never extracted by name, so "../" paths in a
            # hostile archive cannot write outside the cache folder.
            try:
                content = archive.read(members[name])
            except (zipfile.BadZipFile, OSError) as exc:
                raise SourceError(f"cannot read {name} in {location}: {exc}") from exc
            files.append(
                _RawFile(name=name, location=f"{name} in {location}", kind=kind, data=content)
            )
    return files


def _s3_folder(uri: str, s3_client: Any | None, wanted: str | None) -> list[str]:
    """The objects directly under an S3 "folder" (a URI ending in ``/``) that
    :func:`read_dataset` reads, sorted by name, as URIs."""
    parsed = urllib.parse.urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if s3_client is None:
        raise SourceError(f"an S3 client is needed to list {uri}; pass s3_client=")
    try:
        keys = [key for _, key in list_keys(s3_client, bucket, prefix)]
    except S3Error as exc:
        raise SourceError(str(exc)) from exc
    names = [key[len(prefix) :] for key in keys if "/" not in key[len(prefix) :]]
    return [f"s3://{bucket}/{prefix}{name}" for name, _ in _pick(names, wanted, f"folder {uri}")]


def _s3_files(uri: str, s3_client: Any | None, wanted: str | None) -> list[_RawFile]:
    parsed = urllib.parse.urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise SourceError(f"S3 URI needs a bucket and a key: {uri}")
    if key.endswith("/"):
        return [
            f
            for part in _s3_folder(uri, s3_client, wanted)
            for f in _s3_files(part, s3_client, wanted)
        ]
    kind = _file_kind(key, wanted)
    if kind is None:
        raise SourceError(
            f"cannot tell the format of S3 object {uri} from its suffix: set `format` in the "
            "dataset's definition"
        )
    if s3_client is None:
        raise SourceError(f"an S3 client is needed to read {uri}; pass s3_client=")
    try:
        response = s3_client.get_object(Bucket=bucket, Key=key)
        data: bytes = response["Body"].read()
    except Exception as exc:
        # Duck-typed botocore ClientError, so this module does not require botocore.
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code is None:
            raise
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            raise SourceError(f"S3 object not found: {uri} ({code})") from exc
        raise SourceError(f"cannot read S3 object {uri}: {code}") from exc
    if kind == "zip":
        return _zip_members(data, uri, wanted)
    return [_RawFile(name=PurePosixPath(key).name, location=uri, kind=kind, data=data)]


def _url_files(
    url: str, folder: Path, timeout_s: float, wanted: str | None, *, reuse_cached: bool
) -> list[_RawFile]:
    basename = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    path = _download(url, folder, basename or "download", timeout_s, reuse_cached=reuse_cached)
    kind = _sniff_kind(path) or _file_kind(basename, wanted)
    if kind is None:
        raise SourceError(
            f"cannot tell the format of {url}: set `format` in the dataset's definition"
        )
    data = path.read_bytes()
    if kind == "zip":
        return _zip_members(data, url, wanted)
    return [_RawFile(name=basename or url, location=url, kind=kind, data=data)]


def _sniff_kind(path: Path) -> str | None:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"PK\x03\x04":
        return "zip"
    if magic == b"PAR1":
        return "parquet"
    return None


def _download(
    url: str, folder: Path, basename: str, timeout_s: float, *, reuse_cached: bool
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # The URL hash keeps two URLs that share a basename from overwriting each other's cache.
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    # The name is only a hint for people browsing the cache; keep it to safe characters.
    safe_name = re.sub(r"[^A-Za-z0-9._+-]", "_", basename)
    target = folder / f"{digest}-{safe_name}"
    if reuse_cached and target.is_file():
        return target
    try:
        # Renamed into place only once complete: an interrupted download never poisons the
        # cache.
        with (
            atomic_write(target) as out,
            urllib.request.urlopen(url, timeout=timeout_s) as response,
        ):
            shutil.copyfileobj(response, out, _DOWNLOAD_CHUNK)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"download failed: {url} returned HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise SourceError(f"download failed: {url} ({exc.reason})") from exc
    except TimeoutError as exc:
        raise SourceError(f"download timed out after {timeout_s}s: {url}") from exc
    return target


# --- parsing -------------------------------------------------------------------------------


def _parse(raw: _RawFile, layout: _Layout, limit: int | None = None) -> pd.DataFrame:
    handle: Path | io.BytesIO = raw.path if raw.path is not None else io.BytesIO(raw.data or b"")
    name = _FORMAT_NAMES.get(raw.kind, raw.kind)
    try:
        if raw.kind == "parquet":
            return pd.read_parquet(handle, engine="pyarrow")
        if raw.kind == "jsonl":
            return _parse_jsonl(raw, limit)
        # Everything stays text and no token such as "NA" or "null" is read as missing: those
        # are plausible texts. Empty cells become pd.NA later (_to_string).
        # utf-8-sig drops a BOM at the very start of the file only; BOMs inside values stay.
        # index_col=False: a first row with more fields than the header must not turn the
        # first column into the index (shifting every value one column left); pandas then
        # warns that data would be lost, and that warning is an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(
                handle,
                sep="\t" if raw.kind == "tsv" else ",",
                quoting=csv.QUOTE_NONE if raw.kind == "tsv" else csv.QUOTE_MINIMAL,
                header=0 if layout.header else None,
                names=list(layout.column_names) if layout.column_names else None,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
                index_col=False,
                nrows=limit,
            )
    except SourceError:
        raise
    except pd.errors.ParserWarning as exc:
        raise SourceError(
            f"cannot parse {name} {raw.location}: a row has more fields than the "
            f"{'header' if layout.header else 'column_names'} ({exc})"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"{raw.location} is empty (no header row)") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{raw.location} is not valid UTF-8: {exc}") from exc
    except pd.errors.ParserError as exc:
        raise SourceError(f"cannot parse {name} {raw.location}: {exc}") from exc
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt input
        raise SourceError(f"cannot read {name} file {raw.location}: {exc}") from exc


def _parse_jsonl(raw: _RawFile, limit: int | None) -> pd.DataFrame:
    data = raw.path.read_bytes() if raw.path is not None else raw.data or b""
    records: list[dict[str, Any]] = []
    for number, line in enumerate(data.decode("utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(
                f"cannot parse JSON Lines {raw.location}: line {number} is not JSON ({exc.msg} "
                f"at column {exc.colno})"
            ) from exc
        if not isinstance(record, dict):
            raise SourceError(
                f"cannot parse JSON Lines {raw.location}: line {number} holds a "
                f"{type(record).__name__}, not an object"
            )
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise SourceError(f"{raw.location} is empty (no JSON object)")
    # dtype=object keeps each value as JSON gave it (no int -> float when a value is missing).
    return pd.DataFrame(records, dtype=object)


# --- normalization -------------------------------------------------------------------------


def _output_names(definition: DatasetDefinition) -> list[str]:
    """The raw batch's columns in order; two roles landing on one name are refused."""
    names = [definition.id_column, "text", "label", *definition.kept_columns]
    names += list(PROVENANCE_COLUMNS)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SourceError(
            f"dataset {definition.name!r}: several columns of its raw batch would be called "
            f"{', '.join(repeated)} (id {definition.id_column!r}, text, label, kept "
            f"{definition.kept_columns}, provenance); rename the id or a kept column"
        )
    return names


def _normalize(
    df: pd.DataFrame, definition: DatasetDefinition, raw: _RawFile, unknown: list[str]
) -> pd.DataFrame:
    df = _clean_names(df)
    found = [str(c) for c in df.columns]
    if _is_normalized(found, definition):
        return _renormalize(df, definition, raw)
    roles = definition.columns
    has_label = roles.label is not None and roles.label in found
    gold = definition.gold.column if definition.gold.by == "column" else None
    required = [roles.id, roles.text, *roles.template_fields(), *roles.keep]
    # An unlabeled batch may lack the gold policy's column along with the labels.
    if gold is not None and (has_label or roles.label is None):
        required.append(gold)
    missing = [c for c in dict.fromkeys(required) if c is not None and c not in found]
    if missing:
        raise SourceError(
            f"{raw.location} has no column {', '.join(missing)} (named by the definition "
            f"of dataset {definition.name!r}); found columns: {', '.join(found) or '(none)'}"
        )
    n = len(df)
    out: dict[str, pd.Series] = {}
    if roles.id is not None:
        out[definition.id_column] = _to_string(df[roles.id])
    text = _to_string(df[roles.text]) if roles.text is not None else _fill_template(df, roles)
    out["text"] = text
    if has_label:
        out["label"] = _to_label(df[str(roles.label)], definition, raw, str(roles.label), unknown)
    else:
        out["label"] = _missing(n, "Int64")
    kept_sources = list(dict.fromkeys([*roles.keep, *([gold] if gold is not None else [])]))
    for column in kept_sources:
        out[kept_name(column)] = _to_string(df[column]) if column in found else _missing(n)
    if roles.id is None:
        out[_DIGEST] = _content_digests(text, [out[kept_name(c)] for c in roles.keep])
    out["source_file"] = pd.Series([raw.name] * n, dtype="string")
    out["source_row"] = pd.Series(range(n), dtype="int64")
    return pd.DataFrame(out, index=pd.RangeIndex(n))


def _is_normalized(found: list[str], definition: DatasetDefinition) -> bool:
    """True for a raw batch this module wrote (normalized names plus provenance)."""
    return {*PROVENANCE_COLUMNS, definition.id_column, "text"} <= set(found)


def _renormalize(df: pd.DataFrame, definition: DatasetDefinition, raw: _RawFile) -> pd.DataFrame:
    """Re-read a normalized batch: the dataset's columns, dtypes enforced, provenance kept."""
    found = [str(c) for c in df.columns]
    gold = definition.gold.column if definition.gold.by == "column" else None
    optional = {kept_name(gold)} if gold is not None else set()
    missing = [c for c in definition.kept_columns if c not in found and c not in optional]
    if missing:
        raise SourceError(
            f"{raw.location} has no column {', '.join(missing)} (a kept column of dataset "
            f"{definition.name!r}); found columns: {', '.join(found)}"
        )
    n = len(df)
    out: dict[str, pd.Series] = {}
    for name in _output_names(definition):
        if name == "source_row":
            out[name] = df[name].reset_index(drop=True).astype("int64")
        elif name == "label" and name in found:
            out[name] = _index_label(df[name], definition, raw)
        elif name == "label":
            out[name] = _missing(n, "Int64")
        else:
            out[name] = _to_string(df[name]) if name in found else _missing(n)
    return pd.DataFrame(out, index=pd.RangeIndex(n))


def _clean_names(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its column names as text, without a leading byte-order mark or spaces."""
    return df.rename(columns=lambda c: str(c).lstrip(_BOM).strip())


def _missing(n: int, dtype: str = "string") -> pd.Series:
    """A column of ``n`` missing values."""
    return pd.Series(pd.NA, index=pd.RangeIndex(n), dtype=dtype)


def _fill_template(df: pd.DataFrame, roles: ColumnRoles) -> pd.Series:
    """The template with each ``{column}`` replaced by the row's value; missing if any is."""
    rest = str(roles.template)
    n = len(df)
    text = pd.Series("", index=pd.RangeIndex(n), dtype="string")
    for column in roles.template_fields():
        before, _, rest = rest.partition("{" + column + "}")
        text = text + before + _to_string(df[column])
    return text + rest


def _content_digests(text: pd.Series, kept: list[pd.Series]) -> pd.Series:
    """A digest of each row's text and kept values (the label and provenance left out, so a
    labeled and an unlabeled copy of a row agree)."""
    parts = [text, *kept]
    rows = zip(*(p.astype(object).where(p.notna(), None) for p in parts), strict=True)
    digests = [
        hashlib.sha256(
            "\x1f".join("\x00" if v is None else str(v) for v in row).encode("utf-8")
        ).hexdigest()
        for row in rows
    ]
    return pd.Series(digests, index=text.index, dtype=object)


def _fill_generated_ids(df: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """Ids for rows read without one: a hash of the row's digest and of its occurrence
    number among identical rows, in source order (stable on re-reads, distinct for
    duplicates). Rows that came with an id (a normalized batch) keep theirs."""
    digest = df[_DIGEST]
    needed = digest.notna()
    occurrence = digest[needed].groupby(digest[needed], sort=False).cumcount()
    generated = [
        hashlib.sha256(f"{d}\x1e{k}".encode()).hexdigest()[:16]
        for d, k in zip(digest[needed], occurrence, strict=True)
    ]
    if id_column in df.columns:
        ids = df[id_column].astype("string")
    else:
        ids = pd.Series(pd.NA, index=df.index, dtype="string")
    ids[needed] = np.array(generated, dtype=object)
    out = df.drop(columns=[_DIGEST])
    out[id_column] = ids
    return out


def _as_text(value: Any) -> Any:
    """One value as text: JSON's spelling for booleans, objects and lists; whole floats
    without ".0" (pandas turns integers with gaps into floats)."""
    if value is None or value is pd.NA:
        return pd.NA
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return pd.NA
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _to_string(values: pd.Series) -> pd.Series:
    values = values.reset_index(drop=True)
    if (
        is_float_dtype(values.dtype)
        or (
            is_object_dtype(values.dtype)
            and pd.api.types.infer_dtype(values, skipna=True) != "string"
        )
        or is_bool_dtype(values.dtype)
    ):
        values = values.map(_as_text)
    text = values.astype("string")
    # A CSV cannot tell "" from an empty cell, so empty strings are missing for every source
    # kind; that keeps a CSV and a Parquet copy of the same data equal.
    return text.mask(text == "")


def _to_label(
    values: pd.Series,
    definition: DatasetDefinition,
    raw: _RawFile,
    source_column: str,
    unknown: list[str],
) -> pd.Series:
    """Class indices of a source's label values (class names or indices), ``Int64``.
    Values that are no class are described in ``unknown`` and kept as whole numbers, or
    -1 when they are not whole numbers (the caller decides whether that is an error)."""
    text = _to_string(values).str.strip()
    text = text.mask(text == "")
    mapping: dict[str, int] = {}
    bad: list[str] = []
    for value in text.dropna().unique():
        try:
            mapping[str(value)] = definition.class_index(str(value))
        except DatasetError:
            bad.append(str(value))
    if bad:
        is_bad = text.isin(bad).fillna(False).astype(bool)
        first = int(np.flatnonzero(is_bad.to_numpy())[0])
        shown = ", ".join(repr(v) for v in bad[:_MAX_SHOWN])
        more = f" and {len(bad) - _MAX_SHOWN} more" if len(bad) > _MAX_SHOWN else ""
        unknown.append(
            f"{raw.location}: {int(is_bad.sum())} label value(s) in column {source_column} "
            f"are not classes of dataset {definition.name!r}: {shown}{more} (first at row "
            f"{first + 1}); classes are {list(definition.classes)} (or their indices "
            f"0..{definition.k - 1})"
        )
        for value in bad:
            mapping[value] = int(value) if re.fullmatch(r"[+-]?[0-9]{1,18}", value) else -1
    return text.map(mapping).astype("Int64")


def _index_label(values: pd.Series, definition: DatasetDefinition, raw: _RawFile) -> pd.Series:
    """The label column of a normalized batch: class indices already; checked, ``Int64``."""
    values = values.reset_index(drop=True)
    try:
        labels = values.astype("Int64")
    except (TypeError, ValueError) as exc:
        raise SourceError(
            f"{raw.location}: column label of a normalized batch must hold class indices "
            f"0..{definition.k - 1}: {exc}"
        ) from exc
    bad = labels.notna() & ((labels < 0) | (labels >= definition.k))
    if bad.any():
        shown = sorted({int(v) for v in labels[bad]})[:_MAX_SHOWN]
        raise SourceError(
            f"{raw.location}: {int(bad.sum())} label value(s) {shown} are not class indices "
            f"of dataset {definition.name!r} (0..{definition.k - 1}: {list(definition.classes)})"
        )
    return labels


def _enforce_dtypes(df: pd.DataFrame, definition: DatasetDefinition) -> pd.DataFrame:
    # concat turns a column that is all-missing in some files into object; re-impose the
    # contract column by column.
    out = df.reset_index(drop=True).copy()
    for column in out.columns:
        if column == "source_row":
            out[column] = out[column].astype("int64")
        elif column == "label":
            out[column] = out[column].astype("Int64")
        elif str(out[column].dtype) != "string":
            out[column] = _to_string(out[column])
    return out
