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


def high_water_mark_of(pid: int) -> int | None:
    """The kernel's peak resident set (``VmHWM``) of process ``pid``, in bytes; None where
    it cannot be read (off Linux, gone, another user's)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class ProcessTreePeaks:
    """Peak resident set of every process of some trees, sampled from outside them.

    A background thread looks every ``interval_s`` seconds at each root pid (given, or
    returned by ``roots()``) and all its descendants; for each process it keeps the largest
    of its RSS and the kernel's high-water mark (``VmHWM``, exact up to the last look before
    the process ended), its command line and its ancestors' pids as first seen. A process
    that lives less than one interval may be missed."""

    def __init__(self, roots: Callable[[], list[int]], interval_s: float = 0.2) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.seen: dict[int, dict[str, Any]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for root in self.roots():
            try:
                top = psutil.Process(root)
                tree = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    rss_now = proc.memory_info().rss
                    entry = self.seen.get(proc.pid)
                    if entry is None:
                        entry = self.seen[proc.pid] = {
                            "pid": proc.pid,
                            "root": root,
                            "command": " ".join(proc.cmdline())[:160],
                            "ancestors": [p.pid for p in proc.parents()],
                            "peak_rss_bytes": 0,
                            "samples": 0,
                        }
                except psutil.Error:
                    continue
                peak = max(rss_now, high_water_mark_of(proc.pid) or 0)
                entry["peak_rss_bytes"] = max(entry["peak_rss_bytes"], peak)
                entry["samples"] += 1

    def _run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval_s)

    def __enter__(self) -> ProcessTreePeaks:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
