"""Fan-out: every caption event of a room to every viewer, never waiting.

Each viewer has its own ``ViewerQueue``. Publishing only appends to queues,
so one slow phone on bad Wi-Fi never delays the projector (the same rule as
websockets' ``broadcast()``). A queued partial is replaced by a newer event
of its segment (the viewer only needs the latest), finals are never dropped,
and a viewer whose backlog of finals grows past the limit is disconnected
with ``ViewerTooSlow``; it resumes with ``after_seq`` and loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from livecap.captions import CaptionEvent
from livecap.errors import ViewerTooSlow


class ViewerQueue:
    """Pending events of one viewer (pure, no I/O)."""

    def __init__(self, max_backlog: int = 200) -> None:
        self.max_backlog = max_backlog
        self._events: list[CaptionEvent] = []
        self.coalesced = 0
        """Partials dropped because a newer event of their segment replaced them."""

    def __len__(self) -> int:
        return len(self._events)

    def push(self, event: CaptionEvent) -> None:
        kept = [e for e in self._events if not (e.kind == "partial" and e.segment == event.segment)]
        self.coalesced += len(self._events) - len(kept)
        kept.append(event)
        if len(kept) > self.max_backlog:
            raise ViewerTooSlow(f"more than {self.max_backlog} captions waiting; reconnect with after_seq")
        self._events = kept

    def pop_all(self) -> list[CaptionEvent]:
        events, self._events = self._events, []
        return events


class Subscriber:
    """A viewer's queue plus the means to wake its writer and to drop it."""

    def __init__(self, on_overflow: Callable[[ViewerTooSlow], None], max_backlog: int = 200,
                 sent_seq: int = 0) -> None:
        self.queue = ViewerQueue(max_backlog)
        self.ready = asyncio.Event()
        self._on_overflow = on_overflow
        self.overflowed = False
        self.sent_seq = sent_seq
        """Highest seq written to the viewer (start: the room's seq when it subscribed)."""
        self.closed = False
        self._progress = asyncio.Condition()

    def deliver(self, event: CaptionEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.push(event)
        except ViewerTooSlow as error:
            self.overflowed = True
            self._on_overflow(error)
        self.ready.set()

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

    def publish(self, event: CaptionEvent) -> None:
        for subscriber in list(self.subscribers):
            subscriber.deliver(event)
