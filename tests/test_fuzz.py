"""A bounded fuzz of both sockets and the HTTP routes (Hypothesis).

Whatever a client sends (text and binary messages, start messages with odd
fields, raw frames with any header bits, odd paths, query strings and
bodies), the server answers within its documented protocol: never a 5xx,
never ``internal_error``, and every close it starts follows an ``error``
event whose (code, close code) README's table lists. A witness viewer in
another room is pinged after every example, and the last test streams
real speech through the fuzzed server.

Bounded for CI: fixed examples (``derandomize``, no example database),
small frames, and a few dozen examples per test, so the file takes seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
import websockets
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.protocol import State

from livecap.asr.faults import MAX_DELAY_S
from livecap.client import stream_audio
from livecap.rooms import is_room_name
from tests.conftest import LiveServer, timeout
from tests.speech import audio
from tests.test_docs import documented_closes
from tests.test_hostile import frame
from tests.test_operator import scrape, value
from tests.test_server import drain

FUZZ = settings(max_examples=200, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
WITNESS_ROOM = "fuzz-witness"

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=10), children, max_size=4),
                           max_leaves=12)
start_messages = st.fixed_dictionaries(
    {"type": st.just("start")},
    optional={"format": st.sampled_from(["s16le", "f32le", "opus", ""]) | json_values,
              "sample_rate": st.sampled_from([8000, 16000, 44100, 48000]) | st.integers() | json_values,
              "channels": st.sampled_from([1, 2]) | st.integers(-2, 8) | json_values,
              "language": st.sampled_from(["en", "xx"]) | json_values})
control_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["stop", "ack", "flag", "rating", "play", ""]) | json_values},
    optional={"seq": st.integers(-5, 10**20) | json_values, "age_ms": st.floats() | json_values,
              "stars": st.integers(-1, 7) | json_values})
operator_bodies = st.fixed_dictionaries({}, optional={
    "seq": st.integers(-5, 10**20) | json_values, "text": st.text(max_size=50) | json_values,
    "terms": json_values, "glossary": json_values, "profanity": json_values, "viewer_keys": json_values,
    "recording": json_values}).map(json.dumps)
"""Corrections, settings and glossary terms, well-formed and not."""
text_messages = (start_messages | control_messages | json_values).map(json.dumps) | st.text(max_size=200)
raw_frames = st.builds(frame, opcode=st.integers(0, 15), payload=st.binary(max_size=130), fin=st.booleans(),
                       rsv=st.integers(0, 7))
raw = raw_frames.map(lambda raw: ("raw", raw))
frames = st.one_of(
    st.lists(text_messages, min_size=1, max_size=4),
    st.lists(raw, min_size=1, max_size=3),
    st.tuples(start_messages.map(json.dumps), st.lists(st.binary(max_size=2000) | raw, max_size=4),
              st.sampled_from([[], ['{"type": "stop"}']])).map(lambda t: [t[0], *t[1], *t[2]]),
    st.lists(text_messages | st.binary(max_size=2000) | raw, max_size=5))
valid_names = st.sampled_from(["fuzz", "fuzz.room-1", "a" * 64]) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
                                                                                  fullmatch=True)
bad_names = st.sampled_from(["a" * 65, "abc\n", "..", "é", ""]) | st.text(max_size=70)
names = st.sampled_from([valid_names, valid_names, valid_names, bad_names]).flatmap(lambda names: names)
"""Mostly valid, so that the fuzz gets past the room check."""
query_values = st.sampled_from(["", "0", "5", "²", "-1", "9" * 30, "a" * 257, "a" * 3000]) | st.text(max_size=40)
fault_values = st.sampled_from([0, 0.001, 1, -1, 61, 1e400, -1e400, "0", True, None]) | st.floats() | json_values
"""Delays that pass are short: a real inference thread sleeps through them."""
fault_bodies = st.fixed_dictionaries({}, optional={"delay_s": fault_values, "failure_rate": fault_values})
queries = st.fixed_dictionaries({}, optional={"after_seq": st.integers(0, 10**6).map(str) | query_values,
                                              "token": query_values, "x": query_values})


@pytest.fixture(scope="module")
async def witness(sphinx_server: LiveServer) -> AsyncIterator[websockets.ClientConnection]:
    """A viewer of another room, open through the whole fuzz."""
    async with websockets.connect(sphinx_server.captions_url(WITNESS_ROOM)) as ws:
        yield ws


def with_query(path: str, query: dict[str, str]) -> str:
    return f"{path}?{urlencode(query)}" if query else path


async def exchange(url: str, messages: list[Any]) -> tuple[list[dict[str, Any]], websockets.ClientConnection]:
    """Send ``messages`` (raw frames written past the client's framing) and ping:
    the pong shows that the server read them all and kept the connection. If the
    server closed it instead, everything it sent."""
    async with websockets.connect(url, max_size=None, max_queue=None, compression=None) as ws:
        try:
            for message in messages:
                if isinstance(message, tuple):
                    if ws.state is not State.OPEN:  # the server closed: the library half-closed the socket
                        break
                    ws.transport.write(message[1])
                else:
                    await ws.send(message)
            await asyncio.wait_for(await ws.ping(), timeout(30))
            return [], ws
        except websockets.ConnectionClosed:
            return await drain(ws), ws


def check_socket(received: list[dict[str, Any]], ws: websockets.ClientConnection, answered_close: bool) -> None:
    """No ``internal_error``; a close the server started came after an error
    event, both in README's table (a close we wrote ourselves is answered with 1000)."""
    assert all(m.get("code") != "internal_error" for m in received), received
    if ws.protocol.close_rcvd_then_sent is not True:
        event("kept open")
        return  # the server answered the client's close (or is still open)
    event(f"closed {ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None} "
          f"{received[-1].get('code') if received else None}")
    assert ws.protocol.close_rcvd is not None, "a close frame, not a dropped connection"
    if ws.protocol.close_rcvd.code == 1000 and answered_close:
        return
    errors = [m for m in received if m.get("type") == "error"]
    assert errors and received[-1] is errors[-1], ("a server close follows an error event", received)
    close = ws.protocol.close_rcvd
    assert (errors[-1]["code"], close.code) in documented_closes()[0], (errors[-1], close)


async def witness_alive(witness: websockets.ClientConnection) -> None:
    await asyncio.wait_for(await witness.ping(), timeout(10))


@FUZZ
@given(socket=st.sampled_from(["ingest", "captions"]), room=names, keyed=st.sampled_from([True, True, False]),
       query=queries,
       messages=frames)
async def test_fuzz_the_sockets(sphinx_server: LiveServer, witness: websockets.ClientConnection, socket: str,
                                room: str, keyed: bool, query: dict[str, str], messages: list[Any]) -> None:
    if keyed:
        query = {**query, "token": sphinx_server.keys.key("publisher", room)}
    url = with_query(f"{sphinx_server.ws_base}/ws/{socket}/{quote(room, safe='')}", query)
    try:
        received, ws = await exchange(url, messages)
    except websockets.InvalidStatus as refused:  # a path the router does not match: 404, never 5xx
        assert refused.response.status_code < 500
        return
    check_socket(received, ws, answered_close=any(isinstance(m, tuple) and m[1][0] & 0xF == 0x8 for m in messages))
    await witness_alive(witness)


ROUTES = [("GET", path) for path in ("/healthz", "/readyz", "/metrics", "/dashboard", "/operator/rooms",
                                     "/rooms/{room}/transcript.{x}", "/rooms/{room}/qr.svg", "/qr/{room}",
                                     "/view/{room}", "/overlay/{room}", "/speak/{room}", "/edit/{room}",
                                     "/operator/rooms/{room}/settings", "/static/{x}", "/{x}")]
ROUTES += [("POST", "/operator/faults"), ("POST", "/operator/rooms/{room}/end"),
           ("POST", "/operator/rooms/{room}/corrections"), ("PATCH", "/operator/rooms/{room}/settings"),
           ("POST", "/operator/rooms/{room}/glossary")]


@settings(FUZZ, max_examples=500)
@given(route=st.sampled_from(ROUTES), other_method=st.sampled_from([None] * 5 + ["POST", "HEAD", "PUT"]),
       room=names,
       x=st.sampled_from(["txt", "json", "vtt", "srt", "doc", "captions.js", "../README.md", "%2e%2e/x"])
       | st.text(max_size=20), query=queries, operator=st.booleans(),
       body=st.none() | text_messages | fault_bodies.map(json.dumps) | operator_bodies | st.binary(max_size=300))
async def test_fuzz_the_http_routes(sphinx_server: LiveServer, witness: websockets.ClientConnection,
                                    route: tuple[str, str], other_method: str | None, room: str, x: str,
                                    query: dict[str, str], operator: bool, body: str | bytes | None) -> None:
    method, path_template = other_method or route[0], route[1]
    path = path_template.replace("{room}", quote(room, safe="")).replace("{x}", quote(x, safe="/."))
    headers = {"Authorization": f"Bearer {sphinx_server.keys.key('operator')}"} if operator else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, sphinx_server.base + with_query(path, query), data=body,
                                headers=headers) as response:
            await response.read()
            assert response.status < 500, (method, path, query, response.status)
            event(f"status {response.status}")
            if response.status == 200 and "{room}" in path_template:
                assert is_room_name(room), "pages and files only for valid room names"
            if response.status == 200 and path == "/operator/faults":
                faults = await response.json()
                assert 0 <= faults["delay_s"] <= MAX_DELAY_S and 0 <= faults["failure_rate"] <= 1, faults
        # the fault injector is real: put it back before anything else runs
        await http.post(f"{sphinx_server.base}/operator/faults", json={"delay_s": 0, "failure_rate": 0},
                        headers={"Authorization": f"Bearer {sphinx_server.keys.key('operator')}"})
    await witness_alive(witness)


async def test_the_fuzzed_server_still_captions_a_room(sphinx_server: LiveServer,
                                                       witness: websockets.ClientConnection) -> None:
    """Runs after the fuzz above (pytest keeps file order): speech into the
    witness's room reaches it, and no connection ever got ``internal_error``."""
    result = await stream_audio(sphinx_server.ingest_url(WITNESS_ROOM), audio("librispeech-1988-24833-0000"),
                                speed=4.0)
    assert result.finals and result.messages[-1]["type"] == "stopped"
    seen: list[dict[str, Any]] = []
    while len(seen) < len(result.finals):
        message = json.loads(await asyncio.wait_for(witness.recv(), timeout(30)))
        if message.get("kind") == "final":
            seen.append(message)
    assert seen == result.finals
    assert value(await scrape(sphinx_server), "livecap_disconnects_total", code="internal_error") == 0
