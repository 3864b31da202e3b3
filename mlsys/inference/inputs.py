"""Input files of batch scoring, read where they are: a local file, or an S3 object.

An S3 object is read in place with ranged GETs, never downloaded whole: a Parquet reader
fetches the footer and then only the column chunks of the row groups it decodes, and a
CSV reader streams the object block by block. So a worker on any host reads its own
partition of an input straight from the store, and nothing passes through the process
that planned the work.

Usage::

    files = resolve_inputs(["s3://mlsys/raw/youtube-spam/b.parquet", "/data/extra.csv"],
                           s3_client)
    chunks = iter_chunks(files, chunk_rows=50_000)   # mlsys.inference.batch
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from mlsys.data.s3 import S3Error, S3Uri

__all__ = ["BLOCK_BYTES", "InputFile", "S3Object", "is_s3", "resolve_inputs"]

BLOCK_BYTES = 4 << 20
"""Bytes a small read of an S3 object fetches at once (one ranged GET); a larger read is
one GET of its own size."""


class S3Object:
    """One S3 object as a read-only file: ``name`` and ``suffix`` as a :class:`Path`'s,
    and :meth:`open` gives a seekable binary file whose reads are ranged GETs.

    ``client`` is a boto3 S3 client; the object's size is looked up once (HEAD), when
    first needed.
    """

    def __init__(self, client: Any, uri: str, size: int | None = None) -> None:
        parsed = S3Uri.parse(uri)
        self.client = client
        self.bucket = parsed.bucket
        self.key = parsed.key
        self._size = size

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    def __repr__(self) -> str:
        return f"S3Object({self.uri!r})"

    def size(self) -> int:
        """The object's length in bytes.

        Raises:
            S3Error: the object cannot be looked up (missing: permanent).
        """
        if self._size is None:
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.key)
            except Exception as exc:
                raise S3Error(f"cannot look up {self.uri}: {exc}") from exc
            self._size = int(head["ContentLength"])
        return self._size

    def open(self, mode: str = "rb", buffering: int = -1) -> io.BufferedReader | io.RawIOBase:
        """A seekable binary file over the object (only ``"rb"``). Buffered (the default),
        a small read fetches :data:`BLOCK_BYTES` ahead, for sequential reading such as
        CSV; ``buffering=0`` gives the raw file, each read one GET of just its bytes, for
        readers that ask for exact ranges (Parquet)."""
        if mode != "rb":
            raise ValueError(f"S3 objects open for reading only ('rb'), not {mode!r}")
        raw = _RangedReader(self)
        return raw if buffering == 0 else io.BufferedReader(raw, buffer_size=BLOCK_BYTES)

    def read_range(self, start: int, count: int) -> bytes:
        """``count`` bytes from byte ``start`` (fewer at the object's end).

        Raises:
            S3Error: the GET failed (network trouble and server errors are outages that
                the task rides out; a missing object is permanent).
        """
        if count <= 0:
            return b""
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{start + count - 1}"
            )["Body"]
            return bytes(body.read())
        except Exception as exc:
            raise S3Error(f"cannot read {self.uri} (bytes from {start}): {exc}") from exc


class _RangedReader(io.RawIOBase):
    """The raw, seekable stream under :meth:`S3Object.open`: each read is one ranged GET."""

    def __init__(self, source: S3Object) -> None:
        super().__init__()
        self._source = source
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._source.size() + offset
        else:
            raise ValueError(f"bad whence {whence!r}")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), max(0, self._source.size() - self._position))
        if count == 0:
            return 0
        data = self._source.read_range(self._position, count)
        view[: len(data)] = data
        self._position += len(data)
        return len(data)


InputFile = Path | S3Object
"""A file to score: a local path, or an S3 object read in place."""


def is_s3(location: str) -> bool:
    """Whether ``location`` names an S3 object (``s3://...``) rather than a local path."""
    return location.startswith("s3://")


def resolve_inputs(locations: Sequence[str], s3_client: Callable[[], Any]) -> list[InputFile]:
    """The files at ``locations`` (``s3://`` URIs or local paths), in the same order.

    ``s3_client`` makes a boto3 client; it is called once, and only if some location is
    in S3.
    """
    client: Any = None
    files: list[InputFile] = []
    for location in locations:
        if is_s3(location):
            client = client if client is not None else s3_client()
            files.append(S3Object(client, location))
        else:
            files.append(Path(location))
    return files
