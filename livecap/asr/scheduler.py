"""Where and by which engine recognition runs, under a latency budget.

Every recognizer call has a deadline: the arrival of the newest audio it
covers plus the latency budget (for a final: the endpoint plus the budget).
Calls of all rooms share one ``DeadlineExecutor`` whose threads take finals
first (a partial may be skipped, a final commits the words and cannot be),
then the call with the earliest deadline, and drop a primary call that can
no longer meet its deadline instead of running it late.

Each call to the primary races its deadline. If the primary misses it
(slow, overloaded, raising, or predicted late), the utterance continues on
the fallback engine — fed from the utterance's audio buffer, so nothing is
lost — and its room stays on the fallback until a later *trial* utterance
shows the primary meeting deadlines with a margin again. Trials back off
exponentially while they fail, which keeps a primary hovering around the
budget from flapping. During a trial the fallback is fed as a hot standby,
since a miss is likely then; otherwise it catches up from the buffer when
needed and costs nothing before. Measured (README): a hot standby saves the
catch-up (~0.1 s for a 5 s utterance) but costs ~0.25 CPU per speaking room,
on the same cores the primary needs when it is the CPU that is overloaded.

A late call is the engine's fault only if the engine used the time: a call
that waited for a thread, or on its thread for a CPU (Linux schedstat), is
late because the machine is busy, and the fallback would not be faster on
the same busy cores. Such a partial is skipped (if it never started) or
waited for, and such a final is waited for, a budget at a time; only a call
late on the engine's time (running, or blocked inside the engine:
``engine_time``) or raising moves the room to the fallback. So a transient
CPU spike costs a few late words, not a room on the fallback.

Load beyond the executor's capacity is shed in this order:

1. new publishers are refused at ``start`` (``server_busy``) once the
   admitted ones would fill the executor (``capacity``);
2. the partial steps of every speaking room space out, so that the threads
   stay ``target_utilization`` busy (``Scheduler.step_interval_s``);
3. partial steps that waited too long for a thread are skipped (the next
   step covers their audio);
4. finals are never shed: they go before every partial and wait for as
   long as their lateness is the machine's.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import math
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from livecap.asr.engine import SAMPLE_RATE, WARM_UP_S, Engine, Hypothesis, RecognizerStream
from livecap.asr.tokenizer import Task
from livecap.errors import ModelError, UnsupportedFormat
from livecap.language import AUTO, ENGLISH, WHISPER_LANGUAGES
from livecap.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
EngineRole = Literal["primary", "fallback"]


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    latency_budget_s: float = 1.0
    """Longest accepted time from audio arriving to the caption that covers it."""
    workers: int = 2
    """Threads running primary calls (the fallback runs in its own processes)."""
    retry_after_s: float = 5.0
    """First wait before a room or a failed engine tries the primary again; doubles per failed trial."""
    max_retry_after_s: float = 60.0
    trial_margin: float = 0.8
    """A trial succeeds only if every call finished within this share of the budget."""
    target_utilization: float = 0.6
    """Share of the executor's threads that partial steps may keep busy; beyond it steps space out.
    The rest absorbs finals and the cores' other work (ingest, VAD, fan-out). Measured with 8 rooms
    on 2 cores: 0.75 let the cores saturate (16% fallback, word lag p95 7 s), 0.6 kept every
    utterance on the primary with word lag p95 2.4 s; with 4 rooms both meet the budget."""
    max_step_interval_s: float = 1.2
    """Longest that partial steps may space out in an admitted room (words appear up to about this
    much later); with ``target_utilization`` it sets the capacity (``capacity``). Measured on 2
    cores (benchmarks.overload, tiny.en, a decode step 0.28 s): 1.5 s admitted 6 rooms, whose
    word lag p95 was 2.6 s with every core busy."""
    max_publishers: int = 0
    """Publishers streaming at once; 0 = the measured ``capacity``."""


LIVE_COST_WEIGHT = 0.02
"""Weight of one primary call in the live step cost behind the capacity: a slow average (about the
last 50 calls), so the capacity follows the rooms' real speech but not one long call."""


def capacity(options: SchedulerOptions, step_cost_s: float) -> int:
    """Publishers the executor serves within their budget (0 before anything is measured).

    Every admitted publisher is counted as speaking, as in a talk. A speaking room asks for one
    step per step interval, and steps space out to keep the threads ``target_utilization`` busy;
    at ``max_step_interval_s`` they may space out no further, so the executor serves
    workers × target_utilization × max_step_interval_s / step_cost_s rooms, ``step_cost_s``
    being the engine's time for one decode step (``engine_time``). At least one publisher is admitted.
    ``max_publishers`` overrides the measurement."""
    if options.max_publishers:
        return options.max_publishers
    if step_cost_s <= 0:
        return 0
    rooms = options.workers * options.target_utilization * options.max_step_interval_s / step_cost_s
    return max(1, math.floor(rooms + 1e-9))  # 1.8 / 0.2 is 8.999… in floating point


def thread_times(thread: int) -> tuple[float, float] | None:
    """(CPU time, time runnable but waiting for a CPU) of thread ``thread`` (a native id in this
    process), in seconds: the first two fields of Linux's ``/proc/<pid>/task/<tid>/schedstat``
    ("time spent on the cpu", "time spent waiting on a runqueue";
    Documentation/scheduler/sched-stats.rst). None where there is no such file."""
    try:
        with open(f"/proc/self/task/{thread}/schedstat", "rb") as file:
            cpu, waited = file.read().split()[:2]
        return int(cpu) / 1e9, int(waited) / 1e9
    except (OSError, ValueError):
        return None


def engine_time(wall_s: float, cpu_s: float, waited_s: float) -> float:
    """The share of a call's ``wall_s`` on its thread that is the engine's, not the machine's.

    The engine's: the thread's CPU time, and time blocked inside the engine (a GPU, a worker
    process, the fault injector's sleep). The machine's: the time the thread waited for a CPU,
    and as much blocked time again, for on an oversubscribed machine the thread also blocks on
    Python's GIL, held by threads that themselves wait for a CPU (measured with four busy
    processes on two cores: a 0.25 s decode waited 1.8-4.4 s for a CPU and 0.1-0.3 s blocked)."""
    blocked = max(0.0, wall_s - cpu_s - waited_s)
    return cpu_s + max(0.0, blocked - waited_s)


class CallTimer:
    """How much of a call's time on its thread is the engine's (``engine_time``).

    Started on the executor's thread; read from the event loop while the call runs. Where the
    kernel gives no per-thread times (not Linux), all of it counts as the engine's. With
    ``engine_threads`` > 1 only the calling thread is measured: its waits for the engine's other
    threads count as blocked in the engine."""

    def __init__(self) -> None:
        self.started: float | None = None
        self._thread = 0
        self._times_before: tuple[float, float] | None = None
        self._withdrawn = False
        self._lock = threading.Lock()

    def start(self) -> bool:
        """The call begins on this thread; False if it was withdrawn first and must not run."""
        with self._lock:
            if self._withdrawn:
                return False
            self._thread = threading.get_native_id()
            self._times_before = thread_times(self._thread)
            self.started = time.monotonic()
            return True

    def withdraw(self) -> bool:
        """Keep the call from starting; False if it already has (calls on one stream never overlap)."""
        with self._lock:
            self._withdrawn = self.started is None
            return self._withdrawn

    def engine_s(self) -> float:
        """The engine's time so far (0 before the call started)."""
        if self.started is None:
            return 0.0
        wall = time.monotonic() - self.started
        now = thread_times(self._thread)
        if now is None or self._times_before is None:
            return wall
        return engine_time(wall, now[0] - self._times_before[0], now[1] - self._times_before[1])


def machine_late(engine_s: float, budget_s: float, margin: float) -> bool:
    """Whether a call past its deadline is late because the machine is busy: the engine has had
    less than ``margin`` of the budget (none if the call waits for a thread). A call late on the
    engine's own time is the engine's fault: slow, stuck or failing."""
    return engine_s <= margin * budget_s


class Late(Exception):
    """A primary call dropped at dequeue time: it could no longer meet its deadline."""


class StepSkipped(Exception):
    """A partial step that waited too long for a thread was dropped: under load
    the next step covers its audio. Not an engine problem, so no fallback."""


@dataclass(order=True)
class _Job(Generic[T]):
    rank: int
    """0 for urgent jobs (finals), which go before every other; 1 otherwise."""
    deadline: float
    order: int
    function: Callable[[], T] = field(compare=False)
    future: asyncio.Future[T] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    enqueued: float = field(compare=False)
    expected_s: float = field(compare=False)
    """Predicted run time; the job is dropped (``Late``) if it cannot finish in time. 0 = always run."""
    timer: CallTimer | None = field(compare=False)


class DeadlineExecutor:
    """A thread pool that runs urgent jobs first, then the one with the earliest deadline."""

    def __init__(self, workers: int, name: str, metrics: Metrics) -> None:
        self.name = name
        self._metrics = metrics
        self._heap: list[_Job[object]] = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, deadline: float, function: Callable[[], T], expected_s: float = 0.0,
               urgent: bool = False, timer: CallTimer | None = None) -> asyncio.Future[T]:
        """Run ``function`` on a thread; ``timer`` (if any) is started when it begins to run."""
        loop = asyncio.get_running_loop()
        job = _Job(0 if urgent else 1, deadline, next(self._order), function, loop.create_future(), loop,
                   time.monotonic(), expected_s, timer)
        with self._condition:
            heapq.heappush(self._heap, job)
            self._metrics.queue_depth.labels(self.name).set(len(self._heap))
            self._condition.notify()
        return job.future

    @property
    def depth(self) -> int:
        return len(self._heap)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._heap and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                job = heapq.heappop(self._heap)
                self._metrics.queue_depth.labels(self.name).set(len(self._heap))
            started = time.monotonic()
            self._metrics.queue_wait_seconds.labels(self.name).observe(started - job.enqueued)
            if job.future.cancelled():
                continue
            try:
                if job.expected_s and started + job.expected_s > job.deadline:
                    raise Late(f"would finish {started + job.expected_s - job.deadline:.3f} s late")
                if job.timer is not None and not job.timer.start():
                    continue  # withdrawn: its future is cancelled
                result: object = job.function()
            except BaseException as error:  # handed to the awaiting coroutine
                job.loop.call_soon_threadsafe(_settle, job.future, None, error)
            else:
                job.loop.call_soon_threadsafe(_settle, job.future, result, None)


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class PrimaryHealth:
    """Whether the primary engine may be used at all (pure state).

    A failure (exception from the engine) makes it unhealthy for a back-off
    period; the first utterance after that is a trial."""

    def __init__(self, options: SchedulerOptions) -> None:
        self._options = options
        self.retry_at = 0.0
        self._backoff = options.retry_after_s
        self.failures = 0

    def healthy(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float) -> None:
        self.failures += 1
        self.retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self._options.max_retry_after_s)

    def succeeded(self) -> None:
        self._backoff = self._options.retry_after_s


@dataclass(frozen=True, slots=True)
class Route:
    role: EngineRole
    trial: bool
    """The primary is on probation: the fallback is fed too (hot standby), so a miss costs no catch-up."""


class RoomRouting:
    """Which engine serves a room's next utterance (pure state, with hysteresis)."""

    def __init__(self, options: SchedulerOptions) -> None:
        self._options = options
        self.role: EngineRole = "primary"
        self.retry_at = 0.0
        self._backoff = options.retry_after_s
        self._trial = False
        self.switches = 0
        self.steps_skipped = 0
        """Partial steps skipped for want of time where nothing could take over (``skipped``)."""
        self.skipped_at: float | None = None

    def next_route(self, now: float, primary_healthy: bool) -> Route:
        if self.role == "fallback" and primary_healthy and now >= self.retry_at:
            self._switch("primary")
            self._trial = True
        if self.role == "primary" and not primary_healthy:
            self._switch("fallback")
        return Route(self.role, self._trial and self.role == "primary")

    def record_miss(self, now: float) -> None:
        """A primary call missed its deadline: fall back, try again later."""
        if self._trial:
            self._backoff = min(self._backoff * 2, self._options.max_retry_after_s)
        if self._trial or self.role == "primary":
            self.retry_at = now + self._backoff
        self._trial = False
        self._switch("fallback")

    def record_utterance(self, worst_share: float) -> bool:
        """An utterance ended on the primary; ``worst_share`` is its slowest call / budget.
        True when it was a trial that passed (the primary is back for good)."""
        passed = self._trial and worst_share <= self._options.trial_margin
        if passed:
            self._trial = False
            self._backoff = self._options.retry_after_s
        return passed

    def skipped(self, now: float) -> None:
        """A partial step was skipped for want of time, with nothing to fall back to."""
        self.steps_skipped += 1
        self.skipped_at = now

    def _switch(self, role: EngineRole) -> None:
        if role != self.role:
            self.switches += 1
            self.role = role


def serves(engine: Engine, language: str | None, task: Task) -> bool:
    """Whether ``engine`` can ``task`` speech in ``language`` (None: detect it, which needs more
    than one language)."""
    known = language in engine.languages if language is not None else len(engine.languages) > 1
    return known and (task == "transcribe" or engine.translates)


class Scheduler:
    """Owns the engines, the executors and the routing of every room.

    ``primary`` serves English (tiny.en by default); speech in other languages, detection
    and translation go to ``multilingual`` (Whisper base), loaded at start-up or on first
    need by ``load_multilingual``, unless the primary serves them itself (``--model base``).
    Both run on the one executor, under the one latency budget. The fallback speaks English
    only: a call in another language that misses its deadline is not handed over; a partial
    is skipped (the next step covers its audio), a final is waited for (``_call``)."""

    def __init__(self, options: SchedulerOptions, metrics: Metrics) -> None:
        self.options = options
        self.metrics = metrics
        self.primary: Engine | None = None
        self.multilingual: Engine | None = None
        self.load_multilingual: Callable[[], Awaitable[Engine]] | None = None
        """Loads and warms up the multilingual engine (set by the server); None: none can be loaded."""
        self._loading: asyncio.Future[Engine] | None = None
        self.fallback: Engine | None = None
        self.ready = asyncio.Event()
        """Set once the engines are loaded and warmed up; the server answers /readyz then."""
        self.health = PrimaryHealth(options)
        self.executor = DeadlineExecutor(options.workers, "primary", metrics)
        self.fallback_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fallback")
        self._routes: dict[str, RoomRouting] = {}
        self._expected: dict[str, float] = {}
        """Moving average of a call's engine time per engine (model version), for spacing steps and
        dropping calls that would be late."""
        self.step_cost_s = 0.0
        """Slow average of the same, behind the capacity: measured at warm-up, then on every primary call."""
        self.speaking = 0
        """Utterances open right now, in all rooms."""

    @property
    def primary_name(self) -> str:
        return self.primary.name if self.primary else "none"

    def expected(self, engine: Engine | None) -> float:
        """Moving average of ``engine``'s engine time per call (0 before one is measured)."""
        return self._expected.get(engine.model_version, 0.0) if engine is not None else 0.0

    def engine_for(self, language: str | None, task: Task = "transcribe") -> Engine | None:
        """The Whisper engine loaded that serves ``language`` (None: detection) and ``task``."""
        for engine in (self.primary, self.multilingual):
            if engine is not None and serves(engine, language, task):
                return engine
        return None

    async def ensure_engine(self, language: str | None, task: Task = "transcribe") -> Engine:
        """``engine_for``, loading the multilingual engine first if it is needed and not loaded
        (once: concurrent callers wait for the same load). ``UnsupportedFormat`` when no engine can
        serve, ``ModelError`` when the load fails (a later call tries again)."""
        if (engine := self.engine_for(language, task)) is not None:
            return engine
        if self.load_multilingual is None or self.multilingual is not None:
            raise UnsupportedFormat(f"no loaded model can {task} {language or 'auto-detected speech'}; "
                                    f"start the server with --model base or --languages")
        if self._loading is None:
            self._loading = asyncio.ensure_future(self.load_multilingual())
        loading = self._loading
        try:
            self.multilingual = await asyncio.shield(loading)
        except Exception as error:
            if self._loading is loading:
                self._loading = None
            raise ModelError(f"the multilingual model could not be loaded: {error}") from error
        if (engine := self.engine_for(language, task)) is None:
            raise UnsupportedFormat(f"the multilingual model cannot {task} {language}")
        return engine

    @property
    def capacity(self) -> int:
        """Publishers admitted at once (see ``capacity``)."""
        return capacity(self.options, self.step_cost_s)

    def weight(self, language: str | None) -> float:
        """What a publisher in ``language`` (None: auto) takes of the capacity, in English publishers:
        its engine's step time over the primary's (base's steps cost about twice tiny.en's); 1 while
        either is unmeasured."""
        engine, primary = self.engine_for(language), self.expected(self.primary)
        if engine is None or engine is self.primary or not primary or not self.expected(engine):
            return 1.0
        return max(1.0, self.expected(engine) / primary)

    def admits(self, load: float, weight: float = 1.0) -> bool:
        """Whether one more publisher of ``weight`` fits beside the publishers streaming now, who
        weigh ``load`` (``weight``); the first always fits once the capacity is measured."""
        capacity = self.capacity
        return capacity > 0 and (load == 0 or load + weight <= capacity + 1e-9)

    def capacity_state(self, publishers: int) -> dict[str, Any]:
        """The capacity and what it was chosen from, for /readyz, the dashboard and the log."""
        options = self.options
        return {"publishers": self.capacity, "admitted": publishers,
                "basis": "max_publishers" if options.max_publishers else "measured",
                "step_cost_s": round(self.step_cost_s, 4), "workers": options.workers,
                "target_utilization": options.target_utilization,
                "max_step_interval_s": options.max_step_interval_s}

    def calibrate(self, step_cost_s: float) -> None:
        """Take the step cost measured at warm-up as the first estimate."""
        self.step_cost_s = step_cost_s
        if self.primary is not None:
            self._expected[self.primary.model_version] = step_cost_s

    async def prepare(self, language: str, translate: str | None = None) -> None:
        """Load what a stream in ``language`` (a code or ``auto``) with a ``translate`` track needs:
        the multilingual model, on first need (``ensure_engine``; a publisher's ``ready`` waits)."""
        spoken = None if language == AUTO else language
        if spoken != ENGLISH:
            await self.ensure_engine(spoken)
        if translate is not None and spoken != translate:
            await self.ensure_engine(spoken, "translate")

    def step_interval_s(self, base_s: float, engine: Engine | None = None) -> float:
        """Audio to collect before an utterance is decoded again.

        Each partial step re-decodes the whole utterance, so the demand on the
        executor grows with the number of rooms speaking at once. Spacing the
        steps out so that the threads stay below ``target_utilization`` keeps
        queue waits short and deadlines met: under load words appear a little
        later instead of the rooms piling onto the fallback (which cannot serve
        many rooms on a small CPU either). ``engine``: the one the utterance is on (default
        the primary); every room speaking is counted at its cost."""
        engine = engine or self.primary
        if engine is None or self.speaking <= 1:
            return base_s
        share = self.expected(engine) * self.speaking / (self.options.workers * self.options.target_utilization)
        return max(base_s, share)

    def routing(self, room: str) -> RoomRouting:
        if room not in self._routes:
            self._routes[room] = RoomRouting(self.options)
        return self._routes[room]

    def open(self, room: str, prompt: str, terms: Sequence[str] = (), language: str | None = ENGLISH,
             task: Task = "transcribe", candidates: Sequence[str] = ()) -> ScheduledUtterance:
        """An utterance in ``language`` (None: detected, among ``candidates`` if any) for ``task``;
        the engine that serves it must be loaded (``ensure_engine``), else ``UnsupportedFormat``."""
        return ScheduledUtterance(self, room, prompt, terms, language, task, candidates)

    def primary_failed(self, room: str, error: BaseException) -> None:
        now = time.monotonic()
        first = self.health.healthy(now)
        self.health.failed(now)
        if self.primary is not None:
            self.metrics.engine_failures.labels(self.primary.name).inc()
            self.metrics.engine_healthy.labels(self.primary.name).set(0)
        if first:  # log the first of a series with context; the counter has the rest
            log.error("primary engine failed in room %s: %s; serving from the fallback, retry in %.0f s",
                      room, error, self.health.retry_at - now, extra={"room": room})

    def measured(self, engine_s: float, engine: Engine | None = None) -> None:
        """A call of ``engine`` (default: the primary) took ``engine_s`` of the engine's time
        (``engine_time``)."""
        engine = engine or self.primary
        version = engine.model_version if engine is not None else "none"
        expected = self._expected.get(version, 0.0)
        self._expected[version] = engine_s if not expected else 0.8 * expected + 0.2 * engine_s
        self.step_cost_s = engine_s if not self.step_cost_s else \
            (1 - LIVE_COST_WEIGHT) * self.step_cost_s + LIVE_COST_WEIGHT * engine_s

    def close(self) -> None:
        self.executor.close()
        self.fallback_executor.shutdown(wait=False, cancel_futures=True)


def warm_up(engine: Engine, speech: np.ndarray, step_s: float) -> float:
    """Decode prefixes of real ``speech`` the way a live utterance is decoded (a partial, one more
    step, the final), so that no live call pays an engine's first-use costs (memory arenas, kernels
    chosen per input shape, a worker process's first decoder). An engine may name the lengths
    (``warm_up_durations_s``: Whisper one per encoder window, a process engine one per worker);
    the streams are all opened first, so each lands on its own worker. Returns the median engine
    time of the timed steps: the capacity's first measurement. Blocking: run it on a thread, before the
    server says it is ready."""
    durations = getattr(engine, "warm_up_durations_s", (WARM_UP_S,))
    streams = [engine.open_stream() for _ in durations]
    costs = []
    for stream, duration in zip(streams, durations, strict=True):
        audio = speech[: round(duration * SAMPLE_RATE)]
        head = max(0, len(audio) - round(step_s * SAMPLE_RATE))
        stream.feed(audio[:head])
        stream.hypothesis()
        timer = CallTimer()
        timer.start()
        stream.feed(audio[head:])
        stream.hypothesis()
        costs.append(timer.engine_s())
        stream.finish()
    return statistics.median(costs)


class ScheduledUtterance:
    """One utterance, served by its Whisper engine (the primary role) or, after a miss, the
    fallback, where the fallback speaks the utterance's language."""

    def __init__(self, scheduler: Scheduler, room: str, prompt: str, terms: Sequence[str] = (),
                 language: str | None = ENGLISH, task: Task = "transcribe", candidates: Sequence[str] = ()) -> None:
        self._scheduler = scheduler
        self._candidates = tuple(candidates)
        self._room = room
        self._prompt = prompt
        self._terms = tuple(terms)
        self.language = language
        """What the utterance is in; None until detected (``detected``)."""
        self.task: Task = task
        self.engine = scheduler.engine_for(language, task)
        fallback = scheduler.fallback
        self._fallback_engine = fallback if fallback is not None and serves(fallback, language, task) else None
        if self.engine is None and self._fallback_engine is None:
            raise UnsupportedFormat(f"no loaded model can {task} {WHISPER_LANGUAGES.get(language or '', 'auto')}")
        scheduler.speaking += 1
        self._routing = scheduler.routing(room)
        route = self._routing.next_route(time.monotonic(), scheduler.health.healthy(time.monotonic()))
        if self._fallback_engine is None:
            route = Route("primary", False)
        self.role: EngineRole = route.role if self.engine is not None else "fallback"
        self._trial = route.trial
        self._audio: list[np.ndarray] = []
        """Every chunk of the utterance, so an engine that joins late catches up."""
        self._primary: RecognizerStream | None = None
        self._primary_fed = 0
        self._fallback: RecognizerStream | None = None
        self._fallback_fed = 0
        self._fallback_lock = asyncio.Lock()
        self._worst_share = 0.0

    def audio(self) -> np.ndarray:
        """The utterance's audio given to ``step`` and ``finish`` so far."""
        return np.concatenate(self._audio) if self._audio else np.zeros(0, dtype=np.float32)

    def abandon(self) -> None:
        """End the utterance without a final decode (it held no speech)."""
        self._scheduler.speaking -= 1

    def detected(self, language: str) -> None:
        """The room's language locked while this utterance, opened to detect it, was spoken: its
        next call decodes all its audio again in ``language`` (never while a call runs: the
        transcriber awaits each)."""
        if self.language is None and self.engine is not None and serves(self.engine, language, self.task):
            self.language, self._primary, self._primary_fed = language, None, 0

    async def step(self, audio: np.ndarray, newest_arrival: float, settled: str = "") -> Hypothesis:
        """Feed new audio; the hypothesis for all audio so far (``settled``: see ``RecognizerStream``)."""
        return await self._call("step", audio, newest_arrival + self._scheduler.options.latency_budget_s, settled)

    async def finish(self, audio: np.ndarray) -> Hypothesis:
        """Feed the last audio; the final hypothesis (the endpoint was just detected)."""
        try:
            hypothesis = await self._call("finish", audio,
                                          time.monotonic() + self._scheduler.options.latency_budget_s)
        finally:
            self._scheduler.speaking -= 1
        if self.role == "primary" and self._routing.record_utterance(self._worst_share):
            self._scheduler.health.succeeded()
        return hypothesis

    async def _call(self, kind: Literal["step", "finish"], audio: np.ndarray, deadline: float,
                    settled: str = "") -> Hypothesis:
        self._audio.append(audio)
        scheduler = self._scheduler
        timer = CallTimer()
        run = functools.partial(self._run_primary, kind, len(self._audio), timer, settled)
        if self.role == "fallback":
            return await self._run_fallback(kind)
        if self._fallback_engine is None:
            return await self._without_fallback(kind, deadline, run, timer)
        droppable = kind == "step" and not self._trial
        primary = scheduler.executor.submit(deadline, run, scheduler.expected(self.engine) if droppable else 0.0,
                                            urgent=kind == "finish", timer=timer)
        standby = asyncio.ensure_future(self._feed_fallback()) if self._trial else None
        await asyncio.wait({primary}, timeout=max(0.0, deadline - time.monotonic()))
        if not self._trial:  # a trial must meet its deadlines, busy machine or not
            await self._bear_with_the_machine(primary, timer, kind)
        if primary.done() and primary.exception() is None:
            return primary.result()
        self._demote(primary, kind)
        if standby is not None:
            await standby
        # Whichever comes first: the late primary (if it is still running) or the fallback.
        fallback = asyncio.ensure_future(self._run_fallback(kind))
        if primary.done():
            return await fallback
        done, _ = await asyncio.wait({primary, fallback}, return_when=asyncio.FIRST_COMPLETED)
        if primary in done and primary.exception() is None:
            fallback.add_done_callback(_ignore_result)
            return primary.result()
        return await fallback

    async def _without_fallback(self, kind: Literal["step", "finish"], deadline: float,
                                run: Callable[[], Hypothesis], timer: CallTimer) -> Hypothesis:
        """Nothing to fall back to (no fallback engine, or none for this language): a final is
        waited for, however late; a partial that cannot meet its deadline is skipped
        (``StepSkipped``: the next step covers its audio) and the room counts as degraded."""
        scheduler = self._scheduler
        expected = scheduler.expected(self.engine) if kind == "step" else 0.0
        try:
            return await scheduler.executor.submit(deadline, run, expected, urgent=kind == "finish", timer=timer)
        except Late:
            assert self.engine is not None
            scheduler.metrics.deadline_misses.labels(self.engine.name, "skipped").inc()
            self._routing.skipped(time.monotonic())
            raise StepSkipped() from None

    async def _bear_with_the_machine(self, primary: asyncio.Future[Hypothesis], timer: CallTimer,
                                     kind: Literal["step", "finish"]) -> None:
        """Past its deadline, a call late only because the machine is busy keeps the primary: a
        partial that has not started is skipped (``StepSkipped``: the next step covers its audio),
        a started call or a final is waited for, a budget at a time, for as long as its lateness
        is the machine's. Returns when the call is done or has become late on the engine's time."""
        scheduler = self._scheduler
        reason: str | None = None
        while self._machine_late(primary, timer, kind):
            if kind == "step" and timer.withdraw():
                primary.cancel()
                scheduler.metrics.deadline_misses.labels(scheduler.primary_name, "skipped").inc()
                raise StepSkipped()
            reason = reason or ("queued" if timer.started is None else "cpu")
            await asyncio.wait({primary}, timeout=scheduler.options.latency_budget_s)
        if reason is not None:
            scheduler.metrics.deadline_misses.labels(scheduler.primary_name, reason).inc()

    def _machine_late(self, primary: asyncio.Future[Hypothesis], timer: CallTimer,
                      kind: Literal["step", "finish"]) -> bool:
        scheduler = self._scheduler
        budget, margin = scheduler.options.latency_budget_s, scheduler.options.trial_margin
        if primary.done():  # a partial dropped as late: the queue's fault if the engine's time fits
            error = None if primary.cancelled() else primary.exception()
            return kind == "step" and isinstance(error, Late) and machine_late(scheduler.expected(self.engine), budget,
                                                                               margin)
        return machine_late(timer.engine_s(), budget, margin)

    def _run_primary(self, kind: Literal["step", "finish"], upto: int, timer: CallTimer, settled: str) -> Hypothesis:
        """On an executor thread: feed the audio up to chunk ``upto`` and decode with the utterance's engine."""
        scheduler, engine = self._scheduler, self.engine
        assert engine is not None
        started = time.monotonic()
        try:
            if self._primary is None:
                self._primary = engine.open_stream(self._prompt, self._terms, self.language, self.task,
                                                   self._candidates)
            for chunk in self._audio[self._primary_fed : upto]:
                if len(chunk):
                    self._primary.feed(chunk)
            self._primary_fed = upto
            hypothesis = self._primary.hypothesis(settled) if kind == "step" else self._primary.finish()
        except Exception as error:
            raise _Failed(error) from error
        scheduler.metrics.step_seconds.labels(engine.name, kind).observe(time.monotonic() - started)
        engine_s = timer.engine_s()
        scheduler.measured(engine_s, engine)
        self._worst_share = max(self._worst_share, engine_s / scheduler.options.latency_budget_s)
        return hypothesis

    def _demote(self, primary: asyncio.Future[Hypothesis], kind: str) -> None:
        """The primary missed: this utterance and its room continue on the fallback."""
        scheduler = self._scheduler
        error = primary.exception() if primary.done() else None
        if isinstance(error, _Failed):
            scheduler.primary_failed(self._room, error.__cause__ or error)
            reason = "error"
        elif isinstance(error, Late):
            reason = "predicted"
        else:
            reason = "late"
            primary.add_done_callback(_ignore_result)
        scheduler.metrics.deadline_misses.labels(scheduler.primary_name, reason).inc()
        self._routing.record_miss(time.monotonic())
        self.role = "fallback"
        log.info("room %s: primary missed the deadline of a %s (%s); the utterance continues on the fallback",
                 self._room, kind, reason, extra={"room": self._room})

    async def _feed_fallback(self) -> None:
        """Bring the fallback stream up to date with the utterance's audio."""
        async with self._fallback_lock:
            pending = self._audio[self._fallback_fed :]
            self._fallback_fed = len(self._audio)
            await asyncio.get_running_loop().run_in_executor(self._scheduler.fallback_executor,
                                                             self._fallback_feed, pending)

    def _fallback_feed(self, chunks: list[np.ndarray]) -> None:
        if self._fallback_engine is None:
            raise RuntimeError("no fallback engine for this utterance")
        if self._fallback is None:
            self._fallback = self._fallback_engine.open_stream(self._prompt, self._terms)
        if chunks:
            self._fallback.feed(np.concatenate(chunks))

    async def _run_fallback(self, kind: Literal["step", "finish"]) -> Hypothesis:
        await self._feed_fallback()
        scheduler, engine = self._scheduler, self._fallback_engine
        started = time.monotonic()
        stream = self._fallback
        assert stream is not None and engine is not None
        call = stream.hypothesis if kind == "step" else stream.finish
        hypothesis = await asyncio.get_running_loop().run_in_executor(scheduler.fallback_executor, call)
        scheduler.metrics.step_seconds.labels(engine.name, kind).observe(time.monotonic() - started)
        scheduler.metrics.fallback_steps.labels(kind).inc()
        return hypothesis


class _Failed(Exception):
    """The primary engine raised; the cause is the engine's exception."""


def _ignore_result(future: asyncio.Future[Hypothesis]) -> None:
    if not future.cancelled():
        future.exception()
