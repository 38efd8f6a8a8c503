"""Soak benchmark: a conference's load for minutes on end, with crashes.

Starts ``livecap serve`` (tiny.en, its own data directory, one port for the
whole run) and, at once:

- N publishers (default: the capacity the server reports on ``/readyz``)
  stream real speech of the evaluation set at real-time pace, each into its
  room; a publisher whose connection ends reconnects by itself (bounded
  back-off with jitter, or the error event's ``retry_after_ms``) and goes on
  where its speaker now is: audio spoken while the server is down is lost;
- V viewers (default 2,000) spread over the rooms, real WebSockets without
  compression, each keeping the last seq it saw and reconnecting with
  ``after_seq`` after any close, and dropping, as the pages do, an event whose
  seq is not above it. A slow group among them stops reading for a while,
  again and again: the server should close them with ``viewer_too_slow``;
- a fuzzer sends malformed input at a low rate to both sockets and the HTTP
  routes (the cases of ``tests/test_hostile.py`` and random frames): every
  close must follow an ``error`` event whose code and close code README's
  table lists, and no route may answer 5xx;
- at evenly spaced times, the server is killed (``kill -9``) and started
  again on the same port and data directory; the intervals between kills
  are the *phases*.

When the publishers are done, every viewer gets time to catch up, then the
stored transcripts are compared with what every client saw. Reported (issue
11's acceptance in brackets; ``acceptance`` in the JSON):

- per phase: word lag p50/p95 and final lag p50/p95 of the publishers (as in
  ``benchmarks.live``), finals by engine, the server's RSS and its linear
  trend over the steady part of the phase [no growth];
- publishers admitted and refused, with their codes;
- finals lost [0]: a stored final that a viewer connected at the end never
  showed, or a final some client saw that is not stored;
- utterances without a final [0], apart from those in flight at a kill
  (counted apart, and whether a final recovered them after the restart);
- seqs that carried two different events [0] and events a page would skip
  because their seq is not above the last one it saw;
- ``internal_error`` seen by anyone [0]; fuzz probes not explained [0], 5xx [0];
- close codes by group (publishers, viewers, slow viewers).

    python -m benchmarks.soak [--minutes 10] [--rooms N] [--viewers 2000] [--restarts 2] [-- server flags]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import aiohttp
import numpy as np
import psutil
import websockets

from benchmarks.live import RESULTS, SECRET, RoomPlan, analyse, free_port, percentile, plan_rooms, start_server
from benchmarks.scoring import DEFAULT_MANIFEST, load_manifest, write_results
from livecap.audio import TARGET_RATE
from livecap.auth import Keys
from livecap.client import Backoff, StreamResult, ingest_url, stream_audio, wait_until_ready
from livecap.ingest import IngestLimits
from livecap.server import VIEWER_MAX_MESSAGE
from tests.test_docs import documented_closes
from tests.test_fuzz import exchange
from tests.test_hostile import BAD_NAMES, HOSTILE_JSON, LIBRARY_REFUSALS, TEXT, frame

FALLBACK_ROOMS = 4
"""Rooms when the server does not report its capacity."""
FRAME = TARGET_RATE // 50
"""Samples in a publisher's 20 ms frame: where a reconnecting publisher picks up."""
CONNECTS_PER_S = 200
"""Viewers' first connections are spread out at this rate, as phones arrive."""
SLOW_READ_S = (20.0, 40.0)
"""A slow viewer reads normally for a random time in this range between pauses."""
RSS_EVERY_S = 5.0
STEADY_AFTER_S = 30.0
"""A phase's RSS trend leaves out at least this much after the server was ready (and a third of the phase)."""
RSS_TREND_BOUND_MB_PER_MIN = 2.0
"""No growth trend: under this in every phase (20 MB in ten minutes)."""
SETTLE_LIMIT_S = 120.0
FUZZ_ROOM = "soak-fuzz"
RANDOM_PATH = "random path"
EXAMPLES = 5
FAULT_BODIES = ['{"delay_s": NaN}', '{"delay_s": -1}', '{"delay_s": Infinity}', '{"delay_s": 61}',
                '{"failure_rate": 1.5}', '{"failure_rate": -Infinity}', '{"delay_s": "1"}', '{"delay_s": true}',
                '{"delay_s": 1e400}', "[1]", "[" * 5000, "not json"]
"""Bodies the fault injector must refuse: none of them sets a fault, whatever the server does with it."""
FAILED_CONNECT = (OSError, TimeoutError, websockets.InvalidHandshake)
"""What connecting raises while the server is down or restarting."""


@dataclass
class Clock:
    """Where the run stands: its start, the kills so far, how far it has wound down."""

    began: float
    phase: int = 0
    kills: list[float] = field(default_factory=list)
    readies: list[float] = field(default_factory=list)
    """When the server was ready again after each kill."""
    loading: bool = False
    """Between a kill and the new server's readiness."""
    winding_down: asyncio.Event = field(default_factory=asyncio.Event)
    """The publishers are done: slow viewers read on, the fuzzer stops."""
    over: bool = False
    """Viewers are being closed by the benchmark: their closes are not counted."""

    def at(self, t: float) -> float:
        return round(t - self.began, 1)


@dataclass(frozen=True)
class Session:
    """One publisher connection that was admitted (got ``ready``)."""

    result: StreamResult
    phase: int
    killed: bool
    """The server was killed while it ran."""


@dataclass
class Room:
    plan: RoomPlan
    sessions: list[Session] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    """Publisher connections: admitted, refused (error/close code), failed to connect."""
    events: dict[int, tuple[str, int, str]] = field(default_factory=dict)
    """What each seq carried when a client first saw it: (kind, segment, text)."""
    repeated: set[int] = field(default_factory=set)
    """Seqs seen carrying two different events."""
    skipped: int = 0
    """Events a page would not show (their seq is not above the viewer's last one) that are not replays."""

    def witness(self, seq: int, event: tuple[str, int, str]) -> bool:
        """Record what ``seq`` carried; whether it is a replay (a client saw ``seq`` carry this before)."""
        first = self.events.setdefault(seq, event)
        if first is event:
            return False
        if first != event:
            self.repeated.add(seq)
            return False
        return True


@dataclass(eq=False)
class Viewer:
    """A phone: minimal work per message (it may receive thousands a second, all viewers together)."""

    room: Room
    slow: bool
    last_seq: int = 0
    finals: set[tuple[int, int]] = field(default_factory=set)
    """(seq, segment) of every final with words it showed."""
    ws: websockets.ClientConnection | None = None
    heard: float = 0.0
    """When it last received anything."""

    def receive(self, raw: str | bytes) -> str | None:
        """Take one message; returns the code of an error event."""
        message = json.loads(raw)
        self.heard = time.monotonic()
        if message.get("type") != "caption":
            return message.get("code") if message.get("type") == "error" else None
        seq, kind, segment = message["seq"], message["kind"], message["segment"]
        replay = self.room.witness(seq, (kind, segment, message["text"]))
        if seq <= self.last_seq:  # client/captions.js drops it
            if not replay:
                self.room.skipped += 1
            return None
        self.last_seq = seq
        if kind == "final" and message["text"]:
            self.finals.add((seq, segment))
        return None


class Server:
    """``livecap serve`` on one port and data directory, through kills and restarts."""

    def __init__(self, port: int, data_dir: str, args: Sequence[str], log: IO[bytes]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self._command = (port, data_dir, args, log)
        self.process = start_server(*self._command)
        self._psutil = psutil.Process(self.process.pid)
        self.orphans = 0
        """Processes of a killed server still alive once its successor was ready (then ended here)."""

    async def ready(self) -> None:
        process = self.process
        await wait_until_ready(self.base, 900, lambda: process.poll() is None)

    def kill(self) -> list[psutil.Process]:
        """``kill -9``, and start again; returns the killed server's child processes."""
        children: list[psutil.Process] = self._psutil.children(recursive=True)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = start_server(*self._command)
        self._psutil = psutil.Process(self.process.pid)
        return children

    def reap(self, children: Sequence[psutil.Process]) -> None:
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    self.orphans += 1
                    child.kill()

    def rss_mb(self) -> tuple[float, float] | None:
        """Resident memory of the server process, and with its engine workers."""
        try:
            main = self._psutil.memory_info().rss
            workers = sum(c.memory_info().rss for c in self._psutil.children(recursive=True))
        except psutil.Error:
            return None
        return round(main / 2**20, 1), round((main + workers) / 2**20, 1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the clients ------------------------------------------------------------------------------------------------------

async def publish(room: Room, base: str, clock: Clock, end: int) -> None:
    """Stream the room's audio until sample ``end`` of the run, reconnecting where the speaker now is."""
    url = ingest_url(base, room.plan.room, Keys(SECRET).key("publisher", room.plan.room))
    backoff = Backoff(0.25, 4.0)
    while (position := FRAME * int((time.monotonic() - clock.began) * TARGET_RATE / FRAME)) < end:
        phase = clock.phase
        try:
            result = await stream_audio(url, room.plan.audio[position:end])
        except FAILED_CONNECT:
            room.attempts["connect failed"] += 1
            await asyncio.sleep(backoff.next())
            continue
        error = result.error
        ending = f"{error['code'] if error else None}/{result.close_code}" + (" at a kill" if clock.phase != phase
                                                                              else "")
        if any(m.get("type") == "ready" for m in result.messages):
            room.sessions.append(Session(result, phase, clock.phase != phase))
            room.attempts[f"admitted, ended {ending}"] += 1
            backoff.reset()
        else:
            room.attempts[f"refused {ending}"] += 1
        if result.messages[-1:] and result.messages[-1].get("type") == "stopped":
            return
        await asyncio.sleep(backoff.next(error))


async def view(viewer: Viewer, base: str, clock: Clock, closes: Counter[str], delay: float, pause_s: float,
               rng: random.Random) -> None:
    """Follow the room, reconnecting with ``after_seq`` after any close, until the run is over."""
    await asyncio.sleep(delay)
    ws_base = base.replace("http", "ws", 1)
    backoff = Backoff(0.5, 8.0)
    while not clock.over:
        phase = clock.phase
        url = f"{ws_base}/ws/captions/{viewer.room.plan.room}?after_seq={viewer.last_seq}"
        try:
            async with websockets.connect(url, compression=None, ping_interval=None, open_timeout=30) as ws:
                viewer.ws = ws
                error, captioned = await read(viewer, ws, clock, pause_s, rng)
            outcome = f"{error}/{ws.close_code}"
            if captioned:  # not after a refusal: that would retry at once, forever (issue 11, kind 9)
                backoff.reset()
        except FAILED_CONNECT:
            outcome = "connect failed"
        finally:
            viewer.ws = None
        if clock.over:
            return
        closes[outcome + (" at a kill" if clock.phase != phase else "")] += 1
        await asyncio.sleep(backoff.next())


async def read(viewer: Viewer, ws: websockets.ClientConnection, clock: Clock, pause_s: float,
               rng: random.Random) -> tuple[str | None, bool]:
    """Read until the connection closes: (the code of the error event, if any; whether a caption came).
    A slow viewer stops reading its socket for ``pause_s`` now and then, as a frozen app does: what
    the server sends piles up in the kernel's buffers, and no ping is answered."""
    error, captioned = None, False
    pause_at = time.monotonic() + rng.uniform(*SLOW_READ_S) if viewer.slow else math.inf
    with contextlib.suppress(websockets.ConnectionClosed):
        async for raw in ws:
            code = viewer.receive(raw)
            error, captioned = code or error, captioned or code is None
            if time.monotonic() >= pause_at:
                ws.transport.pause_reading()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(clock.winding_down.wait(), pause_s)
                ws.transport.resume_reading()
                pause_at = math.inf if clock.winding_down.is_set() else time.monotonic() + rng.uniform(*SLOW_READ_S)
    return error, captioned


# --- the fuzzer -------------------------------------------------------------------------------------------------------

Messages = Callable[[random.Random], list[Any]]
"""What a socket probe sends (``tests.test_fuzz.exchange``: text, bytes, or ("raw", bytes) written past the framing)."""


def fixed(*messages: Any) -> Messages:
    return lambda rng: list(messages)


def random_frame(rng: random.Random) -> list[Any]:
    return [("raw", frame(rng.randrange(16), rng.randbytes(rng.randrange(130)), fin=rng.random() < 0.8,
                          rsv=rng.choice([0, 0, 0, 1, 2, 4])))]


def socket_probes(ws_base: str, keys: Keys, rooms: Sequence[str]) -> list[tuple[str, str, Messages]]:
    """(name, URL, messages) of hostile input to both sockets; never a valid ``start`` (which would take a
    publisher's place) and never into a publisher's room."""
    ingest = f"{ws_base}/ws/ingest/{FUZZ_ROOM}?token={keys.key('publisher', FUZZ_ROOM)}"
    captions = f"{ws_base}/ws/captions/{rooms[0]}"
    probes: list[tuple[str, str, Messages]] = []
    for socket, url, limit in (("ingest", ingest, IngestLimits().max_message_bytes),
                               ("captions", captions, VIEWER_MAX_MESSAGE)):
        probes += [(f"{socket} {name}", url, fixed(("raw", raw)))
                   for name, raw, compression, _, _ in LIBRARY_REFUSALS if compression is None]
        probes += [(f"{socket} hostile json {i}", url, fixed(text)) for i, text in enumerate(HOSTILE_JSON)]
        probes += [(f"{socket} not json", url, fixed("hello")), (f"{socket} unknown type", url, fixed('{"type": 1}')),
                   (f"{socket} over the limit", url, fixed(bytes(limit + 1))),
                   (f"{socket} over twice the limit", url, fixed(bytes(2 * limit + 1))),
                   (f"{socket} random frame", url, random_frame),
                   (f"{socket} random text", url, lambda rng: [("raw", frame(TEXT, rng.randbytes(rng.randrange(99))))]),
                   (f"{socket} random bytes", url, lambda rng: [rng.randbytes(rng.randrange(1, 999))])]
    probes += [(f"ingest start {field_}", ingest, fixed(json.dumps({"type": "start", field_: value})))
               for field_, value in (("format", "mp3"), ("sample_rate", 1), ("channels", 3), ("language", "xx"))]
    probes += [("ingest wrong key", ingest.replace("token=", "token=x"), fixed()),
               ("ingest long key", f"{ws_base}/ws/ingest/{FUZZ_ROOM}?token={'k' * 3000}", fixed())]
    probes += [(f"ingest bad name {name}", f"{ws_base}/ws/ingest/{name}?token={keys.key('operator')}",
                fixed('{"type": "start"}')) for name in BAD_NAMES]
    probes += [(f"captions bad name {name}", f"{ws_base}/ws/captions/{name}", fixed()) for name in BAD_NAMES]
    probes += [(f"captions after_seq {value}", f"{captions}?after_seq={value}", fixed())
               for value in ("%C2%B2", "-1", "1" * 19, "abc", "%EF%BC%91", "")]
    return probes


def http_probes(keys: Keys, rooms: Sequence[str]) -> list[tuple[str, str, str, str | None, dict[str, str]]]:
    """(name, method, path, body, headers) of hostile requests; never one an operator would mean."""
    operator = {"Authorization": f"Bearer {keys.key('operator')}"}
    probes: list[tuple[str, str, str, str | None, dict[str, str]]] = []
    for name in BAD_NAMES:
        probes += [(f"{path} {name}", "GET", f"/{path}/{name}", None, {}) for path in ("view", "overlay", "qr")]
        probes.append((f"transcript {name}", "GET", f"/rooms/{name}/transcript.json", None, {}))
    probes += [(f"faults {body[:20]}", "POST", "/operator/faults", body, operator) for body in FAULT_BODIES]
    probes += [("faults without key", "POST", "/operator/faults", '{"delay_s": 0}', {}),
               ("end without key", "POST", f"/operator/rooms/{rooms[0]}/end", None, {}),
               ("transcript format", "GET", f"/rooms/{rooms[0]}/transcript.doc", None, {}),
               ("long token", "GET", f"/qr/{rooms[0]}?token={'a' * 3000}", None, {}),
               ("operator long token", "GET", f"/operator/rooms?token={'a' * 3000}", None, {}),
               ("captions without upgrade", "GET", f"/ws/captions/{rooms[0]}", None, {}),
               (RANDOM_PATH, "GET", "", None, {})]
    return probes


def socket_outcome(received: list[dict[str, Any]], ws: websockets.ClientConnection, sent_close: bool) -> str:
    """How the server ended a probe's connection: "kept open", "answered our close",
    "explained CODE/CLOSE" (an error event, then the close README pairs with it), or
    a failure: "internal_error", "dropped" (no close frame), "unexplained CODE/CLOSE"."""
    if any(m.get("code") == "internal_error" for m in received):
        return "internal_error"
    if ws.protocol.close_rcvd_then_sent is False:
        return "kept open"
    close = ws.protocol.close_rcvd
    if close is None:
        return "dropped"
    if close.code == 1000 and sent_close:
        return "answered our close"
    error = received[-1].get("code") if received and received[-1].get("type") == "error" else None
    explained = (error, close.code) in documented_closes()[0]
    return f"{'explained' if explained else 'unexplained'} {error}/{close.code}"


def is_failure(outcome: str) -> bool:
    """A 503 from a server still loading its engines is an answer ("try later"), any other 5xx a failure."""
    if outcome == "http 503 while loading":
        return False
    return outcome in ("internal_error", "dropped") or outcome.startswith(("unexplained", "http 5"))


async def fuzz(base: str, clock: Clock, keys: Keys, rooms: Sequence[str], interval_s: float, rng: random.Random,
               outcomes: Counter[str], failures: list[dict[str, Any]]) -> None:
    """One probe every ``interval_s``, socket and HTTP in turn, until the publishers are done."""
    sockets = socket_probes(base.replace("http", "ws", 1), keys, rooms)
    requests = http_probes(keys, rooms)
    async with aiohttp.ClientSession() as http:
        for turn in itertools.count():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(clock.winding_down.wait(), interval_s)
                return
            phase, loading = clock.phase, clock.loading
            if turn % 2 == 0:
                name, url, make = rng.choice(sockets)
                messages = make(rng)
                try:
                    received, ws = await exchange(url, messages)
                    outcome = socket_outcome(received, ws, any(isinstance(m, tuple) and m[1][0] & 0xF == 0x8
                                                               for m in messages))
                except websockets.InvalidStatus as refused:  # a path the router does not take
                    outcome = f"http {refused.response.status_code}"
                except FAILED_CONNECT:
                    outcome = "no connection"
            else:
                name, method, path, body, headers = rng.choice(requests)
                if name == RANDOM_PATH:
                    path = "/" + quote(rng.randbytes(rng.randrange(1, 40)))
                try:
                    async with http.request(method, base + path, data=body, headers=headers) as response:
                        await response.read()
                        outcome = f"http {response.status}" + (" while loading" if loading else "")
                except aiohttp.ClientError:
                    outcome = "no connection"
            if clock.phase != phase:
                outcome = "interrupted by a kill"
            outcomes[outcome] += 1
            if is_failure(outcome) and len(failures) < 20:
                failures.append({"probe": name, "outcome": outcome, "at_s": clock.at(time.monotonic())})


# --- the run ----------------------------------------------------------------------------------------------------------

async def restart(server: Server, clock: Clock, count: int, seconds: float, capacities: list[Any]) -> None:
    """``kill -9`` the server ``count`` times, evenly spaced, each time starting it again at once."""
    for k in range(1, count + 1):
        await asyncio.sleep(max(0.0, clock.began + k * seconds / (count + 1) - time.monotonic()))
        clock.phase += 1
        clock.loading = True
        clock.kills.append(time.monotonic())
        children = server.kill()
        await server.ready()
        clock.loading = False
        clock.readies.append(time.monotonic())
        server.reap(children)
        capacities.append(await capacity(server.base))


async def sample_rss(server: Server, clock: Clock, samples: list[dict[str, float]]) -> None:
    me = psutil.Process()
    while not clock.over:
        rss = server.rss_mb()
        if rss is not None:
            samples.append({"t_s": clock.at(time.monotonic()), "phase": clock.phase, "server_mb": rss[0],
                            "with_workers_mb": rss[1], "client_mb": round(me.memory_info().rss / 2**20, 1)})
        await asyncio.sleep(RSS_EVERY_S)


async def capacity(base: str) -> Any:
    """The ``capacity`` the server reports on ``/readyz``, if it does."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as response:
        return (await response.json()).get("capacity")


def publisher_capacity(reported: Any) -> int | None:
    if isinstance(reported, dict):
        reported = reported.get("publishers")
    return reported if isinstance(reported, int) and not isinstance(reported, bool) else None


async def settle(viewers: Sequence[Viewer], quiet_s: float = 3.0) -> bool:
    """Wait until every viewer is connected and none has heard anything for ``quiet_s``."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    while time.monotonic() < deadline:
        now = time.monotonic()
        if all(v.ws is not None for v in viewers) and max(v.heard for v in viewers) < now - quiet_s:
            return True
        await asyncio.sleep(0.5)
    return False


async def transcript(base: str, room: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/rooms/{room}/transcript.json") as response:
        response.raise_for_status()
        return list(await response.json())


@dataclass
class Settings:
    minutes: float
    rooms: int | None
    viewers: int
    slow_viewers: int
    restarts: int
    slow_pause_s: float
    fuzz_interval_s: float
    seed: int
    server_args: list[str]


async def soak(settings: Settings, manifest: Path, data_dir: str, log: IO[bytes]) -> dict[str, Any]:
    seconds = settings.minutes * 60
    server_args = ["--model", "tiny.en", "--log-format", "json", "--max-connections-per-ip",
                   str(settings.viewers + 1000), "--max-viewers-per-room", str(settings.viewers + 100),
                   *settings.server_args]
    rng = random.Random(settings.seed)
    recordings = load_manifest(manifest)
    server = Server(free_port(), data_dir, server_args, log)
    try:
        await server.ready()
        reported = await capacity(server.base)
        measured = publisher_capacity(reported)
        rooms = settings.rooms or measured or FALLBACK_ROOMS
        rooms_from = "--rooms" if settings.rooms else "the server's capacity" if measured else \
            f"fallback: /readyz reports no capacity, so {FALLBACK_ROOMS}"
        plans = await asyncio.to_thread(plan_rooms, recordings, rooms, seconds)
        run = await run_clients(server, settings, [Room(plan) for plan in plans], rng)
    finally:
        server.stop()
    return {"rooms": rooms, "rooms_from": rooms_from, "capacity_at_start": reported, **run,
            "server_orphans": server.orphans}


async def run_clients(server: Server, settings: Settings, rooms: list[Room], rng: random.Random) -> dict[str, Any]:
    seconds = settings.minutes * 60
    keys = Keys(SECRET)
    clock = Clock(time.monotonic())
    viewer_closes: Counter[str] = Counter()
    slow_closes: Counter[str] = Counter()
    viewers = [Viewer(rooms[i % len(rooms)], slow=i < settings.slow_viewers) for i in range(settings.viewers)]
    viewing = [asyncio.create_task(view(v, server.base, clock, slow_closes if v.slow else viewer_closes,
                                        i / CONNECTS_PER_S, settings.slow_pause_s, rng))
               for i, v in enumerate(viewers)]
    connect_limit = time.monotonic() + 60 + settings.viewers / CONNECTS_PER_S
    while any(v.ws is None for v in viewers) and time.monotonic() < connect_limit:
        await asyncio.sleep(0.5)
    viewers_connected_s = round(time.monotonic() - clock.began, 1)

    me, rss = psutil.Process(), list[dict[str, float]]()
    client_cpu = sum(me.cpu_times()[:2])
    clock.began = time.monotonic()
    end = FRAME * int(seconds * TARGET_RATE / FRAME)
    fuzz_outcomes: Counter[str] = Counter()
    fuzz_failures: list[dict[str, Any]] = []
    capacities: list[Any] = []
    sampling = asyncio.create_task(sample_rss(server, clock, rss))
    restarting = asyncio.create_task(restart(server, clock, settings.restarts, seconds, capacities))
    fuzzing = asyncio.create_task(fuzz(server.base, clock, keys, [r.plan.room for r in rooms],
                                       settings.fuzz_interval_s, rng, fuzz_outcomes, fuzz_failures))
    await asyncio.gather(*(publish(room, server.base, clock, end) for room in rooms))
    ended = time.monotonic()
    client_cpu = sum(me.cpu_times()[:2]) - client_cpu
    clock.winding_down.set()
    await asyncio.gather(restarting, fuzzing)
    settled = await settle(viewers)
    transcripts = {room.plan.room: await transcript(server.base, room.plan.room) for room in rooms}
    clock.over = True
    await asyncio.gather(*(v.ws.close() for v in viewers if v.ws is not None), return_exceptions=True)
    done, pending = await asyncio.wait(viewing, timeout=30)
    for task in pending:
        task.cancel()
    crashes = [repr(task.exception()) for task in done if task.exception() is not None]
    await sampling
    publishers = sum((r.attempts for r in rooms), Counter())
    everyone = (publishers, viewer_closes, slow_closes, fuzz_outcomes)
    return {
        "viewers_connected_after_s": viewers_connected_s, "viewer_crashes": crashes[:5],
        "wall_seconds": round(ended - clock.began, 1),
        "client_cpu_cores": round(client_cpu / (ended - clock.began), 2),
        "capacity_after_restarts": capacities,
        "restarts": [{"killed_at_s": clock.at(k), "ready_after_s": round(r - k, 1)}
                     for k, r in zip(clock.kills, clock.readies, strict=True)],
        "phases": phases(rooms, clock, ended, rss),
        **verdicts(rooms, viewers, transcripts, settled),
        "internal_errors": sum(n for group in everyone for outcome, n in group.items()
                               if "internal_error" in outcome or "/1011" in outcome),
        "closes": {"publishers": dict(publishers),
                   "viewers": dict(viewer_closes), "slow_viewers": dict(slow_closes)},
        "fuzz": {"probes": sum(fuzz_outcomes.values()), "outcomes": dict(fuzz_outcomes),
                 "failures": sum(n for outcome, n in fuzz_outcomes.items() if is_failure(outcome)),
                 "failure_examples": fuzz_failures},
        "rss": rss,
    }


# --- the analysis (pure) ----------------------------------------------------------------------------------------------

def phases(rooms: Sequence[Room], clock: Clock, ended: float, rss: Sequence[dict[str, float]]) -> list[dict[str, Any]]:
    """Lags, engines and memory of each interval between kills."""
    report = []
    for phase in range(len(clock.kills) + 1):
        start = clock.began if phase == 0 else clock.kills[phase - 1]
        stop = clock.kills[phase] if phase < len(clock.kills) else ended
        ready = clock.began if phase == 0 else clock.readies[phase - 1]
        steady_from = clock.at(ready + max(STEADY_AFTER_S, (stop - ready) / 3))
        outcomes = [analyse(room.plan, s.result) for room in rooms for s in room.sessions if s.phase == phase]
        word_lags = [lag for o in outcomes for lag in o.word_lags]
        final_lags = [lag for o in outcomes for lag in o.final_lags]
        engines: Counter[str] = sum((Counter(o.engines) for o in outcomes), Counter())
        memory = [s for s in rss if s["phase"] == phase]
        steady = [s for s in memory if s["t_s"] >= steady_from]
        report.append({
            "phase": phase, "from_s": clock.at(start), "to_s": clock.at(stop),
            "word_lag_p50_s": percentile(word_lags, 50), "word_lag_p95_s": percentile(word_lags, 95),
            "final_lag_p50_s": percentile(final_lags, 50), "final_lag_p95_s": percentile(final_lags, 95),
            "server_final_lag_p95_s": percentile([lag for o in outcomes for lag in o.server_final_lags], 95),
            "finals_by_engine": dict(engines),
            "server_rss_mb_max": max((s["with_workers_mb"] for s in memory), default=None),
            "rss_trend_from_s": steady_from,
            "server_rss_trend_mb_per_min": trend([(s["t_s"], s["server_mb"]) for s in steady]),
            "with_workers_rss_trend_mb_per_min": trend([(s["t_s"], s["with_workers_mb"]) for s in steady]),
        })
    return report


def trend(samples: Sequence[tuple[float, float]]) -> float | None:
    """Slope of a least-squares line through (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return None
    t, mb = np.array(samples, dtype=float).T
    return round(float(np.polyfit(t / 60, mb, 1)[0]), 2)


def utterances(sessions: Sequence[Session], stored: Sequence[dict[str, Any]]) -> tuple[Counter[str], list[str]]:
    """What became of every utterance a publisher saw captioned, by segment:

    - "final": its final reached the publisher;
    - "final after the session": its final is stored, made after the publisher left (a disconnect's flush);
    - "recovered after a kill": a final made at the restart from its settled words (``engine: recovered``);
    - "in flight at a kill": none, and it was the room's last utterance when the server was killed;
    - "without a final": none, otherwise (must not happen).
    """
    seen = {m["seq"] for s in sessions for m in s.result.finals}
    later = [f for f in stored if f["seq"] not in seen]
    counts: Counter[str] = Counter()
    lost: list[str] = []
    for session in sessions:
        captions = [m for m in session.result.messages if m.get("type") == "caption"]
        finals = {m["segment"] for m in captions if m["kind"] == "final"}
        shown = {m["segment"]: m for m in captions if m["kind"] == "partial"}
        counts["final"] += len(finals)
        for segment, partial in shown.items():
            if segment in finals:
                continue
            final = next((f for f in later if f["segment"] == segment and f["seq"] > partial["seq"]), None)
            if final is not None:
                counts["recovered after a kill" if final["engine"] == "recovered" else "final after the session"] += 1
            elif session.killed and segment > max(finals, default=-1):
                counts["in flight at a kill"] += 1
            else:
                counts["without a final"] += 1
                lost.append(f"{partial['room']} segment {segment} (seq {partial['seq']}): {partial['text'][:60]!r}")
    return counts, lost


def verdicts(rooms: Sequence[Room], viewers: Sequence[Viewer], transcripts: dict[str, list[dict[str, Any]]],
             settled: bool) -> dict[str, Any]:
    """Finals lost, utterances without a final, seqs repeated and internal errors, over the whole run."""
    lost_to_viewers, viewers_missing, examples = 0, 0, list[str]()
    not_stored: set[tuple[str, int, int]] = set()
    for viewer in viewers:
        name = viewer.room.plan.room
        stored = {(f["seq"], f["segment"]) for f in transcripts[name]}
        missing = stored - viewer.finals
        lost_to_viewers += len(missing)
        viewers_missing += bool(missing)
        if missing and len(examples) < EXAMPLES:
            examples.append(f"a {'slow ' if viewer.slow else ''}viewer of {name} never showed the finals "
                            f"with seqs {sorted(s for s, _ in missing)[:10]}")
        not_stored |= {(name, seq, segment) for seq, segment in viewer.finals - stored}
    counts: Counter[str] = Counter()
    without_final: list[str] = []
    for room in rooms:
        stored_finals = transcripts[room.plan.room]
        keys = {(f["seq"], f["segment"], f["text"]) for f in stored_finals}
        for session in room.sessions:
            for m in session.result.messages:
                if m.get("type") == "caption":
                    room.witness(m["seq"], (m["kind"], m["segment"], m["text"]))
            not_stored |= {(room.plan.room, m["seq"], m["segment"]) for m in session.result.finals
                           if m["text"] and (m["seq"], m["segment"], m["text"]) not in keys}
        room_counts, room_lost = utterances(room.sessions, stored_finals)
        counts += room_counts
        without_final += room_lost
    return {
        "finals_stored": sum(len(t) for t in transcripts.values()),
        "viewers_settled": settled,
        "finals_lost": lost_to_viewers + len(not_stored),
        "finals_lost_detail": {"stored_not_shown_by_a_viewer": lost_to_viewers,
                               "viewers_missing_a_final": viewers_missing,
                               "shown_not_stored": len(not_stored),
                               "examples": examples + [f"{r}: seq {s}, segment {g} shown, not stored"
                                                       for r, s, g in sorted(not_stored)[:EXAMPLES]]},
        "utterances": dict(counts),
        "utterances_without_final": counts["without a final"],
        "utterances_without_final_examples": without_final[:10],
        "in_flight_at_kills": counts["in flight at a kill"] + counts["recovered after a kill"],
        "seqs_repeated": sum(len(r.repeated) for r in rooms),
        "events_a_page_would_skip": sum(r.skipped for r in rooms),
    }


def server_log(text: str) -> dict[str, Any]:
    """The server's warnings and errors (JSON lines, ``--log-format json``) by level and message,
    the first errors with the last line of their exception, and any other output."""
    levels: Counter[str] = Counter()
    errors: list[str] = []
    other: list[str] = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        levels[f"{record['level']} {record['logger']}: {record['message'][:80]}"] += 1
        if record["level"] in ("error", "critical") and len(errors) < 10:
            errors.append(f"{record['message'][:200]} | {record.get('exception', '').splitlines()[-1:]}")
    return {"records": dict(levels.most_common(30)), "errors": errors,
            "other_tracebacks": sum(line.startswith("Traceback") for line in other), "other_output": other[:40]}


def acceptance(run: dict[str, Any]) -> dict[str, bool]:
    trends = [p["with_workers_rss_trend_mb_per_min"] for p in run["phases"]]
    return {
        "no_final_lost": run["viewers_settled"] and not run["viewer_crashes"] and run["finals_lost"] == 0,
        "every_utterance_final": run["utterances_without_final"] == 0,
        "no_internal_error": run["internal_errors"] == 0,
        "seqs_never_repeat": run["seqs_repeated"] == 0,
        "every_refusal_explained": run["fuzz"]["failures"] == 0,
        "no_rss_growth": all(t is not None and t < RSS_TREND_BOUND_MB_PER_MIN for t in trends),
    }


def summary(run: dict[str, Any]) -> str:
    lines = [f"{run['rooms']} rooms ({run['rooms_from']}), {run['restarts_asked']} restarts"]
    for p in run["phases"]:
        lines.append(f"phase {p['phase']} ({p['from_s']:.0f}-{p['to_s']:.0f} s): word lag p50/p95 "
                     f"{p['word_lag_p50_s']}/{p['word_lag_p95_s']} s, final lag p95 {p['final_lag_p95_s']} s, "
                     f"RSS max {p['server_rss_mb_max']} MB, trend {p['with_workers_rss_trend_mb_per_min']} MB/min")
    detail = run["finals_lost_detail"]
    lines += [f"restarts: {run['restarts']}",
              f"publishers: {run['closes']['publishers']}",
              f"finals: {run['finals_stored']} stored, {run['finals_lost']} lost ({detail['viewers_missing_a_final']} "
              f"viewers missed some, {detail['shown_not_stored']} shown but not stored)",
              f"utterances: {run['utterances']}",
              f"seqs repeated: {run['seqs_repeated']}, events a page would skip: {run['events_a_page_would_skip']}",
              f"viewers' closes: {run['closes']['viewers']}",
              f"slow viewers' closes: {run['closes']['slow_viewers']}",
              f"fuzz: {run['fuzz']['probes']} probes, {run['fuzz']['failures']} failures: {run['fuzz']['outcomes']}",
              f"server log: errors {run['server_log']['errors']}, "
              f"other tracebacks {run['server_log']['other_tracebacks']}",
              f"acceptance: {run['acceptance']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rooms", type=int, help="publishers (default: the capacity /readyz reports, else 4)")
    parser.add_argument("--viewers", type=int, default=2000)
    parser.add_argument("--slow-viewers", type=int, default=20, help="of the viewers, those who stop reading")
    parser.add_argument("--slow-pause-s", type=float, default=15.0,
                        help="how long a slow viewer stops reading: between the server's viewer_max_lag_s, "
                             "after which it closes the viewer, and twice that, when it cuts it off")
    parser.add_argument("--restarts", type=int, default=2, help="kill -9 and restart, evenly spaced")
    parser.add_argument("--fuzz-interval-s", type=float, default=1.0, help="time between two fuzz probes")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/soak-<label>.json)")
    parser.add_argument("--label", default="default")
    parser.add_argument("server_args", nargs="*", help="flags passed to 'livecap serve' (after --)")
    arguments = parser.parse_args(argv)
    settings = Settings(arguments.minutes, arguments.rooms, arguments.viewers, arguments.slow_viewers,
                        arguments.restarts, arguments.slow_pause_s, arguments.fuzz_interval_s, arguments.seed,
                        arguments.server_args)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="livecap-soak-") as scratch:
        with open(Path(scratch) / "server.log", "wb") as log:
            run = asyncio.run(soak(settings, arguments.manifest, str(Path(scratch) / "data"), log))
        run["server_log"] = server_log((Path(scratch) / "server.log").read_text(errors="replace"))
    run["restarts_asked"] = settings.restarts
    run["acceptance"] = acceptance(run)
    report = {"label": arguments.label, "settings": asdict(settings), "cpu_count": os.cpu_count(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "run": run}
    print(summary(run), flush=True)
    write_results(arguments.out or RESULTS / f"soak-{arguments.label}.json", report)
    return 0 if all(run["acceptance"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
