"""Fan-out: every caption event of a room to every viewer, never waiting.

Each viewer has its own ``ViewerQueue``. Publishing encodes an event once and
only appends it to queues, so one slow phone on bad Wi-Fi never delays the
projector (the same rule as websockets' ``broadcast()``). A queued partial is
replaced by a newer event of its segment (the viewer only needs the latest),
and finals are never dropped.

Flow control. A viewer is *behind* by the age of the oldest caption it has
not got: still queued here, or written to its connection and not confirmed.
A viewer that acknowledges what it renders (the pages do) confirms with its
acks. For one that does not, a ping is the probe: the WebSocket endpoint
answers it (RFC 6455 §5.5.2) after it has taken every frame sent before it,
so a pong confirms those frames, through any proxy and whatever the kernel
buffers hold. A periodic sweep (``Subscriber.check``) sends that ping once
the oldest unconfirmed caption is ``PROBE_AT`` of the bound old, and closes
a viewer that is further behind than the bound with ``ViewerTooSlow``; it
resumes with ``after_seq`` and loses nothing. Publishing and sweeping make
no system call per event.

Viewers send acks, ``{"type": "ack", "seq": N, "age_ms": M}`` (they
rendered event ``N``, ``M`` ms ago), and the audience's feedback (flags and
ratings), read by the sans-I/O ``ViewerInbox``.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

from livecap.captions import CaptionEvent, Track
from livecap.errors import (
    InvalidRequest,
    LivecapError,
    ProtocolError,
    RateLimited,
    TooManyRequests,
    ViewerTooSlow,
    json_object,
    shown,
)

try:
    import fcntl
    import termios

    SIOCOUTQ: int | None = termios.TIOCOUTQ
    """Linux: bytes in a TCP socket's send queue not yet acknowledged by the peer (tcp(7))."""
except (ImportError, AttributeError):  # not a Unix with TIOCOUTQ: asyncio's buffer alone
    SIOCOUTQ = None

PROBE_AT = 0.25
"""A viewer that does not ack is pinged when its oldest unconfirmed caption
is this share of the bound old: the pong may take the rest of the bound."""


def unsent_bytes(transport: asyncio.WriteTransport) -> int:
    """Bytes written to a connection that its peer's TCP has not acknowledged:
    asyncio's write buffer plus the kernel's send queue (``SIOCOUTQ``). Where
    the kernel does not say, asyncio's buffer alone. Says where a slow
    viewer's backlog sits: here (its network) or with it (its reader)."""
    buffered = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if SIOCOUTQ is None or sock is None:
        return buffered
    try:
        queued: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return buffered
    return buffered + queued


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A caption event on its way to viewers."""

    event: CaptionEvent
    text: str
    """The event's JSON, encoded once for every viewer."""
    since: float
    """Monotonic time from which a viewer lacks it: its publication, or the
    viewer's connection for the history replayed to it."""

    @classmethod
    def of(cls, event: CaptionEvent, since: float) -> Outgoing:
        return cls(event, json.dumps(event.to_message()), since)


class ViewerQueue:
    """What one viewer has not got yet (pure: time and confirmations are passed in).

    A caption waits in the queue until the writer takes it, then among the
    *unconfirmed* until the viewer acks it or, for a viewer that never acked
    anything live, until a pong confirms it. Captions are taken and written
    in publication (and seq) order, so the oldest one not confirmed is
    always the first unconfirmed, or else the first queued.
    """

    def __init__(self, max_backlog: int = 200, replay: Iterable[Outgoing] = ()) -> None:
        self.max_backlog = max_backlog
        self._replay = deque(replay)
        """History sent on connect, ahead of live events and outside ``max_backlog``."""
        self._queued: deque[Outgoing] = deque()
        self._unconfirmed: deque[tuple[int, float]] = deque()
        """(seq, since) of the captions written, oldest first."""
        self.acked: int | None = None
        """Newest seq the viewer acknowledged; None until it acks a live event."""
        self.coalesced = 0
        """Partials dropped because a newer event of their segment replaced them."""

    def __len__(self) -> int:
        return len(self._replay) + len(self._queued)

    def push(self, item: Outgoing) -> int:
        """Queue ``item``; returns how many queued partials it replaced."""
        segment, kept = item.event.segment, self._queued
        if any(e.event.segment == segment and e.event.kind == "partial" for e in kept):
            kept = deque(e for e in kept if not (e.event.segment == segment and e.event.kind == "partial"))
        if len(kept) >= self.max_backlog:
            raise ViewerTooSlow(f"more than {self.max_backlog} captions waiting; reconnect with after_seq")
        coalesced = len(self._queued) - len(kept)
        self.coalesced += coalesced
        kept.append(item)
        self._queued = kept
        return coalesced

    def take(self) -> Outgoing | None:
        """The next caption to write, oldest first; the writer then calls ``written_out``."""
        if self._replay:
            return self._replay.popleft()
        return self._queued.popleft() if self._queued else None

    def written_out(self, item: Outgoing) -> None:
        """``item``'s frame went into the connection."""
        self._unconfirmed.append((item.event.seq, item.since))

    @property
    def last_unconfirmed(self) -> int | None:
        """Seq of the newest caption written and not confirmed."""
        return self._unconfirmed[-1][0] if self._unconfirmed else None

    def acknowledged(self, seq: int) -> None:
        """The viewer rendered every caption up to ``seq``: from now on only its acks confirm."""
        self.acked = max(seq, self.acked or 0)
        self._confirm(self.acked)

    def received(self, seq: int) -> None:
        """The viewer's endpoint took every caption written up to ``seq`` (a
        pong says so). Ignored for a viewer that acks: it has to render, not only receive."""
        if self.acked is None:
            self._confirm(seq)

    def _confirm(self, seq: int) -> None:
        while self._unconfirmed and self._unconfirmed[0][0] <= seq:
            self._unconfirmed.popleft()

    def behind(self, now: float) -> float:
        """Age of the oldest caption not confirmed (0 when there is none)."""
        if self._unconfirmed:
            return now - self._unconfirmed[0][1]
        if self._replay:
            return now - self._replay[0].since
        return now - self._queued[0].since if self._queued else 0.0


class Subscriber:
    """A viewer's queue plus the means to wake its writer, to probe it and to have it closed."""

    def __init__(self, max_backlog: int = 200, sent_seq: int = 0, replay: Iterable[Outgoing] = (),
                 ping: Callable[[bytes], None] | None = None,
                 notify: Callable[[dict[str, Any]], None] | None = None, track: Track | None = None) -> None:
        """``track``: the events it is given (``CaptionEvent.on_track``; ``replay`` must hold only
        those); None: every event (the publisher's, which sees translations too)."""
        replay = list(replay)
        self.track = track
        self.queue = ViewerQueue(max_backlog, replay)
        self.notify = notify or (lambda message: None)
        """Sends a message about the room that is no caption (``{"type": "room", ...}``; a task, never blocks)."""
        self.ready = asyncio.Event()
        self.ready.set()
        self._closing = asyncio.Event()
        self._ping = ping
        """Sends a ping with the payload (a task; never blocks); None: no probes."""
        self._probe: bytes | None = None
        """Payload of the ping in flight: the seq of the last caption written before it."""
        self.closing: LivecapError | None = None
        """Why the server is closing this viewer; nothing more is queued or written."""
        self.sent_seq = sent_seq
        """Highest seq written to the viewer (start: the room's seq when it subscribed)."""
        self._queued_seq = max((item.event.seq for item in replay), default=sent_seq)
        """Highest seq queued for the viewer: events of another track are not."""
        self.closed = False
        self._progress = asyncio.Condition()

    def deliver(self, item: Outgoing) -> int:
        """Queue ``item`` if it is on the viewer's track; returns how many queued partials it replaced."""
        if self.closing is not None or (self.track is not None and not item.event.on_track(self.track)):
            return 0
        self._queued_seq = item.event.seq
        coalesced = 0
        try:
            coalesced = self.queue.push(item)
        except ViewerTooSlow as error:
            self.disconnect(error)
        self.ready.set()
        return coalesced

    def disconnect(self, error: LivecapError) -> None:
        """Have the viewer closed with ``error`` (too slow, the room was ended …); the first reason counts."""
        if self.closing is None:
            self.closing = error
            self.ready.set()
            self._closing.set()

    async def closed_by_server(self) -> LivecapError:
        """Why the server closes the viewer, once it does (see ``disconnect``)."""
        await self._closing.wait()
        assert self.closing is not None
        return self.closing

    def acknowledged(self, seq: int) -> None:
        self.queue.acknowledged(seq)

    def ponged(self, payload: bytes) -> None:
        """A pong: if it answers the probe, the captions written before the probe arrived."""
        if self._probe is not None and payload == self._probe:
            self._probe = None
            self.queue.received(int(payload))

    def check(self, now: float, max_lag_s: float) -> None:
        """Close the viewer with ``ViewerTooSlow`` if the oldest caption it has
        not confirmed is older than ``max_lag_s``; probe one that does not ack
        once that caption is ``PROBE_AT`` of it old."""
        if self.closing is not None:
            return
        lag = self.queue.behind(now)
        if lag > max_lag_s:
            self.disconnect(ViewerTooSlow(f"the oldest caption not delivered is {lag:.1f} s old (the limit is "
                                          f"{max_lag_s:g} s); reconnect with after_seq"))
        elif (lag > max_lag_s * PROBE_AT and self._ping is not None and self._probe is None
              and self.queue.acked is None and (seq := self.queue.last_unconfirmed) is not None):
            self._probe = str(seq).encode()
            self._ping(self._probe)

    async def next(self) -> Outgoing | None:
        """The next caption to write; None once the viewer is being closed."""
        while self.closing is None:
            if (item := self.queue.take()) is not None:
                self.queue.written_out(item)  # recorded first: the frame is in the transport before any await
                return item
            self.ready.clear()
            await self.ready.wait()
        return None

    async def mark_sent(self, seq: int | None = None, closed: bool = False) -> None:
        """Called by the writer after an event went out, or when it stops."""
        async with self._progress:
            self.sent_seq = max(self.sent_seq, seq or 0)
            self.closed = self.closed or closed
            self._progress.notify_all()

    async def wait_sent(self, seq: int) -> None:
        """Wait until the event ``seq`` and all before it on the viewer's track went out (the newest
        event is never coalesced, so it does go out), or the writer stopped."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.sent_seq >= min(seq, self._queued_seq) or self.closed
                                          or self.closing is not None)


class Broadcaster:
    """The subscribers of one room."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()

    def publish(self, event: CaptionEvent, now: float) -> int:
        """Queue ``event`` for every subscriber; returns the partials it replaced in their queues."""
        item = Outgoing.of(event, now)
        return sum(subscriber.deliver(item) for subscriber in list(self.subscribers))


@dataclass(frozen=True, slots=True)
class ViewerAck:
    seq: int
    age_s: float
    """How long before sending the ack the viewer rendered the event."""


@dataclass(frozen=True, slots=True)
class ViewerFlag:
    """"Caption wrong?": the viewer flags the line it saw as event ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class ViewerRating:
    """"How were the captions?": 1-5 stars."""

    stars: int


ViewerMessage = ViewerAck | ViewerFlag | ViewerRating


class ViewerInbox:
    """Checks what one viewer sends (sans-I/O: text in, messages out).

    Three messages are allowed: ``{"type": "ack", "seq": N}`` (with an
    optional ``"age_ms"``), ``{"type": "flag", "seq": N}`` and ``{"type":
    "rating", "stars": 1-5}``. Text that is not a JSON object raises
    ``InvalidJson``, an unknown type or a bad ack ``ProtocolError``, the same
    as on the ingest socket; these close the connection. Feedback is the
    audience's, so a bad flag or rating only refuses that message
    (``InvalidRequest``), and so do more than ``feedback_burst`` at once or
    ``feedback_rate`` a second (``TooManyRequests``); the viewer keeps its
    captions. Pages ack at most twice a second; a viewer sending more than
    ``burst`` messages of any kind at once or ``rate`` a second sustained (token
    buckets) raises ``RateLimited``. An ack is returned only for an event
    sent live on this connection (above ``live_from``: finals replayed on
    connect are old news) and newer than the last one, so a repeated or
    made-up seq measures nothing.
    """

    def __init__(self, live_from: int, rate: float = 4.0, burst: float = 10.0, feedback_rate: float = 0.5,
                 feedback_burst: float = 5.0) -> None:
        self.acked = live_from
        self._messages = TokenBucket(rate, burst)
        self._feedback = TokenBucket(feedback_rate, feedback_burst)

    def receive_bytes(self, data: bytes, now: float) -> ViewerMessage | None:
        raise ProtocolError("viewers send only JSON text messages")

    def receive_text(self, text: str, now: float, sent_seq: int) -> ViewerMessage | None:
        """The message to act on, or None; ``sent_seq`` is the newest seq sent to this viewer."""
        if not self._messages.take(now):
            raise RateLimited(f"more than {self._messages.rate:g} messages a second from a viewer")
        message = json_object(text)
        match message.get("type"):
            case "ack":
                return self._ack(message, sent_seq)
            case "flag" | "rating" as kind:
                if not self._feedback.take(now):
                    raise TooManyRequests(f"at most {self._feedback.burst:g} flags and ratings at once, then one "
                                          f"every {1 / self._feedback.rate:g} s")
                return flag_of(message) if kind == "flag" else rating_of(message)
            case other:
                raise ProtocolError(f"viewers may send ack, flag or rating messages, not {shown(other)}")

    def _ack(self, message: dict[str, Any], sent_seq: int) -> ViewerAck | None:
        seq, age_ms = message.get("seq"), message.get("age_ms", 0)
        if not _is_seq(seq):
            raise ProtocolError("ack.seq must be a non-negative integer")
        if not isinstance(age_ms, int | float) or isinstance(age_ms, bool) or not 0 <= age_ms < math.inf:
            raise ProtocolError("ack.age_ms must be a non-negative number")
        if seq <= self.acked or seq > sent_seq:
            return None
        self.acked = seq
        return ViewerAck(seq, age_ms / 1000)


def flag_of(message: dict[str, Any]) -> ViewerFlag:
    """A viewer's flag (``{"seq": N}``), or ``InvalidRequest``; also what another node forwards."""
    seq = message.get("seq")
    if not _is_seq(seq):
        raise InvalidRequest("flag.seq must be the seq of a final or correction")
    return ViewerFlag(seq)


def rating_of(message: dict[str, Any]) -> ViewerRating:
    """A viewer's rating (``{"stars": 1-5}``), or ``InvalidRequest``; also what another node forwards."""
    stars = message.get("stars")
    if not isinstance(stars, int) or isinstance(stars, bool) or not 1 <= stars <= 5:
        raise InvalidRequest("rating.stars must be a whole number from 1 to 5")
    return ViewerRating(stars)


def _is_seq(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


class TokenBucket:
    """``burst`` at once, then ``rate`` a second."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._updated: float | None = None

    def take(self, now: float) -> bool:
        if self._updated is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
