"""A publisher client: plays audio into a room at real-time pace.

Used by ``livecap stream``, by the ``--demo`` loop, by the end-to-end tests
and by the benchmarks, so all of them exercise the real WebSocket path.
Frames are paced by the wall clock (frame *i* leaves at ``t0 + i·frame/speed``),
not by sleeping a fixed time per frame, so pacing errors do not accumulate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import numpy as np
import websockets
from websockets.frames import CloseCode

from livecap.audio import TARGET_RATE, float_to_s16le


@dataclass
class StreamResult:
    """What the publisher saw: every message, and when each arrived."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """``time.monotonic()`` at each message's arrival."""
    audio_started: float = 0.0
    """Monotonic time at which the first audio frame was sent."""
    offset: float = 0.0
    """Room time of the first audio frame (from ``ready``): the sample sent at
    ``audio_started + t`` is at room time ``offset + t`` in captions."""
    close_code: int | None = None
    """1006 when the connection ended without a close frame (the server is gone)."""
    reconnects: list[float] = field(default_factory=list)
    """Monotonic times at which a lost connection was opened again (``reconnect``)."""
    sent_samples: int = 0
    """How far into the audio sending got."""
    resent_samples: int = 0
    """Audio sent again after reconnections: what the server had not acknowledged."""

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "caption" and m["kind"] == "final"]

    @property
    def error(self) -> dict[str, Any] | None:
        """The error event the server closed the last connection with, if any."""
        last = next((m for m in reversed(self.messages) if m.get("type") in ("error", "ready", "stopped")), None)
        return last if last is not None and last["type"] == "error" else None

    @property
    def refused(self) -> bool:
        """Closed with an error worth retrying before ``ready``: nothing was taken, playing again loses nothing."""
        return (self.error is not None and self.error["code"] in RETRYABLE
                and not any(m.get("type") == "ready" for m in self.messages))


RETRYABLE = frozenset({"server_busy", "rate_limited", "internal_error", "idle_timeout", "shutting_down"})
"""Error codes after which the same request may succeed later (client/captions.js has the same list)."""


@dataclass
class Backoff:
    """Delays between attempts: exponential with full jitter, a random delay
    between 0 and min(cap, base·2^attempt) ("Exponential Backoff And Jitter",
    AWS Architecture Blog, 2015), after the server's ``retry_after_ms`` when
    it gives one. The pages use the same policy (client/captions.js)."""

    base_s: float = 0.5
    cap_s: float = 30.0
    attempt: int = 0

    def next(self, error: dict[str, Any] | None = None) -> float:
        """Seconds to wait before the next attempt, after ``error`` (the event that refused the last one)."""
        window = min(self.cap_s, self.base_s * 2.0**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        hint = (error or {}).get("retry_after_ms")
        after = hint / 1000 if isinstance(hint, int | float) and math.isfinite(hint) and hint > 0 else 0.0
        return after + random.random() * window

    def reset(self) -> None:
        self.attempt = 0


def ingest_url(base: str, room: str, key: str | None) -> str:
    """The ingest WebSocket of ``room`` on the server at ``base`` (http(s):// or ws(s)://)."""
    base = "ws" + base.removeprefix("http") if base.startswith("http") else base
    url = f"{base.rstrip('/')}/ws/ingest/{quote(room, safe='')}"
    return f"{url}?{urlencode({'token': key})}" if key else url


async def wait_until_ready(base: str, limit_s: float = math.inf, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``/readyz`` of the server at ``base`` (http://) until its engines are loaded.
    Raises ``RuntimeError`` when ``alive()`` turns false, ``TimeoutError`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError("the server is gone")
            try:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{base} not ready after {limit_s:.0f} s")


CATCH_UP_BURST_S = 8.0
"""Audio sent at once after a reconnection: within the server's burst allowance (10 s by default)."""
CATCH_UP = 1.6
"""Then the rest of what waited, at this many times real time: under the server's sustained 2×."""
RECONNECT_CODES = frozenset({1001, 1006, 1011, 1012, 1013})
"""Close codes after which a reconnecting publisher tries again (going away, gone without a close,
internal error, restart, try again later); any other close is the server's answer."""


@dataclass
class _Position:
    """Where a reconnecting publisher stands in its audio (sample indices from the first)."""

    acked: int = 0
    """Samples the server acknowledged."""
    session: str | None = None
    """The server's session the last ``ready`` named."""
    base: int = 0
    """The sample that session began with."""

    def resend(self) -> dict[str, Any] | None:
        """``start``'s ``resend`` after a lost connection: the session, and where in its audio the resent begins."""
        if self.session is None:
            return None
        return {"session": self.session, "from_ms": (self.acked - self.base) * 1000 // TARGET_RATE}


async def stream_audio(url: str | Sequence[str], samples: np.ndarray, *, speed: float = 1.0, frame_ms: int = 20,
                       on_message: Callable[[dict[str, Any]], None] | None = None,
                       language: str | None = None, translate: str | None = None,
                       candidates: Sequence[str] | None = None, reconnect: int = 0,
                       on_retry: Callable[[float], None] | None = None) -> StreamResult:
    """Send 16 kHz mono ``samples`` as s16le frames to an ingest ``url``, then
    ``stop``; returns after ``stopped``, an error or the end of the connection
    with everything received. ``language`` (a Whisper code or "auto") and
    ``translate`` ("en") and ``candidates`` (of ``auto``) go into ``start``;
    None: the room's settings. A connection lost or closed for a reason worth
    retrying (``RECONNECT_CODES``, ``RETRYABLE``) is opened again, to the next
    of the ``url``s (nodes of one cluster), after a back-off (``on_retry(delay)``),
    up to ``reconnect`` times in a row without the server acknowledging audio;
    the audio it had not acknowledged (``ack``) is sent again first, less what
    the server says it has (``ready``'s ``skip_ms``)."""
    urls = [url] if isinstance(url, str) else list(url)
    result = StreamResult()
    backoff = Backoff(base_s=0.2, cap_s=5.0)
    position = _Position()
    tries = reconnect
    """Reconnections left: ``reconnect`` again after each connection on which the server acknowledged audio."""
    for attempt in itertools.count():
        before = position.acked
        done = await _play(urls[attempt % len(urls)], samples, position, result, speed, frame_ms, on_message,
                           {"type": "start", "format": "s16le", "sample_rate": TARGET_RATE, "channels": 1,
                            "language": language, "translate": translate,
                            "candidates": list(candidates) if candidates is not None else None,
                            "resend": position.resend()})
        if position.acked > before:
            tries = reconnect
            backoff.reset()
        error = result.error
        if done or tries == 0 or (error is None and result.close_code not in RECONNECT_CODES) \
                or (error is not None and error["code"] not in RETRYABLE):
            return result
        tries -= 1
        delay = backoff.next(error)
        if on_retry is not None:
            on_retry(delay)
        await asyncio.sleep(delay)
        result.reconnects.append(time.monotonic())
    raise AssertionError("unreachable")


async def _play(url: str, samples: np.ndarray, position: _Position, result: StreamResult, speed: float,
                frame_ms: int, on_message: Callable[[dict[str, Any]], None] | None, start: dict[str, Any]) -> bool:
    """One connection of ``stream_audio``, sending from ``position`` on (after ``ready`` when it
    resends); returns whether the stream ended (``stopped``)."""
    frame = TARGET_RATE * frame_ms // 1000
    stopped = False
    ready = asyncio.Event()
    first = position.acked
    try:
        ws = await websockets.connect(url, max_size=2**22)
    except (OSError, websockets.InvalidHandshake, TimeoutError):
        result.close_code = 1006
        return False
    async with ws:

        async def receive() -> None:
            nonlocal stopped, first
            with contextlib.suppress(websockets.ConnectionClosed):  # a lost connection: close_code says so
                async for raw in ws:
                    message = json.loads(raw)
                    result.messages.append(message)
                    result.arrivals.append(time.monotonic())
                    if message.get("type") == "ready":
                        if not result.reconnects:
                            result.offset = float(message["offset"])
                        first += int(message.get("skip_ms", 0)) * TARGET_RATE // 1000
                        position.session, position.base = str(message["session"]), first
                        position.acked = max(position.acked, first)  # what it skips, the server has
                        ready.set()
                    elif message.get("type") == "ack" and message.get("session") == position.session:
                        position.acked = max(position.acked, position.base + int(message["audio_ms"]) * TARGET_RATE
                                             // 1000)
                    if on_message is not None:
                        on_message(message)
                    if message.get("type") in ("stopped", "error"):
                        stopped = message["type"] == "stopped"
                        return

        receiver = asyncio.create_task(receive())
        try:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(json.dumps({k: v for k, v in start.items() if v is not None}))
                if start["resend"] is not None:  # the server may have some of it: ``skip_ms``
                    waiting = asyncio.ensure_future(ready.wait())
                    await asyncio.wait({receiver, waiting}, return_when=asyncio.FIRST_COMPLETED)
                    waiting.cancel()
                if not result.audio_started:
                    result.audio_started = time.monotonic()
                clock, opened, resent_from = result.audio_started, time.monotonic(), first
                result.resent_samples += max(0, result.sent_samples - first)
                for i in range(first, len(samples), frame):
                    due = clock + i / TARGET_RATE / speed
                    if start["resend"] is not None:  # what waited goes in a burst, then faster than real time
                        due = max(due, opened + max(0.0, (i - resent_from) / TARGET_RATE - CATCH_UP_BURST_S)
                                  / CATCH_UP)
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    if receiver.done():
                        break
                    await ws.send(float_to_s16le(samples[i : i + frame]))
                    result.sent_samples = max(result.sent_samples, i + frame)
                if not receiver.done():
                    await ws.send(json.dumps({"type": "stop"}))
            await receiver
        except asyncio.CancelledError:  # the demo stopping: going away (RFC 6455 §7.4.1), not 1011 "error"
            await ws.close(CloseCode.GOING_AWAY)
            raise
        finally:
            receiver.cancel()
    result.close_code = ws.close_code
    return stopped
