"""Adaptive batching under a latency objective, with admission control (Clipper, NSDI 2017).

One :class:`AdaptiveBatcher` per served model: requests wait in its queue; a single
batcher task takes as many as the current batch size allows, scores them in one model
call on the batcher's own worker thread (the event loop keeps answering meanwhile), and
resolves each request's future with its share of the result.

Why these pieces, and how they fit together:

- **Batch size by AIMD** (:class:`AimdBatchSize`). A larger batch amortises the per-call
  cost of the model over more rows, until one batch takes too long. The size grows by a
  small step after each batch that filled it, while the p99 of recent batches' scoring
  times stays within the budget, and halves as soon as it does not: TCP's congestion
  control, applied to batches as Clipper does. The budget is half of what remains of the
  objective after the batching delay: a request can wait behind one running batch and then
  run in its own, so two batch times must fit in the objective.
- **Batching delay.** When the previous batch was full (arrivals outpace the batch size)
  and the queue holds fewer rows than the batch size, the batcher waits up to
  ``delay_ms`` for more before scoring. After a batch that was not full, it scores at once:
  a lone client never pays the delay.
- **Admission control** (:class:`ServiceEstimate`). On arrival, a request's finish time
  is estimated from the batches ahead of it (the rows queued, its own included, at the
  current batch size, times the recent scoring time of a batch) plus the batch in
  progress. If that exceeds the objective, the request is refused at once
  (:class:`Overloaded`; the server answers 503 with ``Retry-After``) and never queued: a
  request that would miss the objective costs the server nothing, and the ones it accepts
  keep meeting it.
- **The event loop's own lag.** Under a flood of requests the time goes outside the queue:
  the event loop falls behind, and each step of an accepted request waits for its turn.
  The server adds that wait (``wait_outside_ms``: the loop's measured lag, times the turns
  a request still needs) to the estimate, so a loop that stays behind refuses new requests
  until it has caught up.
- **Draining.** :meth:`AdaptiveBatcher.close` stops admitting (:class:`Draining`), scores
  everything already queued, then returns.

Usage::

    batcher = AdaptiveBatcher(score_many, slo_ms=50, max_batch=256)
    batcher.start()                       # inside the event loop
    result = await batcher.submit(item, rows=1)
    await batcher.close()
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "AdaptiveBatcher",
    "AimdBatchSize",
    "Draining",
    "Overloaded",
    "ServiceEstimate",
]

T = TypeVar("T")
R = TypeVar("R")

_log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The request cannot finish within the objective; it was not queued."""

    def __init__(self, estimate_ms: float, slo_ms: float) -> None:
        super().__init__(
            f"overloaded: a new request would finish in about {estimate_ms:.1f} ms, over the "
            f"{slo_ms:g} ms objective; retry later"
        )
        self.estimate_ms = estimate_ms
        self.slo_ms = slo_ms

    @property
    def retry_after_s(self) -> int:
        """Whole seconds to wait (HTTP ``Retry-After``): at least 1."""
        return max(1, math.ceil(self.estimate_ms / 1000))


class Draining(Exception):
    """The batcher is shutting down and admits nothing new."""


class AimdBatchSize:
    """The batch size, by additive increase and multiplicative decrease.

    Usage::

        size = AimdBatchSize(budget_ms=24, max_batch=256)
        size.observe(service_ms=3.0, rows=size.size)   # full batch, fast: size + 1
        size.observe(service_ms=40.0, rows=5)          # p99 over budget: size // 2

    After each batch, its scoring time joins a window of the last ``window`` batches. If
    the window's p99 exceeds ``budget_ms`` the size halves (at least 1) and the window
    restarts, so the next decision sees only batches of the new size; otherwise the size
    grows by ``step`` (at most ``max_batch``), but only after a batch that filled it:
    a size the traffic never reaches has not been shown to fit.

    Args:
        budget_ms: the scoring time a batch may take (its p99).
        max_batch: the largest size.
        adaptive: False fixes the size at 1 (batching off).
        step: the additive increase.
        window: how many recent batches the p99 is taken over.
    """

    def __init__(
        self,
        budget_ms: float,
        max_batch: int,
        *,
        adaptive: bool = True,
        step: int = 1,
        window: int = 32,
    ) -> None:
        if budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0, got {budget_ms!r}")
        if max_batch < 1 or step < 1 or window < 1:
            raise ValueError(
                f"max_batch, step and window must be >= 1, got {max_batch}, {step}, {window}"
            )
        self.budget_ms = budget_ms
        self.max_batch = max_batch if adaptive else 1
        self.adaptive = adaptive
        self.step = step
        self.size = 1
        self._window: deque[float] = deque(maxlen=window)

    @property
    def p99_ms(self) -> float:
        """The p99 scoring time of the window (0 when empty)."""
        if not self._window:
            return 0.0
        ordered = sorted(self._window)
        return ordered[math.ceil(0.99 * len(ordered)) - 1]

    def observe(self, service_ms: float, rows: int) -> None:
        """Take one batch's scoring time and row count into account."""
        if not self.adaptive:
            return
        self._window.append(service_ms)
        if self.p99_ms > self.budget_ms:
            self.size = max(1, self.size // 2)
            self._window.clear()
        elif rows >= self.size:
            self.size = min(self.max_batch, self.size + self.step)


class ServiceEstimate:
    """How long the batcher takes, for admission control: a moving average of one batch's
    scoring time (timed on the scoring thread, so that a busy event loop does not inflate
    it).

    Usage::

        estimate = ServiceEstimate()
        estimate.observe(rows=10, service_ms=5.0)
        estimate.finish_ms(ahead_rows=20, batch_size=10, busy=True)   # 5 + 2 * 5 = 15.0

    A request is answered after the batch in progress (if any) and the batches that the
    rows ahead of it, its own included, make at the current batch size. When the queue is
    deep, batches are full, so the average is that of batches of about the current size;
    when it is shallow, batches are small and quick, and so is the estimate. Before the
    first batch every estimate is 0: nothing is refused.

    Args:
        alpha: weight of the newest batch in the moving average.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self.batch_ms = 0.0
        self._seen = False

    def observe(self, rows: int, service_ms: float) -> None:
        if not self._seen:
            self.batch_ms, self._seen = service_ms, True
            return
        self.batch_ms += self.alpha * (service_ms - self.batch_ms)

    def finish_ms(self, ahead_rows: int, batch_size: int, busy: bool) -> float:
        """When a request would be answered: the batch in progress if any, then
        ``ceil(ahead_rows / batch_size)`` batches."""
        batches = math.ceil(ahead_rows / max(batch_size, 1))
        return (batches + (1 if busy else 0)) * self.batch_ms


@dataclass
class _Pending(Generic[T, R]):
    item: T
    rows: int
    future: asyncio.Future[R]


class AdaptiveBatcher(Generic[T, R]):
    """A queue and a batcher task for one model (see the module docstring).

    Args:
        score: scores a batch of items in one call, on the batcher's worker thread; returns
            one result per item, in order, or an exception instance for an item that
            failed (raising fails the whole batch).
        slo_ms: the latency objective: admission control refuses what cannot meet it.
        max_batch: the largest batch, in rows.
        batching: False: one request per batch, no delay (admission control stays on).
        delay_ms: the batching delay (see the module docstring).
        name: names the worker thread and log lines.
        on_batch: called after each batch with its rows and scoring time (ms), for metrics.
        wait_outside_ms: the time (ms) a request would now spend waiting outside the queue
            (for the event loop: :class:`mlsys.serving.lag.LoopLag`), added to the queue's
            estimate by admission control; None: nothing.
        slack: the factor admission control scales the objective by now (at least 1;
            e.g. larger while a new model version loads beside the served one); None: 1.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        score: Callable[[list[T]], Sequence[R | Exception]],
        *,
        slo_ms: float,
        max_batch: int = 256,
        batching: bool = True,
        delay_ms: float = 2.0,
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
        wait_outside_ms: Callable[[], float] | None = None,
        slack: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if slo_ms <= 0 or not 0 <= delay_ms < slo_ms:
            raise ValueError(
                f"need slo_ms > 0 and 0 <= delay_ms < slo_ms, got slo_ms={slo_ms!r}, "
                f"delay_ms={delay_ms!r}"
            )
        self.slo_ms = slo_ms
        self.name = name
        self.control = AimdBatchSize((slo_ms - delay_ms) / 2, max_batch, adaptive=batching)
        self.estimate = ServiceEstimate()
        self.queued_rows = 0
        self.shed = 0
        self.batches = 0
        self._score = score
        self._delay_s = delay_ms / 1000 if batching else 0.0
        self._on_batch = on_batch
        self._wait_outside_ms = wait_outside_ms
        self._slack = slack
        self._clock = clock
        self._queue: deque[_Pending[T, R]] = deque()
        self._busy = False
        self._last_full = False
        self._closing = False
        self._fill_target = 0
        self._arrived = asyncio.Event()
        self._filled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"score-{name}")

    @property
    def batch_size(self) -> int:
        """The current batch size (rows)."""
        return self.control.size

    def start(self) -> None:
        """Start the batcher task on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher-{self.name}"
            )

    def admit(self, rows: int) -> None:
        """Check, without queueing anything, that a request of ``rows`` rows would finish
        within the objective (its wait in the queue, plus ``wait_outside_ms``; the objective
        times ``slack`` where given). The server
        asks before it reads and parses a body, so that under overload a refusal costs next
        to nothing.

        Raises:
            Overloaded: it could not (counted in ``shed``).
            Draining: the batcher is closing or was never started.
        """
        if self._closing or self._task is None:
            raise Draining(f"the {self.name} batcher is not admitting requests")
        estimate = self.estimate.finish_ms(self.queued_rows + rows, self.control.size, self._busy)
        if self._wait_outside_ms is not None:
            estimate += self._wait_outside_ms()
        limit = self.slo_ms if self._slack is None else self.slo_ms * max(1.0, self._slack())
        if estimate > limit:
            self.shed += 1
            raise Overloaded(estimate, self.slo_ms)

    def enqueue(self, item: T, rows: int) -> asyncio.Future[R]:
        """Queue ``item`` (``rows`` rows) and return the future of its result.

        Raises:
            Overloaded: it could not finish within the objective (it is not queued).
            Draining: the batcher is closing or was never started.
        """
        self.admit(rows)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, rows, future))
        self.queued_rows += rows
        self._arrived.set()
        if self.queued_rows >= self._fill_target:
            self._filled.set()
        return future

    async def submit(self, item: T, rows: int) -> R:
        """Queue ``item`` and wait for its result (see :meth:`enqueue` for refusals)."""
        return await self.enqueue(item, rows)

    async def close(self) -> None:
        """Stop admitting, score what is queued, and stop the task and its thread."""
        self._closing = True
        self._arrived.set()
        self._filled.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            limit = self.control.size
            if self._last_full and self.queued_rows < limit and self._delay_s and not self._closing:
                self._fill_target = limit
                self._filled.clear()
                timer = loop.call_later(self._delay_s, self._filled.set)
                await self._filled.wait()
                timer.cancel()
                self._fill_target = 0
            batch, rows = self._take(limit)
            if batch:
                await self._score_batch(loop, batch, rows)
                self._last_full = rows >= limit

    def _take(self, limit: int) -> tuple[list[_Pending[T, R]], int]:
        """Requests from the head of the queue, up to ``limit`` rows (at least one
        request, however many rows it has); ones whose caller went away are dropped."""
        batch: list[_Pending[T, R]] = []
        rows = 0
        while self._queue and (not batch or rows + self._queue[0].rows <= limit):
            pending = self._queue.popleft()
            self.queued_rows -= pending.rows
            if pending.future.done():
                continue
            batch.append(pending)
            rows += pending.rows
        return batch, rows

    def _timed(self, items: list[T]) -> tuple[Sequence[R | Exception], float]:
        """Score on the worker thread, timed there: the model's time alone, not the wait
        for the event loop to resume the batcher (which grows with the request rate)."""
        start = self._clock()
        results = self._score(items)
        return results, (self._clock() - start) * 1000

    async def _score_batch(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[T, R]], rows: int
    ) -> None:
        """Score ``batch`` on the worker thread. Its requests are answered by the one
        callback that hands the result back to the event loop (:meth:`_deliver`), not by
        this task once it resumes: under load each turn of the loop is long, and a
        request should wait for as few of them as it can."""
        items = [pending.item for pending in batch]
        self._busy = True
        delivered: asyncio.Future[float] = loop.create_future()

        def work() -> None:
            outcome: Sequence[R | Exception] | BaseException
            try:
                outcome, service_ms = self._timed(items)
            except BaseException as exc:  # handed to the loop, which fails the batch
                outcome, service_ms = exc, 0.0
            loop.call_soon_threadsafe(self._deliver, batch, outcome, service_ms, delivered)

        try:
            self._executor.submit(work)
        except BaseException as exc:
            self._deliver(batch, exc, 0.0, delivered)
        service_ms = await delivered
        self.batches += 1
        self.control.observe(service_ms, rows)
        self.estimate.observe(rows, service_ms)
        if self._on_batch is not None:
            try:
                self._on_batch(rows, service_ms)
            except Exception:
                _log.exception("on_batch callback failed")

    def _deliver(
        self,
        batch: list[_Pending[T, R]],
        outcome: Sequence[R | Exception] | BaseException,
        service_ms: float,
        delivered: asyncio.Future[float],
    ) -> None:
        """On the event loop: resolve each request's future with its result (or the
        batch's failure), then let the batcher task go on."""
        self._busy = False
        results: Sequence[R | BaseException]
        if isinstance(outcome, BaseException):
            _log.error("batch of %d requests failed", len(batch), exc_info=outcome)
            results = [outcome] * len(batch)
        elif len(outcome) != len(batch):
            error = RuntimeError(
                f"the {self.name} scorer returned {len(outcome)} results for {len(batch)} requests"
            )
            _log.error("batch of %d requests failed: %s", len(batch), error)
            results = [error] * len(batch)
        else:
            results = outcome
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        if not delivered.done():
            delivered.set_result(service_ms)
