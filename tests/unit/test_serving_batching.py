"""Tests for mlsys.serving.batching: AIMD batch sizes, admission control, the batcher."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mlsys.serving.batching import (
    AdaptiveBatcher,
    AimdBatchSize,
    Draining,
    Overloaded,
    ServiceEstimate,
)


def test_aimd_grows_by_a_step_after_full_batches_under_the_budget() -> None:
    size = AimdBatchSize(budget_ms=10, max_batch=4)
    assert size.size == 1
    size.observe(service_ms=1.0, rows=1)
    size.observe(service_ms=1.0, rows=2)
    assert size.size == 3
    size.observe(service_ms=1.0, rows=1)  # not full: the size was not what limited it
    assert size.size == 3
    size.observe(service_ms=1.0, rows=3)
    size.observe(service_ms=1.0, rows=4)
    assert size.size == 4  # max_batch


def test_aimd_halves_when_the_p99_exceeds_the_budget_down_to_one() -> None:
    size = AimdBatchSize(budget_ms=10, max_batch=64)
    size.size = 40
    size.observe(service_ms=11.0, rows=40)
    assert size.size == 20
    size.observe(service_ms=1.0, rows=20)  # the window restarted: the slow batch is gone
    assert size.size == 21
    for _ in range(10):
        size.observe(service_ms=50.0, rows=1)
    assert size.size == 1


def test_aimd_p99_is_taken_over_the_window() -> None:
    size = AimdBatchSize(budget_ms=10, max_batch=1000, window=200)
    for _ in range(150):
        size.observe(service_ms=1.0, rows=size.size)
    assert size.size == 151
    size.observe(service_ms=10.5, rows=1)  # one slow batch in 151: above the p99 rank
    assert size.size == 151 and size.p99_ms == 1.0
    size.observe(service_ms=10.5, rows=1)
    assert size.size == 75


def test_batching_off_fixes_the_size_at_one() -> None:
    size = AimdBatchSize(budget_ms=10, max_batch=64, adaptive=False)
    for _ in range(5):
        size.observe(service_ms=1.0, rows=1)
    assert size.size == 1


def test_the_finish_estimate_counts_batches_ahead_plus_the_running_batch() -> None:
    estimate = ServiceEstimate(alpha=0.5)
    assert estimate.finish_ms(ahead_rows=100, batch_size=1, busy=True) == 0.0  # nothing seen
    estimate.observe(rows=10, service_ms=5.0)
    # 20 rows at batch size 10: two batches of 5 ms, after the running one.
    assert estimate.finish_ms(ahead_rows=20, batch_size=10, busy=True) == pytest.approx(15.0)
    assert estimate.finish_ms(ahead_rows=20, batch_size=10, busy=False) == pytest.approx(10.0)
    assert estimate.finish_ms(ahead_rows=21, batch_size=10, busy=False) == pytest.approx(15.0)
    estimate.observe(rows=10, service_ms=15.0)
    assert estimate.batch_ms == pytest.approx(10.0)


def test_batch_time_is_taken_on_the_scoring_thread_not_the_event_loop() -> None:
    """A busy event loop resumes the batcher late; that wait is not the model's time."""

    async def scenario() -> float:
        def score(items: list[int]) -> list[int]:
            time.sleep(0.002)
            return items

        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(score, slo_ms=1000)
        batcher.start()
        pending = asyncio.ensure_future(batcher.submit(1, rows=1))
        await asyncio.sleep(0)
        time.sleep(0.2)  # the loop is blocked while the scorer finishes
        await pending
        await batcher.close()
        return batcher.estimate.batch_ms

    assert asyncio.run(scenario()) < 150


class Gate:
    """A scorer that records its batches and, while closed, blocks in the worker thread."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[Any]] = []

    def __call__(self, items: list[Any]) -> list[Any]:
        self.entered.set()
        self.open.wait(timeout=30)
        self.batches.append(list(items))
        return [f"scored {item}" for item in items]


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_queued_requests_are_scored_together_up_to_the_batch_size() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher: AdaptiveBatcher[str, str] = AdaptiveBatcher(gate, slo_ms=1e6, delay_ms=0)
        batcher.start()
        first = batcher.enqueue("a", 1)
        await until(gate.entered.is_set)
        batcher.control.size = 4
        rest = [batcher.enqueue(x, 1) for x in "bcdef"]
        gate.open.set()
        assert await first == "scored a"
        assert [await f for f in rest] == [f"scored {x}" for x in "bcdef"]
        assert gate.batches == [["a"], ["b", "c", "d", "e"], ["f"]]
        await batcher.close()

    run(scenario)


def test_a_request_of_many_rows_is_one_item_and_rows_count_against_the_size() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher: AdaptiveBatcher[str, str] = AdaptiveBatcher(gate, slo_ms=1e6, delay_ms=0)
        batcher.start()
        first = batcher.enqueue("a", 1)
        await until(gate.entered.is_set)
        batcher.control.size = 4
        big, small = batcher.enqueue("big", 10), batcher.enqueue("small", 1)
        gate.open.set()
        await asyncio.gather(first, big, small)
        assert gate.batches == [["a"], ["big"], ["small"]]
        await batcher.close()

    run(scenario)


def test_with_batching_off_every_request_is_its_own_batch() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher: AdaptiveBatcher[str, str] = AdaptiveBatcher(gate, slo_ms=1e6, batching=False)
        batcher.start()
        futures = [batcher.enqueue(x, 1) for x in "abc"]
        gate.open.set()
        await asyncio.gather(*futures)
        assert gate.batches == [["a"], ["b"], ["c"]] and batcher.batch_size == 1
        await batcher.close()

    run(scenario)


def test_a_request_that_would_miss_the_objective_is_refused_and_not_queued() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher: AdaptiveBatcher[str, str] = AdaptiveBatcher(gate, slo_ms=50, delay_ms=0)
        batcher.estimate.observe(rows=1, service_ms=10.0)  # 10 ms per row and per batch
        batcher.start()
        first = batcher.enqueue("running", 1)
        await until(gate.entered.is_set)
        # (rows ahead + its own) * 10 ms + the running batch's 10 ms: 20, 30, 40, 50 fit.
        admitted = [batcher.enqueue(str(i), 1) for i in range(4)]
        with pytest.raises(Overloaded) as refused:
            batcher.enqueue("late", 1)
        assert refused.value.estimate_ms == pytest.approx(60.0)
        assert refused.value.retry_after_s == 1 and "50 ms objective" in str(refused.value)
        assert batcher.shed == 1 and batcher.queued_rows == 4
        gate.open.set()
        await asyncio.gather(first, *admitted)
        assert [x for batch in gate.batches for x in batch] == ["running", "0", "1", "2", "3"]
        await batcher.close()

    run(scenario)


def test_slack_scales_the_objective_admission_holds_requests_to() -> None:
    async def scenario() -> None:
        slack = [4.0]
        batcher: AdaptiveBatcher[str, str] = AdaptiveBatcher(
            Gate(), slo_ms=50, delay_ms=0, slack=lambda: slack[0]
        )
        batcher.estimate.observe(rows=1, service_ms=80.0)
        batcher.start()
        batcher.admit(1)  # 80 ms: within 4 x 50
        for factor in (1.0, 0.5):  # less than 1 counts as 1
            slack[0] = factor
            with pytest.raises(Overloaded, match="50 ms objective"):
                batcher.admit(1)
        assert batcher.shed == 2
        await batcher.close()

    run(scenario)


def test_close_scores_everything_queued_then_refuses_new_requests() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher: AdaptiveBatcher[str, str] = AdaptiveBatcher(gate, slo_ms=1e6)
        batcher.start()
        futures = [batcher.enqueue(str(i), 1) for i in range(20)]
        await until(gate.entered.is_set)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(Draining):
            batcher.enqueue("late", 1)
        gate.open.set()
        await closing
        assert [f.result() for f in futures] == [f"scored {i}" for i in range(20)]

    run(scenario)


def test_a_failed_item_fails_alone_and_a_failed_batch_fails_its_requests() -> None:
    async def scenario() -> None:
        def score(items: list[str]) -> list[str | Exception]:
            if "crash" in items:
                raise RuntimeError("model crashed")
            return [ValueError(f"bad {x}") if x == "bad" else x.upper() for x in items]

        batcher: AdaptiveBatcher[str, str] = AdaptiveBatcher(score, slo_ms=1e6, batching=False)
        batcher.start()
        assert await batcher.submit("ok", 1) == "OK"
        with pytest.raises(ValueError, match="bad bad"):
            await batcher.submit("bad", 1)
        with pytest.raises(RuntimeError, match="model crashed"):
            await batcher.submit("crash", 1)
        assert await batcher.submit("still", 1) == "STILL"
        await batcher.close()

    run(scenario)


def test_a_caller_that_went_away_is_not_scored() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher: AdaptiveBatcher[str, str] = AdaptiveBatcher(gate, slo_ms=1e6)
        batcher.start()
        first = batcher.enqueue("a", 1)
        await until(gate.entered.is_set)
        gone = batcher.enqueue("gone", 1)
        gone.cancel()
        kept = batcher.enqueue("kept", 1)
        gate.open.set()
        await asyncio.gather(first, kept)
        assert gate.batches == [["a"], ["kept"]]
        await batcher.close()

    run(scenario)


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="delay_ms=60"):
        AdaptiveBatcher(lambda items: items, slo_ms=50, delay_ms=60)
    with pytest.raises(ValueError, match="budget_ms must be > 0"):
        AimdBatchSize(budget_ms=0, max_batch=4)
