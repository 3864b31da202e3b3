"""Read a dataset source (folder, file, S3 object or URL) into a normalized raw-batch DataFrame."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import pandas as pd
from pandas.api.types import is_bool_dtype, is_float_dtype, is_integer_dtype

__all__ = [
    "DATASETS",
    "PROVENANCE_COLUMNS",
    "YOUTUBE_SPAM",
    "DatasetSpec",
    "SourceError",
    "get_dataset",
    "read_parquet_bytes",
    "read_source",
    "write_parquet_bytes",
]

PROVENANCE_COLUMNS: tuple[str, str] = ("source_file", "source_row")

_BOM = "\ufeff"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# ASCII digits only: str.isdigit and \d also accept other Unicode digits.
_INTEGER_RE = r"[+-]?[0-9]+"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_DOWNLOAD_CHUNK = 1 << 20


class SourceError(ValueError):
    """A source could not be read; the message names the offending path, URL or column."""


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset's source columns map onto the normalized raw-batch columns."""

    name: str
    columns: Mapping[str, str]
    required: frozenset[str]
    label_column: str | None = "label"
    archive_url: str | None = None

    def __post_init__(self) -> None:
        # Copy into read-only containers so a shared spec (e.g. YOUTUBE_SPAM) cannot be
        # mutated by one caller behind another's back.
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))
        object.__setattr__(self, "required", frozenset(self.required))
        targets = list(self.columns.values())
        duplicated = sorted({t for t in targets if targets.count(t) > 1})
        if duplicated:
            raise SourceError(
                f"dataset spec {self.name!r} maps several source columns onto "
                f"{', '.join(duplicated)}"
            )
        reserved = sorted(set(targets) & set(PROVENANCE_COLUMNS))
        if reserved:
            raise SourceError(
                f"dataset spec {self.name!r} maps a source column onto reserved provenance "
                f"column(s) {', '.join(reserved)}"
            )


YOUTUBE_SPAM = DatasetSpec(
    name="youtube-spam",
    columns={
        "COMMENT_ID": "comment_id",
        "AUTHOR": "author",
        "DATE": "date",
        "CONTENT": "text",
        "CLASS": "label",
    },
    # CLASS is optional: unlabeled batches arrive without it.
    required=frozenset({"COMMENT_ID", "AUTHOR", "DATE", "CONTENT"}),
    label_column="label",
    archive_url="https://archive.ics.uci.edu/static/public/380/youtube+spam+collection.zip",
)

DATASETS: dict[str, DatasetSpec] = {YOUTUBE_SPAM.name: YOUTUBE_SPAM}


def get_dataset(name: str) -> DatasetSpec:
    """Return the registered spec called ``name``."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS)) or "(none)"
        raise SourceError(f"unknown dataset {name!r}; known datasets: {known}") from None


@dataclass(frozen=True)
class _RawFile:
    """One file's bytes (or local path) before parsing."""

    name: str  # value for the source_file column
    location: str  # what error messages point at: full path, URI or "member in archive"
    kind: str  # "csv" or "parquet"
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)


def read_source(
    source: str | os.PathLike[str],
    spec: DatasetSpec,
    *,
    s3_client: Any | None = None,
    cache_dir: Path | None = None,
    timeout_s: float = 60.0,
) -> pd.DataFrame:
    """Read ``source`` into one normalized DataFrame.

    ``source`` may be a local folder (every ``*.csv`` directly in it, sorted by name, dot-files
    skipped), a local ``.csv``, ``.parquet`` or ``.zip`` file, an ``s3://bucket/key`` object
    (``.csv``, ``.parquet`` or ``.zip``, read with ``s3_client``) or an ``http(s)://`` URL to
    one of those. Zip archives contribute every ``*.csv`` member, ``__MACOSX/`` junk excluded.

    The result has the spec's renamed columns (unmapped columns lower-snake-cased), all as
    pandas ``string`` dtype except the label column (``Int64``), plus ``source_file`` and
    ``source_row`` (0-based row within its file, ``int64``). A source without the label
    column gets one with every label missing. Values are not cleaned; the one
    rewrite is that empty cells, and empty strings from Parquet, become ``pd.NA``.

    Downloads go to ``cache_dir`` and are reused from there on later calls with the same URL;
    without a ``cache_dir`` they go to a temporary folder that is removed before returning.
    ``timeout_s`` bounds each network wait, not the whole download.

    Raises:
        SourceError: the source is missing, unreadable, empty or lacks a required column.
    """
    text = os.fspath(source)
    scheme_match = _SCHEME_RE.match(text)
    if scheme_match:
        scheme = scheme_match.group(1).lower()
        if scheme == "s3":
            files = _s3_files(text, s3_client)
        elif scheme in ("http", "https"):
            if cache_dir is not None:
                files = _url_files(text, Path(cache_dir), timeout_s, reuse_cached=True)
            else:
                with tempfile.TemporaryDirectory(prefix="mlsys-download-") as tmp:
                    files = _url_files(text, Path(tmp), timeout_s, reuse_cached=False)
        else:
            raise SourceError(
                f"unsupported source scheme {scheme!r} in {text}; "
                "expected a local path, s3://, http:// or https://"
            )
    else:
        files = _local_files(Path(text))

    frames = [_normalize(_parse(f), spec, f) for f in files]
    if sum(len(frame) for frame in frames) == 0:
        raise SourceError(f"source {text} has no rows")
    combined = pd.concat(frames, ignore_index=True, sort=False)
    # concat turns a column missing from some files into object dtype; re-impose the contract.
    return _enforce_dtypes(combined, spec)


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


def _kind_for(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower()
    return {".csv": "csv", ".parquet": "parquet", ".zip": "zip"}.get(suffix)


def _local_files(path: Path) -> list[_RawFile]:
    if path.is_dir():
        csvs = sorted(
            (p for p in path.iterdir() if p.is_file() and _is_wanted_csv(p.name)),
            key=lambda p: p.name,
        )
        if not csvs:
            raise SourceError(f"folder {path} holds no CSV file")
        return [_RawFile(name=p.name, location=str(p), kind="csv", path=p) for p in csvs]
    if path.is_file():
        kind = _kind_for(path.name)
        if kind == "zip":
            return _zip_members(path.read_bytes(), str(path))
        if kind is None:
            raise SourceError(f"unsupported file type {path.suffix!r}: {path}")
        return [_RawFile(name=path.name, location=str(path), kind=kind, path=path)]
    raise SourceError(f"source not found: {path}")


def _is_wanted_csv(name: str) -> bool:
    # Dot-files (e.g. macOS "._Youtube01.csv" resource forks) are never data.
    return name.lower().endswith(".csv") and not name.startswith(".")


def _zip_members(data: bytes, location: str) -> list[_RawFile]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise SourceError(f"not a valid zip archive: {location} ({exc})") from exc
    files: list[_RawFile] = []
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            member = PurePosixPath(info.filename)
            if info.is_dir() or "__MACOSX" in member.parts or not _is_wanted_csv(member.name):
                continue
            # Members are read into memory and never extracted by name, so "../" paths in a
            # hostile archive cannot write outside the cache folder.
            try:
                content = archive.read(info)
            except (zipfile.BadZipFile, OSError) as exc:
                raise SourceError(f"cannot read {info.filename} in {location}: {exc}") from exc
            files.append(
                _RawFile(
                    name=info.filename,
                    location=f"{info.filename} in {location}",
                    kind="csv",
                    data=content,
                )
            )
    if not files:
        raise SourceError(f"archive {location} holds no CSV file")
    return files


def _s3_files(uri: str, s3_client: Any | None) -> list[_RawFile]:
    parsed = urllib.parse.urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise SourceError(f"S3 URI needs a bucket and a key: {uri}")
    kind = _kind_for(key)
    if kind is None:
        raise SourceError(f"unsupported S3 object type (expected .csv, .parquet or .zip): {uri}")
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
        return _zip_members(data, uri)
    return [_RawFile(name=PurePosixPath(key).name, location=uri, kind=kind, data=data)]


def _url_files(url: str, folder: Path, timeout_s: float, *, reuse_cached: bool) -> list[_RawFile]:
    basename = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    path = _download(url, folder, basename or "download", timeout_s, reuse_cached=reuse_cached)
    kind = _kind_for(basename) or _sniff_kind(path)
    if kind is None:
        raise SourceError(f"cannot tell the file type of {url} (expected .csv, .parquet or .zip)")
    data = path.read_bytes()
    if kind == "zip":
        return _zip_members(data, url)
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
    fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{digest}-", suffix=".part")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=timeout_s) as response,
        ):
            shutil.copyfileobj(response, out, _DOWNLOAD_CHUNK)
        # Rename only once complete so an interrupted download never poisons the cache.
        os.replace(partial, target)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"download failed: {url} returned HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise SourceError(f"download failed: {url} ({exc.reason})") from exc
    except TimeoutError as exc:
        raise SourceError(f"download timed out after {timeout_s}s: {url}") from exc
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


# --- parsing and normalization -------------------------------------------------------------


def _parse(raw: _RawFile) -> pd.DataFrame:
    handle: Path | io.BytesIO = raw.path if raw.path is not None else io.BytesIO(raw.data or b"")
    try:
        if raw.kind == "parquet":
            return pd.read_parquet(handle, engine="pyarrow")
        # Everything stays text and no token such as "NA" or "null" is read as missing: those
        # are plausible comment texts. Empty cells become pd.NA later, in _normalize.
        # utf-8-sig drops a BOM at the very start of the file only; BOMs inside values stay.
        # index_col=False: a first row with more fields than the header must not turn the
        # first column into the index (shifting every value one column left); pandas then
        # warns that data would be lost, and that warning is an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(
                handle, dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False
            )
    except pd.errors.ParserWarning as exc:
        raise SourceError(
            f"cannot parse CSV {raw.location}: a row has more fields than the header ({exc})"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"{raw.location} is empty (no header row)") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{raw.location} is not valid UTF-8: {exc}") from exc
    except pd.errors.ParserError as exc:
        raise SourceError(f"cannot parse CSV {raw.location}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {raw.kind} file {raw.location}: {exc}") from exc


def _snake_case(name: str) -> str:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"[^0-9a-zA-Z]+", "_", spaced).strip("_").lower() or "column"


def _normalize(df: pd.DataFrame, spec: DatasetSpec, raw: _RawFile) -> pd.DataFrame:
    df = df.rename(columns=lambda c: str(c).lstrip(_BOM).strip())
    found = [str(c) for c in df.columns]
    if _is_normalized(found, spec):
        return _renormalize(df, spec, raw)
    missing = sorted(spec.required - set(found))
    if missing:
        raise SourceError(
            f"{raw.location} is missing required column(s) {', '.join(missing)}; "
            f"found columns: {', '.join(found) or '(none)'}"
        )
    renamed = [spec.columns.get(c, _snake_case(c)) for c in found]
    clashes = sorted({n for n in renamed if renamed.count(n) > 1})
    if clashes:
        raise SourceError(
            f"{raw.location}: several columns normalize to {', '.join(clashes)}; "
            f"found columns: {', '.join(found)}"
        )
    reserved = sorted(set(renamed) & set(PROVENANCE_COLUMNS))
    if reserved:
        raise SourceError(
            f"{raw.location} has column(s) {', '.join(reserved)}, which are reserved for provenance"
        )
    df.columns = pd.Index(renamed)
    source_names = dict(zip(renamed, found, strict=True))

    out: dict[str, pd.Series] = {}
    for column in renamed:
        if column == spec.label_column:
            out[column] = _to_label(df[column], raw, source_names[column])
        else:
            # Converted to strings once, after all files are concatenated (_enforce_dtypes).
            out[column] = df[column].reset_index(drop=True)
    out["source_file"] = pd.Series([raw.name] * len(df), dtype="string")
    out["source_row"] = pd.Series(range(len(df)), dtype="int64")
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def _is_normalized(found: list[str], spec: DatasetSpec) -> bool:
    """True for a raw batch this module wrote (normalized names plus provenance)."""
    names = set(found)
    return set(PROVENANCE_COLUMNS) <= names and {spec.columns[c] for c in spec.required} <= names


def _renormalize(df: pd.DataFrame, spec: DatasetSpec, raw: _RawFile) -> pd.DataFrame:
    """Re-read a normalized batch: same columns, dtypes enforced, provenance kept."""
    out: dict[str, pd.Series] = {}
    for column in df.columns:
        name = str(column)
        if name == "source_row":
            out[name] = df[name].reset_index(drop=True).astype("int64")
        elif name == spec.label_column:
            out[name] = _to_label(df[name], raw, name)
        else:
            out[name] = _to_string(df[name])
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def _to_string(values: pd.Series) -> pd.Series:
    text = values.reset_index(drop=True).astype("string")
    # A CSV cannot tell "" from an empty cell, so empty strings are missing for every source
    # kind; that keeps a CSV and a Parquet copy of the same data equal.
    return text.mask(text == "")


def _to_label(values: pd.Series, raw: _RawFile, source_column: str) -> pd.Series:
    values = values.reset_index(drop=True)
    if is_integer_dtype(values.dtype) or is_bool_dtype(values.dtype):
        return values.astype("Int64")
    if is_float_dtype(values.dtype):
        # Reject fractions, infinities and anything outside Int64 before casting.
        whole = (values.round() == values) & (values.abs() < 2.0**63)
        bad = values.notna() & ~whole
        if bad.any():
            _raise_bad_label(values, bad, raw, source_column)
        return values.astype("Int64")
    text = _to_string(values).str.strip()
    bad = text.notna() & ~text.str.fullmatch(_INTEGER_RE).fillna(False).astype(bool)
    if bad.any():
        _raise_bad_label(values, bad, raw, source_column)
    try:
        return text.astype("Int64")
    except (OverflowError, ValueError, TypeError):
        pass  # some value is outside int64: find it for the message
    numbers = pd.Series([None if pd.isna(v) else int(v) for v in text], dtype=object)
    out_of_range = numbers.map(lambda n: n is not None and not _INT64_MIN <= n <= _INT64_MAX)
    if out_of_range.any():
        _raise_bad_label(values, out_of_range.astype(bool), raw, source_column)
    return numbers.astype("Int64")


def _raise_bad_label(values: pd.Series, bad: pd.Series, raw: _RawFile, source_column: str) -> None:
    position = int(bad.to_numpy().nonzero()[0][0])
    value = values.iloc[position]
    # Show 1.5 rather than np.float64(1.5): the message is for a person fixing the data.
    value = value.item() if hasattr(value, "item") else value
    raise SourceError(
        f"{raw.location} row {position + 1}: label value {value!r} in column "
        f"{source_column} is not an integer ({int(bad.sum())} bad value(s) in this file)"
    )


def _enforce_dtypes(df: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    # A column that only later files have would otherwise land after the provenance columns.
    data_columns = [c for c in df.columns if c not in PROVENANCE_COLUMNS]
    df = df[[*data_columns, *PROVENANCE_COLUMNS]]
    if spec.label_column is not None and spec.label_column not in df.columns:
        # An unlabeled batch has the same columns as a labeled one, its labels all missing,
        # so one schema (the raw suite) covers both.
        df.insert(len(data_columns), spec.label_column, pd.Series(pd.NA, index=df.index))
    for column in df.columns:
        if column == "source_row":
            df[column] = df[column].astype("int64")
        elif column == spec.label_column:
            df[column] = df[column].astype("Int64")
        else:
            df[column] = _to_string(df[column])
    return df
