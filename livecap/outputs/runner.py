"""Room outputs at work: one task per output, fed by the room's caption events.

An output is a subscriber of its room like a viewer, but it never slows the
room: publishing only appends to the output's queue (``Outbox``), and the
output's own task delivers from it, retrying while the destination fails.
The hub keeps the outputs apart from the rooms' life in memory, so a room
that empties still gets its last lines delivered; when an operator changes an
output (a new URL, a fixed password) its queue carries over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp

from livecap.captions import CaptionEvent
from livecap.metrics import Metrics
from livecap.outputs.config import OutputConfig
from livecap.outputs.delivery import Outbox
from livecap.outputs.formats import Formatter
from livecap.outputs.senders import DeliveryFailed, HttpSender, ObsSender, Sender, Undeliverable

log = logging.getLogger(__name__)
T = TypeVar("T")
HEALTH_LEVELS = {"idle": 0, "sending": 0, "ok": 0, "retrying": 1, "failing": 2}
"""``livecap_output_state``: 0 fine, 1 retrying, 2 failing."""
DRAIN_S = 3.0
"""At shutdown, how long outputs may go on delivering what they hold."""


class OutputWorker:
    """Delivers one output's queue in order, one request at a time."""

    def __init__(self, room: str, config: OutputConfig, formatter: Formatter, sender: Sender,
                 metrics: Metrics) -> None:
        self.room, self.config = room, config
        self.label = metrics.room(room)
        """The room's metrics label: a room an operator gave outputs is worth a name of its own."""
        self.formatter = formatter
        self.sender = sender
        self.outbox = Outbox()
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"output-{room}-{config.name}")

    def publish(self, event: CaptionEvent, now: float, spoken: float) -> None:
        if not self.config.enabled:
            return
        for item in self.formatter.items(event, now, spoken):
            if dropped := self.outbox.push(item):
                self._count_dropped("overflow", dropped)
        self._wake.set()

    def replace(self, config: OutputConfig, formatter: Formatter,
                sender: Sender) -> Sender:
        """The operator changed the output (same kind): what is queued goes to the new destination.
        Returns the old sender, to close."""
        old = self.sender
        self.config, self.formatter, self.sender = config, formatter, sender
        self._wake.set()  # a back-off in progress ends now
        return old

    async def stop(self, drain_s: float = 0.0) -> int:
        """Deliver for up to ``drain_s`` more, then stop; returns the items left undelivered (counted)."""
        if drain_s > 0 and self.outbox.queue:
            deadline = time.monotonic() + drain_s
            while self.outbox.queue and time.monotonic() < deadline and not self._task.done():
                await asyncio.sleep(0.05)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.sender.close()
        with contextlib.suppress(KeyError):  # an output that is gone has no state (nor a stale "failing")
            self.metrics.output_state.remove(*self._labels)
        left = len(self.outbox.queue)
        if left:
            self._count_dropped("stopped", left)
            log.warning("output %s of room %s stopped with %d lines undelivered", self.config.name, self.room, left)
        return left

    def state(self, now: float) -> dict[str, Any]:
        return {**self.config.shown(), **self.outbox.state(now)}

    async def _run(self) -> None:
        outbox = self.outbox
        numbered: Sender | None = None
        while True:
            if not self.config.enabled or not outbox.queue:  # paused by the operator, or nothing to send
                self._wake.clear()
                await self._wake.wait()
                continue
            if numbered is not self.sender and outbox.queue[0].number is None:
                numbered = self.sender  # a new destination: go on from the number it last took, if it says
                if (last := await self._guarded(self.sender.last_number())) is not None:
                    outbox.counter = last
            item = outbox.head()
            assert item is not None
            try:
                await self._guarded(self.sender.send(item))
            except Undeliverable as error:
                outbox.abandoned(str(error))
                self._count_dropped("undeliverable", 1)
                self._set_state()
                continue
            except DeliveryFailed as error:
                delay = outbox.failed(time.monotonic(), str(error))
                self.metrics.output_failures.labels(*self._labels).inc()
                self._set_state()
                if item.attempts == 1:
                    log.warning("output %s of room %s: %s (retrying)", self.config.name, self.room, error)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            now = time.monotonic()
            outbox.delivered(now)
            self.metrics.output_sent.labels(*self._labels).inc()
            self.metrics.output_lag_seconds.labels(self.config.kind).observe(now - item.since)
            self._set_state()
            if pause := self.sender.pause_after(item):
                await asyncio.sleep(pause)

    async def _guarded(self, call: Coroutine[Any, Any, T]) -> T:
        """``call``, with any error a sender did not foresee turned into a failure to retry: the
        output goes on, and the operator sees the error (a bug in a destination's library must not
        end its delivery silently)."""
        try:
            return await call
        except (DeliveryFailed, asyncio.CancelledError):
            raise
        except Exception as error:
            log.exception("output %s of room %s: unexpected error", self.config.name, self.room)
            raise DeliveryFailed(f"unexpected error: {type(error).__name__}: {error}"[:200]) from None

    @property
    def _labels(self) -> tuple[str, str, str]:
        return self.label, self.config.name, self.config.kind

    def _set_state(self) -> None:
        self.metrics.output_state.labels(*self._labels).set(HEALTH_LEVELS[self.outbox.health(time.monotonic())])

    def _count_dropped(self, reason: str, count: int) -> None:
        self.metrics.output_dropped.labels(*self._labels, reason).inc(count)


class OutputHub:
    """Every room's outputs; one HTTP client session for them all."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.workers: dict[str, dict[str, OutputWorker]] = {}
        """By room, by output name."""
        self._configs: dict[str, tuple[OutputConfig, ...]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closing: set[asyncio.Task[Any]] = set()
        """Stops of removed outputs and closes of replaced senders, under way."""

    def publish(self, room: str, configs: tuple[OutputConfig, ...], event: CaptionEvent, now: float,
                spoken: float) -> None:
        """Queue ``event`` (its first word spoken at Unix time ``spoken``) for each of the room's
        outputs (``configs``, as its settings say now)."""
        if configs or room in self.workers:
            for worker in self.configure(room, configs).values():
                worker.publish(event, now, spoken)

    def follow(self, settings: Callable[[str], tuple[OutputConfig, ...]]) -> None:
        """Apply what the settings say now (``settings``: a room's outputs) to every room with
        outputs at work: a change made with ``livecap settings`` takes effect without a caption."""
        for room in list(self.workers):
            self.configure(room, settings(room))

    def configure(self, room: str, configs: tuple[OutputConfig, ...]) -> dict[str, OutputWorker]:
        """Make the room's workers match ``configs``: start new outputs, hand changed ones their new
        destination (their queue kept unless the kind changed), stop removed ones."""
        workers = self.workers.setdefault(room, {})
        if self._configs.get(room) == configs:
            return workers
        self._configs[room] = configs
        wanted = {config.name: config for config in configs}
        for name in [name for name, worker in workers.items()
                     if name not in wanted or wanted[name].kind != worker.config.kind]:
            self._later(workers.pop(name).stop())
        for name, config in wanted.items():
            if name not in workers:
                formatter = Formatter(config)
                workers[name] = OutputWorker(room, config, formatter, self._sender(config, formatter),
                                             self.metrics)
            elif workers[name].config != config:
                formatter = workers[name].formatter.changed(config)
                self._later(workers[name].replace(config, formatter, self._sender(config, formatter)).close())
        if not workers:
            del self.workers[room], self._configs[room]
        return workers

    def state(self, room: str, configs: tuple[OutputConfig, ...]) -> list[dict[str, Any]]:
        """Each configured output with its health (an output not started yet: idle)."""
        now, workers = time.monotonic(), self.workers.get(room, {})
        return [workers[c.name].state(now) if c.name in workers and workers[c.name].config == c
                else {**c.shown(), **Outbox().state(now)} for c in configs]

    def _later(self, closing: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _sender(self, config: OutputConfig, formatter: Formatter) -> Sender:
        if config.kind == "obs":
            return ObsSender(config)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return HttpSender(self._session, formatter)

    async def close(self, drain_s: float = DRAIN_S) -> int:
        """Stop every output after up to ``drain_s`` of delivering; returns the lines left undelivered."""
        workers = [worker for room in self.workers.values() for worker in room.values()]
        self.workers.clear()
        self._configs.clear()
        left = sum(await asyncio.gather(*(worker.stop(drain_s) for worker in workers)))
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        return left
