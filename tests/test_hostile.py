"""Hostile input stops at the boundary: every bad frame, query, path or body
gets a documented refusal (an ``error`` event and close code from README's
table, or a 4xx), never an internal error, a dropped connection or a 500;
and keyless viewers cannot take what publishers need."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import numpy as np
import pytest
import websockets

from livecap.appkeys import ROOMS, SOCKETS
from livecap.asr.faults import Faults
from livecap.client import stream_audio
from livecap.errors import InvalidJson, ProtocolError
from livecap.fanout import ViewerInbox
from livecap.ingest import IngestProtocol
from livecap.rooms import is_room_name
from tests.conftest import LiveServer, start_server, timeout
from tests.speech import audio
from tests.test_docs import documented_closes
from tests.test_server import drain

# --- frames the WebSocket library refuses (RFC 6455 §5.2) -------------------------------------------------------

TEXT, BINARY, CONTINUATION, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, length: int | None = None) -> bytes:
    """A client frame as RFC 6455 §5.2 lays it out (masked), right or wrong: ``rsv``
    sets the reserved bits (4 = RSV1), ``length`` declares another payload length."""
    mask = b"\x5a\xa5\x3c\xc3"
    size = len(payload) if length is None else length
    head = bytes([fin << 7 | rsv << 4 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    masked = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), len(payload))
    return head + mask + masked.tobytes()


async def refusal(url: str, *, raw: bytes = b"", send: list[str | bytes] | None = None,
                  compression: str | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """Connect, write ``raw`` bytes past the client's framing (or ``send`` messages),
    and return what the server sent until it closed, and its close code."""
    async with websockets.connect(url, compression=compression, max_size=None) as ws:
        try:
            for message in send or []:
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass
        if raw:
            ws.transport.write(raw)
        messages = await asyncio.wait_for(drain(ws), timeout(30))
    return messages, ws.close_code


def assert_explained(messages: list[dict[str, Any]], close_code: int | None, code: str | None = None) -> None:
    """The server's close came after exactly one error event, and README lists the pair."""
    errors = [m for m in messages if m.get("type") == "error"]
    assert len(errors) == 1 and messages[-1] is errors[0], messages
    assert (errors[0]["code"], close_code) in documented_closes()[0], (errors[0], close_code)
    assert errors[0]["code"] != "internal_error"
    if code is not None:
        assert errors[0]["code"] == code, errors[0]


LIBRARY_REFUSALS: list[tuple[str, bytes, str | None, str, int]] = [
    ("rsv2", frame(TEXT, b"{}", rsv=2), None, "framing_error", 1002),
    ("rsv3", frame(BINARY, b"\x00\x00", rsv=1), None, "framing_error", 1002),
    ("rsv1-uncompressed", frame(TEXT, b"{}", rsv=4), None, "framing_error", 1002),
    ("opcode-3", frame(0x3, b"x"), None, "framing_error", 1002),
    ("opcode-11", frame(0xB), None, "framing_error", 1002),
    ("stray-continuation", frame(CONTINUATION, b"x"), None, "framing_error", 1002),
    ("text-inside-fragments", frame(TEXT, b"[", fin=False) + frame(TEXT, b"]"), None, "framing_error", 1002),
    ("fragmented-ping", frame(PING, b"x", fin=False), None, "framing_error", 1002),
    ("long-ping", frame(PING, b"x" * 126), None, "framing_error", 1002),
    ("close-code-1005", frame(CLOSE, (1005).to_bytes(2, "big")), None, "framing_error", 1002),
    ("close-one-byte", frame(CLOSE, b"\x03"), None, "framing_error", 1002),
    ("close-reason-not-utf8", frame(CLOSE, (1000).to_bytes(2, "big") + b"\xff"), None, "invalid_json", 1007),
    ("text-not-utf8", frame(TEXT, b'{"type": "\xff"}'), None, "invalid_json", 1007),
    ("fragments-not-utf8", frame(TEXT, b"\xe2\x82", fin=False) + frame(CONTINUATION, b"\x28"), None,
     "invalid_json", 1007),
    ("huge-declared-length", frame(BINARY, length=1 << 62), None, "message_too_big", 1009),
    ("not-deflate", frame(TEXT, b"not deflate data", rsv=4), "deflate", "framing_error", 1002),
]


@pytest.mark.parametrize("socket", ["ingest", "captions"])
@pytest.mark.parametrize(("name", "raw", "compression", "code", "close_code"), LIBRARY_REFUSALS,
                         ids=[case[0] for case in LIBRARY_REFUSALS])
async def test_frames_the_library_refuses_are_explained(sphinx_server: LiveServer, socket: str, name: str,
                                                        raw: bytes, compression: str | None, code: str,
                                                        close_code: int) -> None:
    room = f"frames-{socket}"
    url = sphinx_server.ingest_url(room) if socket == "ingest" else sphinx_server.captions_url(room)
    messages, closed_with = await refusal(url, raw=raw, compression=compression)
    assert_explained(messages, closed_with, code)
    assert closed_with == close_code


@pytest.mark.parametrize(("socket", "limit"), [("ingest", 2 * 524288), ("captions", 4096)])
async def test_frames_over_twice_the_limit_are_explained(sphinx_server: LiveServer, socket: str, limit: int) -> None:
    """The library refuses these before livecap sees them (its own check takes
    frames up to twice ``max_message_bytes``); the client still learns why."""
    room = "oversized"
    url = sphinx_server.ingest_url(room) if socket == "ingest" else sphinx_server.captions_url(room)
    messages, closed_with = await refusal(url, send=[bytes(limit + 1)])
    assert_explained(messages, closed_with, "message_too_big")
    assert closed_with == 1009


# --- JSON at the boundary -------------------------------------------------------------------------------------------

HOSTILE_JSON = ["[" * 1000, "[" * 1000 + "]" * 1000, '{"a":' * 1000, '{"type": "ack", "seq": ' + "9" * 5000 + "}",
                '{"type": "start", "sample_rate": ' + "1" * 4400 + "}"]


@pytest.mark.parametrize("text", HOSTILE_JSON, ids=["open", "closed", "objects", "long-int", "long-int-start"])
def test_every_json_parse_failure_is_invalid_json(text: str) -> None:
    with pytest.raises(InvalidJson):
        IngestProtocol().receive_text(text, 0.0)
    with pytest.raises(InvalidJson):
        ViewerInbox(live_from=0).receive_text(text, 0.0, sent_seq=0)


@pytest.mark.parametrize("text", [json.dumps({"type": "x" * 400_000}), json.dumps({"type": ["["] * 50_000}),
                                  '{"type": ' + "[" * 900 + "]" * 900 + "}"], ids=["long", "wide", "deep"])
def test_error_messages_do_not_echo_what_was_sent(text: str) -> None:
    for receive in (lambda: IngestProtocol().receive_text(text, 0.0),
                    lambda: ViewerInbox(live_from=0).receive_text(text, 0.0, sent_seq=0)):
        with pytest.raises(ProtocolError) as raised:
            receive()
        assert len(raised.value.message) < 100, raised.value.message[:200]


async def test_deeply_nested_json_is_invalid_json_on_both_sockets(sphinx_server: LiveServer) -> None:
    for url in (sphinx_server.ingest_url("nested"), sphinx_server.captions_url("nested")):
        messages, closed_with = await refusal(url, send=["[" * 1000])
        assert_explained(messages, closed_with, "invalid_json")
        assert closed_with == 1007


async def test_refused_connections_leave_nothing_behind(tmp_path: Path) -> None:
    """aiohttp 3.14 re-armed the heartbeat when the peer's close frame came in after the server's
    close, and the timer held each refused connection (~10 KB) for 1.5 heartbeats: a flood of
    refusals (a bad room name, a bad first message, a frame the library refuses) grew memory."""
    server = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none", heartbeat_s=200.0)
    sockets = server.app[SOCKETS]
    urls = [server.captions_url("abc%0B"), server.ingest_url("refused", key="wrong")]
    for url in urls * 5:
        messages, closed_with = await refusal(url)
        assert_explained(messages, closed_with)
    for url in (server.ingest_url("nested"), server.captions_url("nested")):
        await refusal(url, send=["[" * 1000])
        await refusal(url, raw=frame(TEXT, b"{}", rsv=2))
    # The handlers return within a lingering close (LINGER_S) and aiohttp's close timeout: seconds,
    # more than 15 on a loaded CI machine once. The bug held them for 1.5 heartbeats (300 s here).
    deadline = time.monotonic() + 60
    while sockets and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        gc.collect()
    assert not sockets, ("the server still holds refused connections", [
        [type(r).__name__ for r in gc.get_referrers(ws)] for ws in sockets])
    await server.runner.cleanup()


# --- query strings and paths ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("after_seq", ["%C2%B2", "%D9%A1%D9%A2", "%EF%BC%91", "1" * 19, "", "-1", "+1", "%201",
                                       "1.0", "0x10"])
async def test_after_seq_takes_only_short_ascii_digits(sphinx_server: LiveServer, after_seq: str) -> None:
    messages, closed_with = await refusal(sphinx_server.captions_url("after-seq", after_seq=after_seq))
    assert_explained(messages, closed_with, "protocol_error")
    assert closed_with == 1008


BAD_NAMES = ["abc%0A", "abc%0D", "abc%0D%0A", "%0Aabc", "abc%00", "ab%20c", "a" * 65, "%C3%A9t%C3%A9", ".hidden",
             "abc%E2%80%A8", "abc%0B"]


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "abc\x00", "ab c", "", "a" * 65, "été", ".hidden", "-x",
                                  "abc\u2028", "../etc", "١٢٣"])
def test_room_names_are_matched_whole(name: str) -> None:
    assert not is_room_name(name)


async def test_bad_room_names_are_refused_on_every_route(sphinx_server: LiveServer) -> None:
    data_dir = sphinx_server.app[ROOMS].store.directory  # type: ignore[union-attr]
    before = set(data_dir.iterdir())
    operator = {"Authorization": f"Bearer {sphinx_server.keys.key('operator')}"}
    async with aiohttp.ClientSession() as http:
        for name in BAD_NAMES:
            for url in (f"{sphinx_server.ws_base}/ws/ingest/{name}?token={sphinx_server.keys.key('operator')}",
                        f"{sphinx_server.ws_base}/ws/captions/{name}"):
                messages, closed_with = await refusal(url, send=['{"type": "start"}'])
                assert_explained(messages, closed_with, "protocol_error")
            for path in (f"/view/{name}", f"/overlay/{name}", f"/speak/{name}", f"/qr/{name}",
                         f"/rooms/{name}/qr.svg", f"/rooms/{name}/transcript.txt"):
                async with http.get(f"{sphinx_server.base}{path}") as response:
                    assert response.status == 404, (path, response.status)
            async with http.post(f"{sphinx_server.base}/operator/rooms/{name}/end", headers=operator) as response:
                assert response.status == 404
            assert unquote(name) not in sphinx_server.app[ROOMS].rooms
    assert set(data_dir.iterdir()) == before, "no transcript file for a bad name"


async def test_keys_are_bounded_before_use(sphinx_server: LiveServer) -> None:
    async with aiohttp.ClientSession() as http:
        for token in ("a" * 3000, "a" * 257, "%C3%A9" * 10):
            for path in ("/qr/x", "/rooms/x/qr.svg"):
                async with http.get(f"{sphinx_server.base}{path}?token={token}") as response:
                    assert response.status == 400, (path, token[:10], response.status)
            async with http.get(f"{sphinx_server.base}/operator/rooms?token={token}") as response:
                assert response.status == 401
        async with http.get(f"{sphinx_server.base}/qr/x?token={'a' * 256}") as response:
            assert response.status == 200, "the longest key allowed still fits in the QR code"
    messages, closed_with = await refusal(sphinx_server.ingest_url("long-key", "k" * 3000))
    assert_explained(messages, closed_with, "unauthorized")


# --- the operator's fault injector ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", ['{"delay_s": NaN}', '{"delay_s": -1}', '{"delay_s": Infinity}', '{"delay_s": 61}',
                                  '{"failure_rate": NaN}', '{"failure_rate": -0.1}', '{"failure_rate": 1.5}',
                                  '{"failure_rate": -Infinity}', '{"delay_s": "1e400"}', '{"delay_s": true}',
                                  '{"delay_s": null}', "[1]", "[" * 5000, "not json", "\xff", "\udc80{}"])
async def test_faults_must_be_finite_and_in_range(sphinx_server: LiveServer, body: str) -> None:
    url = f"{sphinx_server.base}/operator/faults"
    operator = {"Authorization": f"Bearer {sphinx_server.keys.key('operator')}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body.encode("utf-8", "surrogateescape"), headers=operator) as response:
            assert response.status == 400, await response.text()
        async with http.post(url, json={"delay_s": 0.0, "failure_rate": 0.0}, headers=operator) as response:
            assert response.status == 200 and await response.json() == {"delay_s": 0.0, "failure_rate": 0.0}


def test_faults_refuse_what_comparisons_let_through() -> None:
    for delay_s, failure_rate in [(math.nan, 0.0), (0.0, math.nan), (math.inf, 0.0), (-0.5, 0.0), (0.0, 2.0)]:
        with pytest.raises(ValueError):
            Faults(delay_s, failure_rate)
    assert Faults(60.0, 1.0).active


# --- kind 6: keyless viewers cannot take what publishers need -------------------------------------------------------

async def viewer(url: str) -> websockets.ClientConnection:
    """A connected viewer, once the server has registered it (a ping answered after its upgrade)."""
    ws = await websockets.connect(url)
    await ws.ping()
    return ws


async def start_publisher(server: LiveServer, room: str) -> tuple[websockets.ClientConnection, dict[str, Any]]:
    """A publisher that sent ``start``, and the server's answer (``ready``, or the error it was refused with)."""
    ws = await websockets.connect(server.ingest_url(room))
    with contextlib.suppress(websockets.ConnectionClosed):  # a refused publisher may be closed already
        await ws.send(json.dumps({"type": "start"}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), timeout(30)))


async def test_viewers_of_invented_rooms_do_not_lock_publishers_out(tmp_path: Path) -> None:
    """The case from the issue: 100 keyless viewers of invented names used to
    fill ``max_rooms``, and a publisher with a valid key got ``server_busy``."""
    server = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none")
    viewers: list[websockets.ClientConnection] = []
    try:
        viewers = list(await asyncio.gather(*(viewer(server.captions_url(f"invented-{i}")) for i in range(100))))
        publisher, answer = await start_publisher(server, "keynote")
        assert answer["type"] == "ready", answer
        await publisher.close()
    finally:
        await asyncio.gather(*(ws.close() for ws in viewers))
        await server.runner.cleanup()


async def test_viewer_rooms_have_their_own_bound(tmp_path: Path) -> None:
    server = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none", max_audio_rate=50.0,
                                max_rooms=1, max_viewer_rooms=3)
    rooms, viewers = server.app[ROOMS], list[websockets.ClientConnection]()
    try:
        result = await stream_audio(server.ingest_url("talk-1"), audio("librispeech-1988-24833-0000"), speed=8.0)
        assert result.finals, "talk-1 has a transcript"
        viewers = [await viewer(server.captions_url(f"waiting-{i}")) for i in range(3)]
        messages, closed_with = await refusal(server.captions_url("waiting-3"))
        assert_explained(messages, closed_with, "server_busy")
        assert closed_with == 1013

        async with aiohttp.ClientSession() as http:  # downloads hold no room
            for i in range(10):
                async with http.get(f"{server.base}/rooms/download-{i}/transcript.txt") as response:
                    assert response.status == 200
            async with http.get(f"{server.base}/rooms/talk-1/transcript.txt") as response:
                assert "kittens" in (await response.text()).lower()
        assert not any(name.startswith("download-") for name in rooms.rooms)

        publisher, answer = await start_publisher(server, "talk-2")  # talk-1's publisher left: its place is free
        assert answer["type"] == "ready", answer
        assert "talk-1" not in rooms.rooms, "an idle room left memory"
        async with websockets.connect(server.captions_url("talk-1")) as ws:  # a stored transcript is still shown
            replayed = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
            assert replayed["kind"] == "final" and replayed["room"] == "talk-1"
        async with websockets.connect(server.captions_url("talk-2")) as ws:  # a publisher's room always is
            await ws.ping()
            assert ws.close_code is None

        second, answer = await start_publisher(server, "talk-3")
        assert (answer["type"], answer["code"]) == ("error", "server_busy"), answer
        await second.close()
        await publisher.close()

        await viewers.pop().close()  # a waiting phone leaves: its place is free for another
        await asyncio.wait_for(_until(lambda: not rooms.rooms["waiting-2"].viewers), timeout(10))
        viewers.append(await viewer(server.captions_url("waiting-4")))
        assert "waiting-4" in rooms.rooms
    finally:
        await asyncio.gather(*(ws.close() for ws in viewers))
        await server.runner.cleanup()


async def test_a_room_whose_publisher_left_gives_its_place_up(tmp_path: Path) -> None:
    """Viewers who stay in a finished talk keep watching it, but do not hold the publishers' place."""
    server = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none", max_rooms=1)
    try:
        lingering = await viewer(server.captions_url("morning"))
        publisher, answer = await start_publisher(server, "morning")
        assert answer["type"] == "ready"
        await publisher.send(json.dumps({"type": "stop"}))
        while json.loads(await publisher.recv())["type"] != "stopped":
            pass
        await publisher.close()
        afternoon, answer = await start_publisher(server, "afternoon")
        assert answer["type"] == "ready", answer
        await lingering.ping()
        assert lingering.close_code is None, "the lingering viewer is still connected"
        await afternoon.close()
        await lingering.close()
    finally:
        await server.runner.cleanup()


async def test_viewers_of_invented_rooms_do_not_take_the_publishers_metric_labels(tmp_path: Path) -> None:
    from livecap.metrics import MAX_ROOM_LABELS
    from tests.test_operator import scrape, value

    server = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none")
    viewers: list[websockets.ClientConnection] = []
    try:
        viewers = list(await asyncio.gather(*(viewer(server.captions_url(f"label-{i}"))
                                              for i in range(MAX_ROOM_LABELS + 5))))
        early = await viewer(server.captions_url("keynote"))  # came before the speaker
        publisher, answer = await start_publisher(server, "keynote")
        assert answer["type"] == "ready"
        metrics = await scrape(server)
        assert value(metrics, "livecap_viewers", room="keynote") == 1, "the keynote has its own label"
        assert value(metrics, "livecap_viewers", room="other") == MAX_ROOM_LABELS + 5
        viewers += [early, publisher]
    finally:
        await asyncio.gather(*(ws.close() for ws in viewers))
        await server.runner.cleanup()


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)
