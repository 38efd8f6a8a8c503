"""The scheduler's parts: deadline-ordered executor, routing hysteresis, health back-off,
capacity, and telling a busy machine from a slow engine."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import subprocess
import sys
import threading
import time

import pytest

from livecap.asr.scheduler import (
    CallTimer,
    DeadlineExecutor,
    Late,
    PrimaryHealth,
    RoomRouting,
    Scheduler,
    SchedulerOptions,
    capacity,
    engine_time,
    machine_late,
    thread_times,
)
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


async def test_a_withdrawn_call_never_runs() -> None:
    """A partial skipped while it waits must not run later beside the next call on its stream."""
    executor = DeadlineExecutor(1, "test", Metrics())
    gate, ran = threading.Event(), []
    blocker = executor.submit(0.0, gate.wait)
    timer = CallTimer()
    skipped = executor.submit(time.monotonic() + 5, lambda: ran.append("skipped"), timer=timer)
    assert timer.withdraw()
    after = executor.submit(time.monotonic() + 5, lambda: ran.append("next"))
    gate.set()
    await asyncio.gather(blocker, after)
    assert ran == ["next"]
    skipped.cancel()
    started = CallTimer()
    assert started.start() and not started.withdraw(), "a call that has started cannot be withdrawn"
    executor.close()


CAPACITY = SchedulerOptions(workers=2, target_utilization=0.6, max_step_interval_s=1.5)


def test_capacity_is_the_rooms_whose_steps_fit_the_threads_at_the_longest_interval() -> None:
    # 2 threads × 60% busy × a step every 1.5 s at most = 1.8 s of decoding per 1.5 s per room
    assert capacity(CAPACITY, 0.2) == 9
    assert capacity(CAPACITY, 0.3) == 6
    assert capacity(dataclasses.replace(CAPACITY, workers=4), 0.3) == 12
    assert capacity(CAPACITY, 0.0) == 0, "nothing measured: nothing admitted (the server is not ready)"
    assert capacity(CAPACITY, 5.0) == 1, "one publisher is always admitted"
    assert capacity(dataclasses.replace(CAPACITY, max_publishers=3), 0.01) == 3, "the operator's override"


def test_admission_follows_the_measured_cost_of_live_calls() -> None:
    scheduler = Scheduler(CAPACITY, Metrics())
    try:
        scheduler.calibrate(0.2)  # the warm-up's measure
        assert scheduler.capacity == 9 and scheduler.admits(8) and not scheduler.admits(9)
        scheduler.measured(3.0)
        assert scheduler.capacity >= 7, "one long call moves the capacity little"
        for _ in range(300):  # the rooms' real speech costs twice the warm-up's
            scheduler.measured(0.4)
        assert scheduler.capacity == 4 and not scheduler.admits(4)
        state = scheduler.capacity_state(2)
        assert state["publishers"] == 4 and state["admitted"] == 2 and state["basis"] == "measured"
        assert state["step_cost_s"] == pytest.approx(0.4, abs=0.01)
    finally:
        scheduler.close()


def test_a_call_late_on_the_engines_time_is_the_engines_fault() -> None:
    def late(wall_s: float, cpu_s: float, waited_s: float) -> bool:
        return machine_late(engine_time(wall_s, cpu_s, waited_s), budget_s=1.0, margin=0.8)

    assert machine_late(0.0, budget_s=1.0, margin=0.8), "it has not started: it waits for a thread"
    assert late(1.0, cpu_s=0.3, waited_s=0.7), "it waited for a CPU most of its budget"
    assert late(2.4, cpu_s=0.29, waited_s=1.8), "measured: four busy processes on two cores, GIL waits"
    assert not late(1.0, cpu_s=0.95, waited_s=0.05), "it ran all its budget: a slow engine"
    assert not late(3.2, cpu_s=0.2, waited_s=0.0), "it slept in the engine (the fault injector)"
    assert not late(3.8, cpu_s=0.2, waited_s=0.6), "the same on a busy machine"


needs_schedstat = pytest.mark.skipif(thread_times(threading.get_native_id()) is None,
                                     reason="needs Linux /proc/<pid>/task/<tid>/schedstat")


@needs_schedstat
def test_the_engines_time_leaves_out_the_wait_for_a_cpu() -> None:
    """A thread computing on a CPU that a busy process shares: the engine's time is its CPU time."""
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    measured: dict[str, float] = {}

    def compute() -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        timer = CallTimer()
        timer.start()
        began, cpu_began = time.monotonic(), time.thread_time()
        while time.thread_time() - cpu_began < 0.3:
            pass
        measured.update(engine=timer.engine_s(), cpu=time.thread_time() - cpu_began, wall=time.monotonic() - began)

    try:
        os.sched_setaffinity(hog.pid, {cpu})
        thread = threading.Thread(target=compute)
        thread.start()
        thread.join()
    finally:
        hog.kill()
        hog.wait()
    assert measured["wall"] > measured["cpu"] + 0.1, f"the thread shared its CPU: {measured}"
    assert measured["engine"] == pytest.approx(measured["cpu"], abs=0.05), measured


@needs_schedstat
def test_time_blocked_inside_the_engine_is_the_engines() -> None:
    """An engine waiting on a GPU, a worker process or the fault injector's sleep is slow itself."""
    timer = CallTimer()
    timer.start()
    time.sleep(0.5)
    assert timer.engine_s() > 0.4, "all of it but a wait for a CPU on waking up"
