"""Tests for mlsys.serving.lag (the event loop's lag) and its part in admission control."""

from __future__ import annotations

import asyncio
import time

import pytest

from mlsys.serving.batching import AdaptiveBatcher, Overloaded
from mlsys.serving.lag import LoopLag


def test_the_lag_is_the_least_wait_of_the_last_probes() -> None:
    lag = LoopLag(window=3)
    assert lag.lag_ms == 0.0
    lag.observe(30.0)
    lag.observe(40.0)
    assert lag.lag_ms == 0.0  # fewer probes than the window: nothing is known yet
    lag.observe(35.0)
    assert lag.lag_ms == 30.0
    lag.observe(2.0)  # one quick turn: caught up
    assert lag.lag_ms == 2.0
    lag.observe(-1.0)  # a clock that went back counts as no wait
    assert lag.lag_ms == 0.0
    assert (lag.probes, lag.worst_ms) == (5, 40.0)


def test_a_probe_that_waits_across_a_block_records_the_block() -> None:
    """The probe hands its callback to the loop, the loop blocks for 50 ms, then runs it:
    the wait recorded includes the block (a lower bound; a busy machine only adds)."""

    async def scenario() -> float:
        lag = LoopLag(interval_ms=1000.0, window=1)
        lag._loop = asyncio.get_running_loop()  # probe by hand, without the timer
        lag._hand_over()
        time.sleep(0.05)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        lag.stop()
        return lag.worst_ms

    assert asyncio.run(scenario()) >= 50.0


def test_stop_ends_probing_and_keeps_the_figures() -> None:
    async def scenario() -> LoopLag:
        lag = LoopLag(interval_ms=1.0, window=2)
        lag.start()
        while lag.probes < 3:
            await asyncio.sleep(0.001)
        lag.stop()
        seen = lag.probes
        await asyncio.sleep(0.02)
        assert lag.probes == seen
        return lag

    lag = asyncio.run(scenario())
    assert lag.probes >= 3


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="interval_ms"):
        LoopLag(interval_ms=0)
    with pytest.raises(ValueError, match="window"):
        LoopLag(window=0)


def test_admission_adds_the_wait_outside_the_queue() -> None:
    outside = [0.0]

    async def scenario() -> None:
        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(
            lambda items: items, slo_ms=50, wait_outside_ms=lambda: outside[0]
        )
        batcher.start()
        batcher.estimate.observe(rows=1, service_ms=10.0)  # the queue alone: 10 ms
        batcher.admit(1)
        outside[0] = 39.0  # 49 ms in all: still within
        batcher.admit(1)
        outside[0] = 41.0  # 51 ms
        with pytest.raises(Overloaded) as refused:
            batcher.admit(1)
        assert refused.value.estimate_ms == pytest.approx(51.0)
        with pytest.raises(Overloaded):
            await batcher.submit(1, rows=1)
        assert batcher.queued_rows == 0 and batcher.shed == 2
        outside[0] = 0.0
        assert await batcher.submit(5, rows=1) == 5
        await batcher.close()

    asyncio.run(scenario())
