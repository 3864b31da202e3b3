"""Memory measurement shared by the benchmarks (a helper module, not a benchmark)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def rss() -> int:
    """This process's resident set size in bytes."""
    return int(psutil.Process().memory_info().rss)


def _high_water_mark() -> int | None:
    """The kernel's peak resident set of this process (``VmHWM``), in bytes; None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_high_water_mark() -> bool:
    """Set the kernel's peak resident set to the current one (Linux 4.0+: ``5`` to
    ``/proc/self/clear_refs``); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _high_water_mark() is not None


def peak_rss_during(fn: Callable[[], Any], interval_s: float = 0.005) -> tuple[Any, int]:
    """Run ``fn``; return its result and this process's peak RSS while it ran.

    On Linux the peak is the kernel's own high-water mark, reset just before ``fn``: exact,
    however briefly the peak lasted, and nothing runs beside ``fn``. Elsewhere a background
    thread samples the RSS every ``interval_s`` seconds (and once before and after)."""
    if _reset_high_water_mark():
        out = fn()
        return out, max(rss(), _high_water_mark() or 0)
    peak = rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss())
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = fn()
    finally:
        done.set()
        sampler.join()
    return out, max(peak, rss())
