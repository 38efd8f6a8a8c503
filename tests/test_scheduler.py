"""The scheduler's pure parts: deadline-ordered executor, routing hysteresis, health back-off."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest

from livecap.asr.scheduler import DeadlineExecutor, Late, PrimaryHealth, RoomRouting, SchedulerOptions
from livecap.metrics import Metrics

OPTIONS = SchedulerOptions(latency_budget_s=1.0, retry_after_s=5.0, max_retry_after_s=40.0)


async def test_executor_runs_the_earliest_deadline_first() -> None:
    executor = DeadlineExecutor(1, "test", Metrics())
    gate, order = threading.Event(), list[int]()
    blocker = executor.submit(0.0, gate.wait)  # occupies the only thread
    now = time.monotonic()
    futures = [executor.submit(now + deadline, functools.partial(order.append, deadline)) for deadline in (3, 1, 2)]
    gate.set()
    await asyncio.gather(blocker, *futures)
    assert order == [1, 2, 3]
    executor.close()


async def test_executor_runs_urgent_jobs_before_earlier_deadlines() -> None:
    """Finals are urgent: a partial can be skipped, a final cannot."""
    executor = DeadlineExecutor(1, "test", Metrics())
    gate, order = threading.Event(), list[str]()
    blocker = executor.submit(0.0, gate.wait)
    now = time.monotonic()
    partial = executor.submit(now + 1, functools.partial(order.append, "partial"))
    final = executor.submit(now + 2, functools.partial(order.append, "final"), urgent=True)
    gate.set()
    await asyncio.gather(blocker, partial, final)
    assert order == ["final", "partial"]
    executor.close()


async def test_executor_drops_a_job_that_cannot_meet_its_deadline() -> None:
    executor = DeadlineExecutor(1, "test", Metrics())
    ran = []
    late = executor.submit(time.monotonic() + 0.05, lambda: ran.append("late"), expected_s=0.5)
    on_time = executor.submit(time.monotonic() + 5.0, lambda: ran.append("on time"), expected_s=0.5)
    with pytest.raises(Late):
        await late
    await on_time
    assert ran == ["on time"]
    executor.close()


async def test_executor_hands_exceptions_to_the_caller() -> None:
    executor = DeadlineExecutor(2, "test", Metrics())

    def fail() -> None:
        raise ValueError("engine broke")

    with pytest.raises(ValueError, match="engine broke"):
        await executor.submit(time.monotonic() + 1, fail)
    executor.close()


def test_a_miss_falls_back_until_a_trial_passes() -> None:
    routing = RoomRouting(OPTIONS)
    assert routing.next_route(0.0, True).role == "primary"
    routing.record_miss(1.0)
    assert routing.next_route(2.0, True).role == "fallback", "stays on the fallback during the back-off"
    trial = routing.next_route(6.1, True)
    assert trial.role == "primary" and trial.trial, "the first utterance after the back-off is a trial"
    assert routing.record_utterance(worst_share=0.5)
    after = routing.next_route(7.0, True)
    assert after.role == "primary" and not after.trial


def test_failed_trials_back_off_exponentially() -> None:
    routing, now, waits = RoomRouting(OPTIONS), 0.0, []
    routing.next_route(now, True)
    routing.record_miss(now)
    for _ in range(5):
        started = now
        while routing.next_route(now, True).role == "fallback":
            now += 0.5
        waits.append(now - started)
        routing.record_miss(now)  # the trial misses too
    assert waits == [5.0, 10.0, 20.0, 40.0, 40.0]


def test_a_trial_slower_than_the_margin_does_not_count_as_recovery() -> None:
    routing = RoomRouting(OPTIONS)
    routing.record_miss(0.0)
    assert routing.next_route(5.0, True).trial
    assert not routing.record_utterance(worst_share=0.95), "met the deadline, but without margin"
    assert routing.next_route(6.0, True).trial, "still on trial"


def test_an_unhealthy_primary_moves_every_room_to_the_fallback() -> None:
    health = PrimaryHealth(OPTIONS)
    routing = RoomRouting(OPTIONS)
    health.failed(10.0)
    assert routing.next_route(11.0, health.healthy(11.0)).role == "fallback"
    assert not health.healthy(14.9) and health.healthy(15.0)
    health.failed(15.0)
    assert health.retry_at == 25.0, "the engine's back-off doubles too"
    health.succeeded()
    health.failed(30.0)
    assert health.retry_at == 35.0
