"""Keeping a long-running process's memory bounded by what it uses, not by what it once used.

Streaming work (scoring chunk after chunk, training shard after shard) frees and allocates
blocks of the same sizes over and over. Two allocators otherwise keep what is freed:

- glibc's malloc raises its mmap threshold each time a large block is freed (up to
  32 MiB), after which blocks of that size come from its heap and stay with the process
  when freed; the heap fragments and grows for many rounds before it settles;
- Arrow's default memory pool (mimalloc or jemalloc in the wheels) keeps freed pages for
  reuse, and pandas' Arrow-backed strings and Arrow compute allocate from it.

Both settings are process-wide, so they are applied by the code that needs them, not on
import: :func:`mlsys.inference.batch.score_chunks` applies both
(:func:`bound_streaming_memory`), :class:`mlsys.training.spill.Spill` fixes the threshold.

Memory given back must be taken again, a page fault per 4 KiB page. Where the kernel
offers transparent huge pages on request (mode ``madvise``), torch can ask for them for
its blocks of 2 MiB and more (:data:`TORCH_HUGE_PAGES_ENV`), so fresh memory comes 2 MiB
per fault. torch reads that setting once, at its first allocation: it has to be in the
environment before the process starts, so this module only says whether it would help
(:func:`huge_pages_hint`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
from pathlib import Path
from typing import Any

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def fix_mmap_threshold(nbytes: int) -> bool:
    """Have glibc's malloc serve every block of ``nbytes`` or more by a memory map of its
    own, given back to the system when freed (``mallopt(M_MMAP_THRESHOLD, nbytes)``, the
    same as ``MALLOC_MMAP_THRESHOLD_``). Setting it also stops the threshold from rising.

    Returns False where the C library is not glibc (nothing is changed)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"nbytes must be a positive int, got {nbytes!r}")
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, nbytes))


def use_system_arrow_pool() -> None:
    """Route Arrow's allocations (Parquet reads, Arrow-backed pandas strings, Arrow
    compute) through the system allocator, which returns freed memory as malloc does,
    instead of a caching pool. Buffers already allocated keep their pool."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def trim_heap() -> None:
    """Give the free pages of glibc's heaps back to the system (``malloc_trim(0)``): what a
    finished chunk freed stops counting in the resident set. A few milliseconds; a no-op
    off glibc."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


STREAMING_MMAP_THRESHOLD = 2 * 2**20
"""The threshold streaming scorers fix: blocks of 2 MiB and more (a chunk's arrays, Arrow
buffers) are mapped and unmapped on their own. Lower thresholds bound memory a little more
but map and fault many more blocks: at 128 KiB a checked 50k-row chunk scores ~30 % slower."""


def bound_streaming_memory() -> None:
    """The settings :func:`mlsys.inference.batch.score_chunks` applies before its first
    chunk: a fixed mmap threshold of :data:`STREAMING_MMAP_THRESHOLD` and Arrow's system
    pool. Measured on a checked stream of 50k-row chunks, with :func:`trim_heap` after
    each chunk: the peak above the warm process was 79 MiB after the first chunk and 97
    MiB after the twelfth; with the allocators' defaults, 112 and 159 MiB."""
    fix_mmap_threshold(STREAMING_MMAP_THRESHOLD)
    use_system_arrow_pool()


TORCH_HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
"""With ``1`` in the environment when the process starts, torch aligns its CPU blocks of 2
MiB and more to 2 MiB and advises them for transparent huge pages (``MADV_HUGEPAGE``);
any other value leaves them as they are. ``benchmarks/spill.py`` measures both ways: Spill
on disk, which takes fresh memory at every shard, faults far less and steps faster; plain
training, which mostly reuses memory glibc already holds, was faster with it or slower
depending on the optimizer, so it is not a default."""

_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_pages(mode_file: Path = _THP_MODE) -> str | None:
    """The kernel's transparent huge page mode, the bracketed word of ``mode_file``:
    ``"always"``, ``"madvise"`` or ``"never"``; None where it can't be read (not Linux, or
    a kernel without transparent huge pages)."""
    try:
        found = re.search(r"\[(\w+)\]", mode_file.read_text())
    except OSError:
        return None
    return found.group(1) if found else None


def huge_pages_hint(mode_file: Path = _THP_MODE) -> str | None:
    """How to give torch's large blocks huge pages in this process, or None where that
    would change nothing: the kernel gives them without being asked (``always``), can't
    (``never``, unknown), or torch was already asked (:data:`TORCH_HUGE_PAGES_ENV`)."""
    if transparent_huge_pages(mode_file) != "madvise":
        return None
    if os.environ.get(TORCH_HUGE_PAGES_ENV) == "1":
        return None
    return (
        f"this kernel gives transparent huge pages to memory that asks for them; start the "
        f"process with {TORCH_HUGE_PAGES_ENV}=1 for torch's blocks of 2 MiB and more to ask "
        f"(fewer page faults on the fresh memory spilled training takes at every shard)"
    )
