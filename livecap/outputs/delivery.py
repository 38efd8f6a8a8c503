"""What an output has yet to deliver, and how it is doing (pure: time is passed in).

Each output delivers in order, one request at a time, from its own bounded
queue: a destination that is down or slow holds up only itself. Every
failure is retried (with exponential back-off up to ``MAX_BACKOFF_S``; Zoom
asks for retries of every status, YouTube for retries without a new
``seq``), so a destination that comes back gets every line it missed. A
queue that still overflows drops its oldest line and counts it: the
operator sees the loss, it is never silent. Items that only matter until
a newer one comes (an OBS text source's text) replace the one waiting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_QUEUED = 1000
"""Lines an output holds for a destination that is down: over an hour of speech."""
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
FAILING_AFTER_S = 10.0
"""An output retrying for this long is shown as failing rather than retrying."""

Health = Literal["idle", "sending", "ok", "retrying", "failing"]


@dataclass(slots=True)
class Item:
    """One request's worth of captions for a destination."""

    payload: Any
    """What the destination's sender needs (text, a caption event's message …)."""
    seqs: tuple[int, ...]
    """The caption events it carries."""
    since: float
    """Monotonic time the oldest of them was published: lag is measured from here."""
    replaces: str | None = None
    """Items with the same key replace each other while waiting (None: never replaced)."""
    attempts: int = 0
    number: int | None = None
    """The destination's request counter (YouTube's and Zoom's ``seq``), fixed at the first
    attempt so that retries repeat it."""


@dataclass
class Outbox:
    """An output's queue and health."""

    max_queued: int = MAX_QUEUED
    queue: deque[Item] = field(default_factory=deque)
    sent = 0
    failures = 0
    """Attempts that failed (each retry counts)."""
    dropped = 0
    """Items given up: the queue overflowed, or one could never be delivered (``abandoned``)."""
    last_error: str | None = None
    failing_since: float | None = None
    """When the current run of failures began; None after a success."""
    last_success: float | None = None
    counter = 0
    """The last request number given out."""

    def push(self, item: Item) -> int:
        """Queue ``item`` behind the others, in place of a waiting item it replaces (not the one
        in flight, the head); returns how many items the overflow dropped."""
        if item.replaces is not None:
            for index, waiting in enumerate(self.queue):
                if index > 0 and waiting.replaces == item.replaces:
                    item.since = min(item.since, waiting.since)
                    del self.queue[index]
                    break
        self.queue.append(item)
        dropped = 0
        while len(self.queue) > self.max_queued:
            del self.queue[1 if self.queue[0].attempts else 0]  # not the one in flight
            dropped += 1
        self.dropped += dropped
        if dropped:
            self.last_error = f"queue full: {self.dropped} lines dropped"
        return dropped

    def head(self) -> Item | None:
        """The item to (re)send, numbered on its first attempt."""
        if not self.queue:
            return None
        item = self.queue[0]
        if item.number is None:
            self.counter += 1
            item.number = self.counter
        item.attempts += 1
        return item

    def delivered(self, now: float) -> Item:
        """The head went through."""
        self.sent += 1
        self.failing_since, self.last_success = None, now
        return self.queue.popleft()

    def abandoned(self, error: str) -> Item:
        """The head cannot be delivered ever (``senders.Undeliverable``): it is dropped, and counted."""
        self.dropped += 1
        self.last_error = error
        self.failing_since = None  # the destination answered: it works, it only cannot use this
        return self.queue.popleft()

    def failed(self, now: float, error: str) -> float:
        """The head's attempt failed; returns how long to wait before the next."""
        self.failures += 1
        self.last_error = error
        if self.failing_since is None:
            self.failing_since = now
        attempts: int = self.queue[0].attempts if self.queue else 1
        return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** (attempts - 1))

    def health(self, now: float) -> Health:
        if self.failing_since is not None:
            return "failing" if now - self.failing_since >= FAILING_AFTER_S else "retrying"
        if self.last_success is not None:
            return "ok"
        return "sending" if self.queue else "idle"

    def state(self, now: float) -> dict[str, Any]:
        """For the dashboard and ``/operator/rooms``."""
        return {"state": self.health(now), "queued": len(self.queue), "sent": self.sent, "failures": self.failures,
                "dropped": self.dropped, "last_error": self.last_error,
                "last_success_s": None if self.last_success is None else round(now - self.last_success, 1)}
