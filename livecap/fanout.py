"""Fan-out: every caption event of a room to every viewer, never waiting.

Each viewer has its own ``ViewerQueue``. Publishing only appends to queues,
so one slow phone on bad Wi-Fi never delays the projector (the same rule as
websockets' ``broadcast()``). A queued partial is replaced by a newer event
of its segment (the viewer only needs the latest), finals are never dropped,
and a viewer whose backlog of finals grows past the limit is disconnected
with ``ViewerTooSlow``; it resumes with ``after_seq`` and loses nothing.

Viewers send one kind of message, ``{"type": "ack", "seq": N, "age_ms": M}``
(they rendered event ``N``, ``M`` ms ago), read by the sans-I/O
``ViewerInbox``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from livecap.captions import CaptionEvent
from livecap.errors import LivecapError, ProtocolError, RateLimited, ViewerTooSlow, json_object, shown


class ViewerQueue:
    """Pending events of one viewer (pure, no I/O)."""

    def __init__(self, max_backlog: int = 200) -> None:
        self.max_backlog = max_backlog
        self._events: list[CaptionEvent] = []
        self.coalesced = 0
        """Partials dropped because a newer event of their segment replaced them."""

    def __len__(self) -> int:
        return len(self._events)

    def push(self, event: CaptionEvent) -> int:
        """Queue ``event``; returns how many queued partials it replaced."""
        kept = [e for e in self._events if not (e.kind == "partial" and e.segment == event.segment)]
        coalesced = len(self._events) - len(kept)
        self.coalesced += coalesced
        kept.append(event)
        if len(kept) > self.max_backlog:
            raise ViewerTooSlow(f"more than {self.max_backlog} captions waiting; reconnect with after_seq")
        self._events = kept
        return coalesced

    def pop_all(self) -> list[CaptionEvent]:
        events, self._events = self._events, []
        return events


class Subscriber:
    """A viewer's queue plus the means to wake its writer and to drop it."""

    def __init__(self, on_close: Callable[[LivecapError], None], max_backlog: int = 200,
                 sent_seq: int = 0) -> None:
        self.queue = ViewerQueue(max_backlog)
        self.ready = asyncio.Event()
        self._on_close = on_close
        """Closes the viewer's connection with the error (a task; never blocks)."""
        self.overflowed = False
        self.sent_seq = sent_seq
        """Highest seq written to the viewer (start: the room's seq when it subscribed)."""
        self.closed = False
        self._progress = asyncio.Condition()

    def deliver(self, event: CaptionEvent) -> int:
        """Queue ``event``; returns how many queued partials it replaced."""
        if self.overflowed:
            return 0
        coalesced = 0
        try:
            coalesced = self.queue.push(event)
        except ViewerTooSlow as error:
            self.overflowed = True
            self._on_close(error)
        self.ready.set()
        return coalesced

    def disconnect(self, error: LivecapError) -> None:
        """Drop the viewer with ``error`` (the room was ended, say)."""
        self._on_close(error)

    async def next_batch(self) -> list[CaptionEvent]:
        await self.ready.wait()
        self.ready.clear()
        return self.queue.pop_all()

    async def mark_sent(self, seq: int | None = None, closed: bool = False) -> None:
        """Called by the writer after an event went out, or when it stops."""
        async with self._progress:
            self.sent_seq = max(self.sent_seq, seq or 0)
            self.closed = self.closed or closed
            self._progress.notify_all()

    async def wait_sent(self, seq: int) -> None:
        """Wait until the event ``seq`` and all before it went out (the newest
        event is never coalesced, so it does go out), or the writer stopped."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.sent_seq >= seq or self.closed or self.overflowed)


class Broadcaster:
    """The subscribers of one room."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()

    def publish(self, event: CaptionEvent) -> int:
        """Queue ``event`` for every subscriber; returns the partials it replaced in their queues."""
        return sum(subscriber.deliver(event) for subscriber in list(self.subscribers))


@dataclass(frozen=True, slots=True)
class ViewerAck:
    seq: int
    age_s: float
    """How long before sending the ack the viewer rendered the event."""


class ViewerInbox:
    """Checks what one viewer sends (sans-I/O: text in, acks out).

    Only ``{"type": "ack", "seq": N}`` (with an optional ``"age_ms"``) is
    allowed: text that is not a JSON object raises ``InvalidJson``, any other
    message ``ProtocolError``, the same as on the ingest socket. Pages ack at
    most twice a second; a viewer sending more than ``burst`` messages at
    once or ``rate`` a second sustained (a token bucket) raises
    ``RateLimited``. An ack is returned only for an event sent live on this
    connection (above ``live_from``: finals replayed on connect are old news)
    and newer than the last one, so a repeated or made-up seq measures nothing.
    """

    def __init__(self, live_from: int, rate: float = 4.0, burst: float = 10.0) -> None:
        self.rate = rate
        self.burst = burst
        self.acked = live_from
        self._tokens = burst
        self._updated: float | None = None

    def receive_bytes(self, data: bytes, now: float) -> ViewerAck | None:
        raise ProtocolError("viewers send only JSON text messages")

    def receive_text(self, text: str, now: float, sent_seq: int) -> ViewerAck | None:
        """The ack to measure, or None; ``sent_seq`` is the newest seq sent to this viewer."""
        self._spend(now)
        message = json_object(text)
        if message.get("type") != "ack":
            raise ProtocolError(f"viewers may only send acks, not {shown(message.get('type'))}")
        seq, age_ms = message.get("seq"), message.get("age_ms", 0)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ProtocolError("ack.seq must be a non-negative integer")
        if not isinstance(age_ms, int | float) or isinstance(age_ms, bool) or not 0 <= age_ms < math.inf:
            raise ProtocolError("ack.age_ms must be a non-negative number")
        if seq <= self.acked or seq > sent_seq:
            return None
        self.acked = seq
        return ViewerAck(seq, age_ms / 1000)

    def _spend(self, now: float) -> None:
        if self._updated is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            raise RateLimited(f"more than {self.rate:g} messages a second from a viewer")
        self._tokens -= 1
