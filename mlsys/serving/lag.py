"""How far behind the event loop runs: a probe for admission control.

The batcher's admission control (:mod:`mlsys.serving.batching`) estimates a request's
wait in the batch queue. Under a flood of requests the queue is not where time goes: the
event loop itself falls behind (reading requests, refusing the excess, writing answers),
and every step of an accepted request (its batch starting, its result arriving, its answer
being written) waits for the loop's turn. A :class:`LoopLag` measures that wait the way
a request meets it: every ``interval_ms`` it hands the loop a callback (``call_soon``, as a
finished batch does to wake its requests) and times how long the callback waits to run.
(The lateness of a timer would say less: uvloop dates timers from the start of the loop's
turn, in whole milliseconds.)

The figure admission uses is the **smallest** wait of the last ``window`` probes: a
loop that falls behind for one turn (a long batch hand-over, the process descheduled on a
busy machine, a garbage collection) has one late probe and is not refused for it; a loop
that stays behind has every probe late, and requests are refused until it catches up
(refusals are cheap, so it does): the standing queue, not the burst, as in CoDel.

Usage::

    lag = LoopLag(interval_ms=5, window=4)
    lag.start()              # inside the running event loop
    lag.lag_ms               # 0.0 until the loop has been behind for the last 4 probes
    lag.stop()
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

__all__ = ["LoopLag"]


class LoopLag:
    """A probe of how long a callback waits for the event loop (see the module docstring).

    Args:
        interval_ms: time between probes.
        window: how many recent probes :attr:`lag_ms` takes the smallest wait of.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        interval_ms: float = 5.0,
        window: int = 4,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if interval_ms <= 0 or window < 1:
            raise ValueError(
                f"need interval_ms > 0 and window >= 1, got {interval_ms!r}, {window!r}"
            )
        self.interval_s = interval_ms / 1000
        self.window = window
        self.probes = 0
        self.worst_ms = 0.0
        self._clock = clock
        self._samples: deque[float] = deque(maxlen=window)
        self._handed = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def lag_ms(self) -> float:
        """The smallest wait (ms) of the last ``window`` probes; 0 before there are that
        many."""
        if len(self._samples) < self.window:
            return 0.0
        return min(self._samples)

    def observe(self, wait_ms: float) -> None:
        """Take one probe's wait into account (the probe calls it; so may tests)."""
        wait_ms = max(0.0, wait_ms)
        self._samples.append(wait_ms)
        self.probes += 1
        self.worst_ms = max(self.worst_ms, wait_ms)

    def start(self) -> None:
        """Start probing on the running event loop."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._schedule()

    def stop(self) -> None:
        """Stop probing (the last figures stay readable)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(self.interval_s, self._hand_over)

    def _hand_over(self) -> None:
        if self._loop is None:
            return
        self._handed = self._clock()
        self._loop.call_soon(self._ran)

    def _ran(self) -> None:
        if self._loop is None:  # stopped meanwhile
            return
        self.observe((self._clock() - self._handed) * 1000)
        self._schedule()
