"""Atomic file writes: a reader sees the whole new file or none of it.

Every file the code base writes for another reader to pick up (checkpoints, shard files,
prediction parts, downloads, the stack's credentials) goes through :func:`atomic_write`:
the bytes go to a hidden partial file beside the target, which is renamed over the
target only once complete (``os.replace``, atomic within one file system). A failure or
interruption removes the partial file and leaves the target as it was, so nothing that
looks finished is ever half-written.

    with atomic_write(folder / "part-00003.parquet") as file:
        file.write(data)

The partial file's name is unique (process id and random suffix), so two writers of the
same target never write into one partial file; the last rename wins.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "write_bytes_atomic", "write_text_atomic"]


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, permissions: int = 0o666, fsync: bool = False
) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; renamed over ``path`` when the
    block ends without an exception, removed when it raises.

    Args:
        path: the target file; its folder must exist.
        permissions: mode bits of the new file before the umask (``0o600``: owner only,
            from the first byte).
        fsync: flush the data to the device before the rename (a checkpoint that must
            survive a power cut), not only to the page cache.

    Raises:
        OSError: the partial file cannot be created, written or renamed (its message names
            the file); the block's own exception otherwise.
    """
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, permissions)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, *, permissions: int = 0o666
) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path, permissions=permissions) as file:
        file.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, permissions: int = 0o666) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    write_bytes_atomic(path, text.encode("utf-8"), permissions=permissions)
