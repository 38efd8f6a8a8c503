"""Flow control of viewers over real sockets: a viewer that stops reading is
closed with ``viewer_too_slow``/4100 within ``viewer_max_lag_s``, whether or
not it keeps acknowledging; the others in its room get every final; a peer
that does not answer pings is counted as a heartbeat drop. Captions are fed
straight into the room (the engine does not matter here)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import websockets

from livecap.appkeys import METRICS, ROOMS
from livecap.asr.engine import Word
from livecap.captions import CaptionEvent, CaptionState
from livecap.errors import RoomEnded, ViewerTooSlow
from livecap.fanout import PROBE_AT, Outgoing, Subscriber, ViewerQueue
from livecap.rooms import Room
from tests.conftest import LiveServer, start_server, timeout

MAX_LAG_S = timeout(1.5)
"""The servers' viewer_max_lag_s."""
SLACK_S = timeout(1.0)
"""What the close may take beyond the bound and the sweep interval on a loaded machine."""


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """Heartbeat out of the way (a stalled client answers no ping either): only flow control closes here."""
    live = await start_server(tmp_path_factory.mktemp("viewers"), engine="pocketsphinx", fallback_engine="none",
                              viewer_max_lag_s=MAX_LAG_S, heartbeat_s=600.0)
    yield live
    await live.runner.cleanup()


def disconnects(server: LiveServer, code: str) -> float:
    return server.app[METRICS].registry.get_sample_value("livecap_disconnects_total", {"code": code}) or 0.0


async def disconnected(server: LiveServer, code: str, before: float) -> float:
    """Monotonic time at which the server has closed one more connection with ``code``."""
    await until(lambda: disconnects(server, code) > before, f"a {code} disconnect")
    return time.monotonic()


@dataclass
class Speech:
    """Feeds a room caption events as a fast talker would: a partial every
    20 ms, each a word longer (frames of 0.2-0.7 KB), a final every 30 words."""

    room: Room
    published: list[tuple[CaptionEvent, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        captions = self.room.captions
        while not self.stop.is_set():
            segment = captions.new_segment()
            words = tuple(Word(f"word{segment}-{i}", i * 0.2, i * 0.2 + 0.2) for i in range(30))
            for i in range(1, len(words)):
                self.publish(captions.partial(segment, words[: i // 2], words[i // 2 : i], 0.0, i * 0.2, "test",
                                              "1", 0.0))
                await asyncio.sleep(0.02)
            self.publish(captions.final(segment, words, 0.0, 6.0, "test", "1", 0.0))

    def publish(self, event: CaptionEvent | None) -> None:
        assert event is not None
        self.room.publish(event)
        self.published.append((event, time.monotonic()))

    def finals(self, after: int = 0) -> list[int]:
        return [e.seq for e, _ in self.published if e.kind == "final" and e.seq > after]

    def published_at(self, seq: int) -> float:
        return next(t for e, t in self.published if e.seq == seq)


@dataclass
class Reader:
    """A viewer that reads everything and, if asked, acks like the pages do:
    the newest seq it rendered, at most twice a second, and the last one too."""

    url: str
    ack: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    async def run(self, connected: asyncio.Event) -> None:
        rendered = asyncio.Event()
        async with websockets.connect(self.url, ping_interval=None) as ws:

            async def acknowledge() -> None:
                while True:
                    await rendered.wait()
                    rendered.clear()
                    await ws.send(json.dumps({"type": "ack", "seq": self.messages[-1]["seq"]}))
                    await asyncio.sleep(0.5)

            acking = asyncio.create_task(acknowledge())
            connected.set()
            try:
                async for raw in ws:
                    self.messages.append(json.loads(raw))
                    if self.ack and self.messages[-1]["type"] == "caption":
                        rendered.set()
            except websockets.ConnectionClosed:
                pass
            acking.cancel()
        self.close_code = ws.close_code

    def finals(self) -> list[int]:
        return [m["seq"] for m in self.messages if m.get("kind") == "final"]


async def read_to_the_end(ws: websockets.ClientConnection) -> list[dict[str, Any]]:
    messages = []
    try:
        async for raw in ws:
            messages.append(json.loads(raw))
    except websockets.ConnectionClosed:
        pass
    return messages


def small_receive_buffer(server: LiveServer) -> socket.socket:
    """A socket to the server whose kernel buffers only a few KB for the client: what the client
    does not read backs up at the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: it sets the TCP window scale
    target = urlsplit(server.base)
    sock.connect((target.hostname, target.port))
    return sock


async def normal_viewers(server: LiveServer, room: str) -> tuple[list[Reader], list[asyncio.Task[None]]]:
    readers = [Reader(server.captions_url(room)), Reader(server.captions_url(room), ack=True)]
    connected = [asyncio.Event() for _ in readers]
    tasks = [asyncio.create_task(r.run(c)) for r, c in zip(readers, connected, strict=True)]
    for event in connected:
        await event.wait()
    return readers, tasks


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + timeout(30)
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


async def check_normal_viewers(speech: Speech, readers: list[Reader], tasks: list[asyncio.Task[None]],
                               linger: bool = False) -> None:
    """The other viewers were not closed and got every final; with ``linger``,
    they stay a while after the last caption (nothing outstanding, nothing to close)."""
    last = speech.published[-1][0].seq
    await until(lambda: all(r.messages and r.messages[-1]["seq"] == last for r in readers), "the last caption")
    if linger:
        await asyncio.sleep(2 * MAX_LAG_S)
    for reader in readers:
        assert reader.close_code is None and not [m for m in reader.messages if m["type"] == "error"]
        assert reader.finals() == speech.finals(), "every final, in order, to every normal viewer"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def room_is_clean(server: LiveServer, room: str, viewers: int) -> None:
    """After every close path the room's subscriber set and viewer gauge hold only who is still there."""
    held = server.app[ROOMS].get(room, publisher=True)  # its own label in the viewers gauge
    await until(lambda: len(held.viewers) == len(held.broadcaster.subscribers) == viewers, "the room's viewers")
    gauge = server.app[METRICS].registry.get_sample_value("livecap_viewers", {"room": held.label})
    assert gauge == viewers


@pytest.mark.parametrize("buffers", ["tiny", "default"])
async def test_a_viewer_that_stops_reading_is_closed_within_the_bound(server: LiveServer, buffers: str) -> None:
    """With a tiny receive buffer the backlog stays at the server; with the
    defaults the viewer's kernel holds a hundred KB or more, and only its
    silence to the probe (its client stopped reading, pongs included) tells."""
    room = f"stalled-{buffers}"
    speech = Speech(server.app[ROOMS].get(room, publisher=True))
    readers, tasks = await normal_viewers(server, room)
    before = disconnects(server, "viewer_too_slow")
    client: dict[str, Any] = {"sock": small_receive_buffer(server), "max_queue": 1} if buffers == "tiny" else {}
    async with websockets.connect(server.captions_url(room), ping_interval=None, **client) as stalled:
        stopped_reading = time.monotonic()  # it never calls recv()
        talking = asyncio.create_task(speech.run())
        closed_at = await disconnected(server, "viewer_too_slow", before)
        messages = await read_to_the_end(stalled)  # it wakes up: the backlog, the error, the close
    elapsed = closed_at - stopped_reading
    print(f"stalled viewer closed {elapsed:.2f} s after it stopped reading (bound {MAX_LAG_S:g} s)")
    assert MAX_LAG_S <= elapsed <= MAX_LAG_S + min(1.0, MAX_LAG_S / 10) + SLACK_S + timeout(1.0), \
        "closed once its oldest caption is older than the bound (+ the few KB its buffer took), not before"
    assert messages[-1] == {"type": "error", "code": "viewer_too_slow", "message": messages[-1]["message"]}
    assert stalled.close_code == 4100
    captions = [m for m in messages if m["type"] == "caption"]
    seqs = [m["seq"] for m in captions]
    assert seqs == sorted(set(seqs)) and len(captions) > 10
    # It resumes where it stopped and loses nothing.
    last_seen = seqs[-1]
    speech.stop.set()
    await talking
    async with websockets.connect(server.captions_url(room, after_seq=last_seen)) as resumed:
        await room_is_clean(server, room, viewers=3)
        replayed: list[dict[str, Any]] = []
        while len(replayed) < len(speech.finals(after=last_seen)):
            replayed.append(json.loads(await asyncio.wait_for(resumed.recv(), timeout(10))))
    got = [m["seq"] for m in captions if m["kind"] == "final"] + [m["seq"] for m in replayed]
    assert got == speech.finals()
    await check_normal_viewers(speech, readers, tasks)
    await room_is_clean(server, room, viewers=0)


async def test_a_viewer_that_acks_but_stops_reading_is_closed_within_the_bound(server: LiveServer) -> None:
    """Its acks keep the heartbeat quiet and its kernel buffer (default size) hides the backlog;
    the acks themselves say how far behind it is."""
    room = "acking"
    speech = Speech(server.app[ROOMS].get(room, publisher=True))
    readers, tasks = await normal_viewers(server, room)
    before = disconnects(server, "viewer_too_slow")
    talking = asyncio.create_task(speech.run())
    async with websockets.connect(server.captions_url(room), ping_interval=None) as lagging:
        seen = [json.loads(await lagging.recv()) for _ in range(30)]
        await lagging.send(json.dumps({"type": "ack", "seq": seen[-1]["seq"]}))

        async def keep_acking() -> None:  # the same seq, as a page whose renderer froze would
            while True:
                await asyncio.sleep(0.3)
                await lagging.send(json.dumps({"type": "ack", "seq": seen[-1]["seq"]}))

        acking = asyncio.create_task(keep_acking())
        closed_at = await disconnected(server, "viewer_too_slow", before)
        acking.cancel()
        messages = seen + await read_to_the_end(lagging)
    oldest_unacked = messages[30]["seq"]
    elapsed = closed_at - speech.published_at(oldest_unacked)
    print(f"acking viewer closed {elapsed:.2f} s after the oldest caption it did not ack (bound {MAX_LAG_S:g} s)")
    assert MAX_LAG_S <= elapsed <= MAX_LAG_S + min(1.0, MAX_LAG_S / 10) + SLACK_S
    assert messages[-1]["code"] == "viewer_too_slow" and lagging.close_code == 4100
    speech.stop.set()
    await talking
    await check_normal_viewers(speech, readers, tasks, linger=True)
    await room_is_clean(server, room, viewers=0)


async def test_a_viewer_that_pauses_for_less_than_the_bound_is_kept(server: LiveServer) -> None:
    """A phone on bad Wi-Fi: it stops reading for a while, then catches up with everything."""
    room = "patchy"
    speech = Speech(server.app[ROOMS].get(room, publisher=True))
    before = disconnects(server, "viewer_too_slow")
    async with websockets.connect(server.captions_url(room), sock=small_receive_buffer(server), max_queue=1,
                                  ping_interval=None) as phone:
        talking = asyncio.create_task(speech.run())
        await asyncio.sleep(MAX_LAG_S / 3)  # not reading: the backlog waits at the server
        messages = [json.loads(await phone.recv())]
        while len(speech.finals()) < 2:
            messages.append(json.loads(await asyncio.wait_for(phone.recv(), timeout(10))))
        speech.stop.set()
        await talking
        while messages[-1]["seq"] < speech.published[-1][0].seq:
            messages.append(json.loads(await asyncio.wait_for(phone.recv(), timeout(10))))
    assert disconnects(server, "viewer_too_slow") == before
    finals = [m["seq"] for m in messages if m.get("kind") == "final"]
    assert finals == speech.finals()[: len(finals)] and len(finals) >= 2


@pytest.mark.parametrize("how", ["close", "bad message", "reset"])
async def test_every_way_a_viewer_leaves_leaves_the_room_clean(server: LiveServer, how: str) -> None:
    room = f"leaving-{how.replace(' ', '-')}"
    sock = small_receive_buffer(server)
    async with websockets.connect(server.captions_url(room), sock=sock, ping_interval=None) as viewer:
        await room_is_clean(server, room, viewers=1)
        if how == "bad message":
            await viewer.send("{not json")
            assert [m["code"] for m in await read_to_the_end(viewer)] == ["invalid_json"]
            assert viewer.close_code == 1007
        elif how == "reset":  # the phone's network vanished: RST, no close frame
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            viewer.transport.abort()
    await room_is_clean(server, room, viewers=0)


@pytest.mark.parametrize("role", ["viewer", "publisher"])
async def test_a_peer_that_misses_pongs_is_counted_as_a_heartbeat_drop(tmp_path: Path, role: str) -> None:
    live = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none", heartbeat_s=0.4)
    try:
        room = "silent"
        url = live.captions_url(room) if role == "viewer" else live.ingest_url(room)
        before = disconnects(live, "heartbeat_timeout")
        # A client that did the handshake and then neither reads nor answers (RFC 6455 §5.5.2).
        reader, writer = await asyncio.open_connection("127.0.0.1", int(live.base.rsplit(":", 1)[1]))
        target = urlsplit(url)
        writer.write(f"GET {target.path}?{target.query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        if role == "viewer":
            await room_is_clean(live, room, viewers=1)
        await disconnected(live, "heartbeat_timeout", before)
        await asyncio.wait_for(reader.read(), timeout(10))  # the server let go of it: end of stream
        writer.close()
        if role == "viewer":
            await room_is_clean(live, room, viewers=0)
        await until(lambda: live.app[METRICS].registry.get_sample_value("livecap_connections", {"role": role}) == 0,
                    "the connection gauge goes back down")
    finally:
        await live.runner.cleanup()


# ---- the flow-control core, without sockets


def caption(state: CaptionState, segment: int, text: str) -> CaptionEvent:
    event = state.partial(segment, (), tuple(Word(t, 0, 0) for t in text.split()), 0, 1, "e", "v", 0)
    assert event is not None
    return event


def test_a_viewer_is_behind_by_its_oldest_caption_not_confirmed() -> None:
    state, queue = CaptionState("r"), ViewerQueue()
    assert queue.behind(100.0) == 0
    first, second = Outgoing.of(caption(state, 0, "a"), 10.0), Outgoing.of(caption(state, 1, "b"), 11.0)
    queue.push(first)
    queue.push(second)
    assert queue.behind(12.0) == 2.0, "queued here"
    for _ in range(2):
        item = queue.take()
        assert item is not None
        queue.written_out(item)
    assert queue.behind(12.0) == 2.0, "written, not confirmed"
    queue.received(first.event.seq)
    assert queue.behind(12.0) == 1.0
    queue.received(second.event.seq)
    assert queue.behind(12.0) == 0


def test_a_viewer_that_does_not_ack_is_probed_with_a_ping() -> None:
    pings: list[bytes] = []
    subscriber = Subscriber(ping=pings.append)
    state = CaptionState("r")
    subscriber.deliver(Outgoing.of(caption(state, 0, "a"), 10.0))
    item = subscriber.queue.take()
    assert item is not None
    subscriber.queue.written_out(item)
    subscriber.check(10.0 + 4 * PROBE_AT, max_lag_s=4.0)
    assert pings == [], "not old enough to ask"
    subscriber.check(10.1 + 4 * PROBE_AT, max_lag_s=4.0)
    subscriber.check(10.2 + 4 * PROBE_AT, max_lag_s=4.0)
    assert pings == [str(item.event.seq).encode()], "one probe at a time, naming the last caption written"
    subscriber.ponged(b"")  # the heartbeat's, or one the viewer made up
    subscriber.ponged(b"999999")
    assert subscriber.queue.behind(12.0) == 2.0
    subscriber.ponged(pings[0])
    assert subscriber.queue.behind(12.0) == 0
    subscriber.deliver(Outgoing.of(caption(state, 1, "b"), 20.0))
    subscriber.check(24.0, max_lag_s=4.0)
    assert subscriber.closing is None
    subscriber.check(24.1, max_lag_s=4.0)
    assert isinstance(subscriber.closing, ViewerTooSlow)
    subscriber.disconnect(RoomEnded("later reasons do not replace the first"))
    assert isinstance(subscriber.closing, ViewerTooSlow)
    assert subscriber.deliver(Outgoing.of(caption(state, 2, "c"), 30.0)) == 0 and len(subscriber.queue) == 1


def test_a_viewer_that_acks_is_judged_by_its_acks() -> None:
    state, queue = CaptionState("r"), ViewerQueue()
    for i, at in enumerate((10.0, 11.0, 12.0)):
        queue.push(Outgoing.of(caption(state, i, "x"), at))
        item = queue.take()
        assert item is not None
        queue.written_out(item)
    queue.acknowledged(1)
    assert queue.behind(13.0) == 2.0
    queue.received(3)
    assert queue.behind(13.0) == 2.0, "received is not rendered"
    queue.acknowledged(3)
    assert queue.behind(13.0) == 0


def test_replayed_history_counts_from_the_connection() -> None:
    state = CaptionState("r")
    old = Outgoing.of(caption(state, 0, "old"), 50.0)
    queue = ViewerQueue(max_backlog=1, replay=[old, old])
    queue.push(Outgoing.of(caption(state, 1, "live"), 51.0))
    assert len(queue) == 3, "the replay is outside the backlog limit"
    assert queue.behind(52.0) == 2.0
    assert queue.take() is old
