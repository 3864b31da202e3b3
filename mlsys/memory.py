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
Arrow has two default pools, though: the one Python code gets, which
:func:`use_system_arrow_pool` sets, and its C++ library's own, which pyarrow picks once
when it is imported and which the Parquet reader and writer allocate from whatever Python
says. Only the environment chooses that one (:data:`STREAMING_ENV`), so it is set for the
processes that stream (batch_infer's Dask workers, its deployments) and
:func:`bound_streaming_memory` says when it is missing (:func:`arrow_pool_hint`).

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
import logging
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
    MiB after the twelfth; with the allocators' defaults, 112 and 159 MiB.

    Logs, once per process, when Arrow's C++ pool is not the system allocator
    (:func:`arrow_pool_hint`): that one only the environment can set."""
    fix_mmap_threshold(STREAMING_MMAP_THRESHOLD)
    use_system_arrow_pool()
    _say_arrow_pool_hint()


ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
"""Arrow's setting for the default pool of its C++ library, read once when pyarrow is
imported: ``system``, ``jemalloc`` or ``mimalloc`` (the wheels' default)."""

STREAMING_ENV: dict[str, str] = {ARROW_POOL_ENV: "system"}
"""Environment for a process that scores chunk after chunk, set before it starts (or at
least before it imports pyarrow): Arrow's C++ pool becomes the system allocator, which
gives freed memory back like the rest of the process does. The Parquet reader and writer
take their buffers from that pool whatever :func:`use_system_arrow_pool` says; with mimalloc, the
wheels' default, a checked 2-worker stream of 50k-row chunks peaked 1.41-1.57x higher at 1M
rows than at 100k, and 1.04-1.11x with this setting (``benchmarks/batch_infer.py``)."""


def arrow_pool_hint() -> str | None:
    """How to make Arrow's C++ pool the system allocator in this process, or None where it
    already is: :data:`ARROW_POOL_ENV` is ``system``, or this pyarrow has no other pool."""
    if os.environ.get(ARROW_POOL_ENV) == STREAMING_ENV[ARROW_POOL_ENV]:
        return None
    import pyarrow as pa

    if set(pa.supported_memory_backends()) <= {"system"}:
        return None
    return (
        f"Arrow's C++ memory pool in this process is not the system allocator, so what the "
        f"Parquet reader and writer free stays with the process; start the process with "
        f"{ARROW_POOL_ENV}=system (mlsys.memory.STREAMING_ENV) for a peak that does not grow "
        f"with the input"
    )


@functools.cache
def _say_arrow_pool_hint() -> None:
    hint = arrow_pool_hint()
    if hint is not None:
        logging.getLogger(__name__).info("streaming memory: %s", hint)


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
