"""Kill a Dask worker of a cluster the test process made (a flow run in this process
starts a local cluster whose workers are its spawned children) once a stage reaches a
given point, for the tests that a stage survives losing a worker."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil


@contextmanager
def kill_a_worker_when(ready: Callable[[], Any], poll_s: float = 0.05) -> Iterator[dict[str, Any]]:
    """Within the block, SIGKILL one worker spawned after it began, the first time
    ``ready()`` returns something true while such a worker exists. Yields a dict that then
    holds the killed ``pid`` and what ``ready`` returned (``seen``); empty if it never
    happened (the caller asserts)."""
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    killed: dict[str, Any] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen = ready()
            workers = [
                p
                for p in me.children()
                if p.pid not in before and "spawn_main" in " ".join(p.cmdline())
            ]
            if seen and workers:
                workers[0].send_signal(signal.SIGKILL)
                killed.update(pid=workers[0].pid, seen=seen)
                return
            time.sleep(poll_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield killed
    finally:
        stop.set()
        watcher.join(timeout=60)
