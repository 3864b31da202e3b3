"""mlsys.atomic: a reader sees the whole new file or the old one, never a partial one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mlsys.atomic import atomic_write, write_bytes_atomic, write_text_atomic


def test_the_whole_file_appears_and_no_partial_one_stays(tmp_path: Path) -> None:
    target = tmp_path / "part-00001.parquet"
    with atomic_write(target, fsync=True) as file:
        file.write(b"abc")
        assert not target.exists()  # not before the block ends
        file.write(b"def")
    assert target.read_bytes() == b"abcdef"
    assert [p.name for p in tmp_path.iterdir()] == ["part-00001.parquet"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial(tmp_path: Path) -> None:
    target = tmp_path / "epoch-0003.pt"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"), atomic_write(target) as file:
        file.write(b"half of the new")
        raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0003.pt"]


def test_interrupted_by_a_base_exception_too(tmp_path: Path) -> None:
    target = tmp_path / "carry.pt"
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as file:
        file.write(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_permissions_private_from_the_first_byte_or_by_the_umask(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "credentials.json", "{}", permissions=0o600)
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600
    umask = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "shared.bin", b"1")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "shared.bin").stat().st_mode) == 0o644


def test_replacing_a_file_replaces_its_mode_too(tmp_path: Path) -> None:
    target = tmp_path / "env"
    target.write_text("old")
    target.chmod(0o644)
    write_text_atomic(target, "new", permissions=0o600)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_missing_folder_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gone"):
        write_bytes_atomic(tmp_path / "gone" / "x.bin", b"")
