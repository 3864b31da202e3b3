"""Allocator settings that keep streaming processes bounded (mlsys.memory).

They are process-wide, so each test that applies them does so in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlsys.memory import fix_mmap_threshold

ROOT = Path(__file__).resolve().parents[2]
GLIBC = sys.platform.startswith("linux")


def _run(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


MALLINFO = """
    import ctypes, json
    class Info(ctypes.Structure):
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def mapped_after_realloc(nbytes):
        # Free one block of nbytes, then allocate another: is the second one mapped?
        libc.free(libc.malloc(nbytes))
        before = libc.mallinfo2().hblkhd
        block = libc.malloc(nbytes)
        mapped = libc.mallinfo2().hblkhd - before >= nbytes
        libc.free(block)
        return mapped
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_a_fixed_threshold_keeps_large_blocks_mapped() -> None:
    """By default glibc raises its threshold when a large mapped block is freed, so the
    next block of that size comes from the heap (and stays there when freed); with the
    threshold fixed it is mapped again, and freeing it gives it back."""
    default = _run(MALLINFO + '    print(json.dumps({"mapped": mapped_after_realloc(8 << 20)}))')
    fixed = _run(
        MALLINFO
        + """
    from mlsys.memory import fix_mmap_threshold
    applied = fix_mmap_threshold(1 << 20)
    print(json.dumps({"applied": applied, "mapped": mapped_after_realloc(8 << 20)}))
    """
    )
    assert default == {"mapped": False}
    assert fixed == {"applied": True, "mapped": True}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1MiB"])
def test_a_bad_threshold_is_named(bad: object) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
        fix_mmap_threshold(bad)  # type: ignore[arg-type]


def test_score_chunks_bounds_the_process_it_runs_in(tmp_path: Path) -> None:
    """The streaming scorer switches Arrow to the system allocator and fixes glibc's
    threshold before its first chunk."""
    source, out = tmp_path / "in.parquet", tmp_path / "out"
    result = _run(
        MALLINFO
        + f"""
    from pathlib import Path
    import pandas as pd, pyarrow as pa
    from mlsys.inference.batch import FolderSink, iter_chunks, score_chunks
    pd.DataFrame({{"text": ["a", "bb", "ccc"]}}).to_parquet({str(source)!r})
    pool_before = pa.default_memory_pool().backend_name
    predict = lambda f: pd.DataFrame({{"label": [1] * len(f), "probability": 0.5}})
    chunks = iter_chunks([Path({str(source)!r})], 2)
    results = score_chunks(chunks, predict, FolderSink(Path({str(out)!r})))
    print(json.dumps({{
        "rows_out": sum(r.rows_out for r in results),
        "pool_before": pool_before,
        "pool_after": pa.default_memory_pool().backend_name,
        "mapped": mapped_after_realloc(4 << 20),
    }}))
    """
    )
    assert result["rows_out"] == 3
    assert result["pool_before"] != "system"
    assert result["pool_after"] == "system"
    assert result["mapped"] is GLIBC
