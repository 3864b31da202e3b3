"""Allocator settings that keep streaming processes bounded (mlsys.memory).

They are process-wide, so each test that applies them does so in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlsys.memory import (
    ARROW_POOL_ENV,
    STREAMING_ENV,
    TORCH_HUGE_PAGES_ENV,
    arrow_pool_hint,
    fix_mmap_threshold,
    huge_pages_hint,
    transparent_huge_pages,
)

ROOT = Path(__file__).resolve().parents[2]
GLIBC = sys.platform.startswith("linux")


def _run(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
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
    # glibc's defaults: no MALLOC_* tuning variable (any of them fixes the threshold).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    default = _run(
        MALLINFO + '    print(json.dumps({"mapped": mapped_after_realloc(8 << 20)}))', env=env
    )
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


def test_the_kernels_huge_page_mode_is_the_bracketed_word(tmp_path: Path) -> None:
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    assert transparent_huge_pages(mode) == "madvise"
    mode.write_text("[always] madvise never\n")
    assert transparent_huge_pages(mode) == "always"
    assert transparent_huge_pages(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("mode", "env", "hinted"),
    [
        ("always [madvise] never", None, True),
        ("always [madvise] never", "1", False),
        ("always [madvise] never", "true", True),  # torch takes only "1" and "0"
        ("[always] madvise never", None, False),  # huge pages without asking
        ("always madvise [never]", None, False),
    ],
)
def test_the_huge_page_hint_is_given_only_where_the_setting_would_change_something(
    mode: str, env: str | None, hinted: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "enabled").write_text(mode + "\n")
    if env is None:
        monkeypatch.delenv(TORCH_HUGE_PAGES_ENV, raising=False)
    else:
        monkeypatch.setenv(TORCH_HUGE_PAGES_ENV, env)
    hint = huge_pages_hint(tmp_path / "enabled")
    assert (hint is not None) is hinted
    if hint is not None:
        assert f"{TORCH_HUGE_PAGES_ENV}=1" in hint


THP_ELIGIBLE = """
    import json, os, torch
    block = torch.ones(64 << 18)  # 64 MiB
    start = block.data_ptr()
    eligible = None
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(x, 16) for x in head.split("-"))
                inside = low <= start < high
            elif inside and head == "THPeligible:":
                eligible = line.split()[1] == "1"
    print(json.dumps({"eligible": eligible}))
"""


@pytest.mark.skipif(transparent_huge_pages() != "madvise", reason="needs THP in madvise mode")
def test_the_torch_setting_makes_large_blocks_eligible_for_huge_pages() -> None:
    """What :data:`TORCH_HUGE_PAGES_ENV` promises, checked on this torch and kernel: a
    64 MiB tensor's mapping may take huge pages only when the process started with it."""
    env = {k: v for k, v in os.environ.items() if k != TORCH_HUGE_PAGES_ENV}
    assert _run(THP_ELIGIBLE, env=env) == {"eligible": False}
    assert _run(THP_ELIGIBLE, env=env | {TORCH_HUGE_PAGES_ENV: "1"}) == {"eligible": True}


ARROW_POOLS = """
    import json, pyarrow as pa
    print(json.dumps({"backend": pa.default_memory_pool().backend_name}))
"""


def test_the_streaming_environment_makes_arrows_own_pool_the_system_allocator() -> None:
    """What :data:`STREAMING_ENV` promises, checked on this pyarrow: the pool Arrow's C++
    library picks at import is the system allocator only when the process starts with it."""
    import pyarrow as pa

    env = {k: v for k, v in os.environ.items() if k != ARROW_POOL_ENV}
    default = _run(ARROW_POOLS, env=env)["backend"]
    assert _run(ARROW_POOLS, env=env | STREAMING_ENV) == {"backend": "system"}
    if set(pa.supported_memory_backends()) > {"system"}:
        assert default != "system"


def test_the_arrow_pool_hint_is_given_only_without_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pyarrow as pa

    monkeypatch.setenv(ARROW_POOL_ENV, "system")
    assert arrow_pool_hint() is None
    for value in (None, "mimalloc"):
        if value is None:
            monkeypatch.delenv(ARROW_POOL_ENV)
        else:
            monkeypatch.setenv(ARROW_POOL_ENV, value)
        hint = arrow_pool_hint()
        if set(pa.supported_memory_backends()) <= {"system"}:
            assert hint is None
        else:
            assert hint is not None and f"{ARROW_POOL_ENV}=system" in hint


def test_score_chunks_says_when_arrows_own_pool_would_keep_memory(tmp_path: Path) -> None:
    """The hint is logged once, by the first stream, in a process started without the
    setting; with it, nothing is said."""
    source = tmp_path / "in.parquet"
    code = f"""
    import json, logging
    from pathlib import Path
    import pandas as pd
    from mlsys.inference.batch import FolderSink, iter_chunks, score_chunks
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("mlsys.memory").addHandler(handler)
    logging.getLogger("mlsys.memory").setLevel(logging.INFO)
    pd.DataFrame({{"text": ["a", "bb", "ccc"]}}).to_parquet({str(source)!r})
    predict = lambda f: pd.DataFrame({{"label": [1] * len(f), "probability": 0.5}})
    for out in ("a", "b"):
        chunks = iter_chunks([Path({str(source)!r})], 2)
        score_chunks(chunks, predict, FolderSink(Path({str(tmp_path)!r}) / out))
    print(json.dumps({{"said": [r.getMessage() for r in records]}}))
    """
    import pyarrow as pa

    env = {k: v for k, v in os.environ.items() if k != ARROW_POOL_ENV}
    said = _run(code, env=env)["said"]
    assert isinstance(said, list)
    if set(pa.supported_memory_backends()) > {"system"}:
        assert len(said) == 1 and f"{ARROW_POOL_ENV}=system" in said[0]
    assert _run(code, env=env | STREAMING_ENV) == {"said": []}
