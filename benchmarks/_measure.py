"""Memory measurement shared by the benchmarks (a helper module, not a benchmark)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psutil


def rss() -> int:
    """This process's resident set size in bytes."""
    return int(psutil.Process().memory_info().rss)


def peak_rss_during(fn: Callable[[], Any], interval_s: float = 0.005) -> tuple[Any, int]:
    """Run ``fn``; return its result and the peak RSS seen while it ran, sampled every
    ``interval_s`` seconds by a background thread (and once before and after)."""
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
