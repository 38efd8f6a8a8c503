"""Scale-out through a real Redis (``--redis``): three real nodes on loopback share their rooms.

A publisher on one node, viewers on the others: the same seqs and finals everywhere; a publisher
moving to another node takes the room over; resume, export and corrections from any node; Redis
restarted or unreachable mid-stream loses no final.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis
import websockets
from redis import asyncio as aioredis

from benchmarks.cluster import Node, RedisServer, failover
from benchmarks.scoring import word_error_rate
from livecap.appkeys import METRICS, OPTIONS, ROOMS
from livecap.asr.engine import Word
from livecap.audio import float_to_s16le
from livecap.auth import Keys
from livecap.captions import CaptionState, SeqCounter
from livecap.cli import main
from livecap.client import stream_audio
from livecap.cluster import REPLY_S, START_S, Cluster, entries, merged
from livecap.config import ServerOptions
from livecap.metrics import Metrics
from livecap.server import create_app
from tests.conftest import LiveServer, start_server, timeout
from tests.speech import audio, recordings
from tests.test_server import POCKETSPHINX_WER_BOUND, check_invariants, collect, drain

SPEECH = ["librispeech-2412-153948-0000", "librispeech-1988-24833-0001"]
KILLED = ["librispeech-1988-24833-0000", "librispeech-2412-153948-0002", "ljspeech-LJ050-0160"]
"""Speech streamed while its node is killed: the kill comes 6 s in, inside the second recording."""


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def nodes(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> AsyncIterator[
        list[LiveServer]]:
    """Three nodes (PocketSphinx, lenient on rate so tests stream faster than real time), one Redis."""
    started = [await start_server(tmp_path_factory.mktemp(f"node-{name}"), engine="pocketsphinx",
                                  fallback_engine="none", max_audio_rate=50.0, redis=redis_server.url, node=name,
                                  lease_s=1.5)
               for name in "abc"]
    yield started
    for node in started:
        await node.runner.cleanup()


async def started(url: str) -> websockets.ClientConnection:
    """A publisher whose session started (``ready``), sending no audio yet."""
    publisher = await websockets.connect(url)
    await publisher.send(json.dumps({"type": "start"}))
    assert json.loads(await publisher.recv())["type"] == "ready"
    return publisher


async def patch_settings(http: aiohttp.ClientSession, node: LiveServer, room: str, values: dict[str, Any]) -> None:
    """An operator's change of the room's settings, made on ``node``."""
    async with http.patch(f"{node.base}/operator/rooms/{room}/settings", json=values,
                          headers={"Authorization": f"Bearer {node.keys.key('operator')}"}) as response:
        assert response.status == 200, await response.text()


def captions(messages: list[dict[str, Any]], kinds: tuple[str, ...] = ("final", "correction")) -> list[
        tuple[int, str, str]]:
    return [(m["seq"], m["kind"], m["text"]) for m in messages if m.get("type") == "caption" and m["kind"] in kinds]


async def test_viewers_on_other_nodes_get_the_publishers_captions(nodes: list[LiveServer]) -> None:
    a, b, c = nodes
    room, done = "shared", asyncio.Event()
    on_b: list[dict[str, Any]] = []
    on_c: list[dict[str, Any]] = []
    viewers = [asyncio.create_task(collect(b.captions_url(room), done, on_b)),
               asyncio.create_task(collect(c.captions_url(room), done, on_c))]
    await asyncio.sleep(0.3)
    result = await stream_audio(a.ingest_url(room), np.concatenate([audio(r) for r in SPEECH]), speed=3.0)
    done.set()
    await asyncio.gather(*viewers)
    finals = captions(result.messages)
    assert len(finals) >= 2
    assert captions(on_b) == finals and captions(on_c) == finals, "the same finals with the same seqs"
    for seen in (on_b, on_c):
        check_invariants(seen)
        partial_seqs = {m["seq"] for m in result.messages if m.get("kind") == "partial"}
        assert {m["seq"] for m in seen if m.get("kind") == "partial"} <= partial_seqs
    # resume and export from any node
    first = finals[0][0]
    async with websockets.connect(c.captions_url(room, after_seq=first)) as ws:
        resumed = [json.loads(await asyncio.wait_for(ws.recv(), timeout(10))) for _ in finals[1:]]
    assert captions(resumed) == finals[1:]
    async with aiohttp.ClientSession() as http:
        texts = []
        for node in nodes:
            async with http.get(f"{node.base}/rooms/{room}/transcript.txt") as response:
                texts.append(await response.text())
    assert texts[0] == texts[1] == texts[2] and texts[0].strip()


async def test_a_publisher_on_another_node_takes_the_room_over(nodes: list[LiveServer]) -> None:
    a, b, c = nodes
    room, done = "moving", asyncio.Event()
    on_c: list[dict[str, Any]] = []
    viewer = asyncio.create_task(collect(c.captions_url(room), done, on_c))
    first = await started(a.ingest_url(room))
    await first.send(float_to_s16le(audio("librispeech-2412-153948-0002")))
    await asyncio.sleep(1.0)
    second = await stream_audio(b.ingest_url(room), audio("librispeech-3752-4944-0001"), speed=4.0)
    assert second.finals
    messages = await drain(first)
    assert any(m.get("kind") == "final" for m in messages), "the replaced publisher's speech was finalised"
    assert messages[-1]["code"] == "publisher_replaced" and first.close_code == 4409
    done.set()
    await viewer
    check_invariants(on_c)
    seen = captions(on_c)
    assert [s for s, _, _ in seen] == sorted({s for s, _, _ in seen}), "seq strictly increasing, no repeats"
    assert set(captions(second.messages)) <= set(seen), "the new owner's finals reach the other node"
    assert captions(messages) and set(captions(messages)) <= set(seen), "and so did the first one's"


async def test_corrections_go_to_the_node_that_captions(nodes: list[LiveServer], redis_server: RedisServer) -> None:
    a, b, _ = nodes
    room = "edited"
    result = await stream_audio(a.ingest_url(room), audio(SPEECH[0]), speed=3.0)
    final = result.finals[0]
    headers = {"Authorization": f"Bearer {b.keys.key('operator')}"}
    async with aiohttp.ClientSession() as http, websockets.connect(a.captions_url(room)) as viewer:
        # the publisher has gone: node B may take the room for the edit
        async with http.post(f"{b.base}/operator/rooms/{room}/corrections", headers=headers,
                             json={"seq": final["seq"], "text": "corrected on b"}) as response:
            assert response.status == 200, await response.text()
            correction = await response.json()
        assert correction["seq"] > max(m["seq"] for m in result.messages if m.get("type") == "caption")
        while (message := json.loads(await asyncio.wait_for(viewer.recv(), timeout(10))))["seq"] != correction["seq"]:
            pass
        assert message["text"] == "corrected on b", "the viewer on node A got node B's correction"
        # while a publisher streams to A, only A gives out the room's seqs: B has A make it
        publisher = await started(a.ingest_url(room))
        async with http.post(f"{b.base}/operator/rooms/{room}/corrections", headers=headers,
                             json={"seq": correction["seq"], "text": "again"}) as response:
            assert response.status == 200, await response.text()
            again = await response.json()
        assert again["seq"] > correction["seq"] and again["text"] == "again"
        while (message := json.loads(await asyncio.wait_for(viewer.recv(), timeout(10))))["seq"] != again["seq"]:
            pass
        assert a.app[ROOMS].rooms[room].owned, "A still captions the room"
        async with http.post(f"{b.base}/operator/rooms/{room}/corrections", headers=headers,
                             json={"seq": correction["seq"], "text": "stale"}) as response:
            assert response.status == 409 and (await response.json())["code"] == "edit_conflict", \
                "A's refusal, as A gives it"
        await publisher.close()


async def test_flags_and_ratings_on_any_node_count_where_the_room_is_captioned(nodes: list[LiveServer]) -> None:
    """The editor's list of flagged lines and the quality figures are the captioning node's: a
    viewer's flag or rating on another node goes there, and the viewer gets that node's answer."""
    a, _, c = nodes
    room = "flagged-elsewhere"
    publisher = await started(a.ingest_url(room))
    async with websockets.connect(c.captions_url(room)) as viewer:
        await asyncio.sleep(0.3)
        said = float_to_s16le(np.concatenate([audio(SPEECH[0]), np.zeros(32000, dtype=np.float32)]))
        for start in range(0, len(said), 32000):  # the publisher stays: the room stays a's
            await publisher.send(said[start : start + 32000])
        while (final := json.loads(await asyncio.wait_for(viewer.recv(), timeout(20)))).get("kind") != "final":
            pass
        assert c.app[METRICS].registry.get_sample_value("livecap_viewers", {"room": room}) == 1, \
            "c counts its viewer under the room's name, not 'other'"
        for ask in ({"type": "flag", "seq": final["seq"]}, {"type": "flag", "seq": final["seq"]},
                    {"type": "flag", "seq": 10**6}, {"type": "rating", "stars": 2}):
            await viewer.send(json.dumps(ask))
        answers: list[dict[str, Any]] = []
        while len(answers) < 4:
            if (message := json.loads(await asyncio.wait_for(viewer.recv(), timeout(10))))["type"] != "caption":
                answers.append(message)
    assert sorted((m["type"], str(m.get("counted")), str(m.get("code"))) for m in answers) == [
        ("flagged", "False", "None"), ("flagged", "True", "None"), ("rated", "None", "None"),
        ("refused", "None", "unknown_seq")], "answered as they come (a forward takes its time)"
    owner = a.app[ROOMS].rooms[room]
    assert sum(owner.flags_by_version.values()) == 1 and list(owner.ratings.values()) == [2]
    assert [line["seq"] for line in owner.quality()["flagged"]] == [final["seq"]], "on the editor's list"
    await publisher.close()


async def test_an_operator_request_to_a_node_that_does_not_answer_is_refused_in_time(
        nodes: list[LiveServer], redis_server: RedisServer) -> None:
    """The room's lease names a node that died a moment ago: the request is answered 503, not hung."""
    b = nodes[1]
    room = "ghost-owned"
    redis.Redis(port=redis_server.port).set(f"livecap:{{{room}}}:owner", "ghost", px=20_000)
    headers = {"Authorization": f"Bearer {b.keys.key('operator')}"}
    async with aiohttp.ClientSession() as http:
        began = asyncio.get_running_loop().time()
        async with http.post(f"{b.base}/operator/rooms/{room}/end", headers=headers) as response:
            assert response.status == 503
            assert "ghost" in await response.text()
        assert asyncio.get_running_loop().time() - began < REPLY_S + 3
    redis.Redis(port=redis_server.port).delete(f"livecap:{{{room}}}:owner")


async def test_ending_a_room_on_any_node_ends_it_on_every_node(nodes: list[LiveServer]) -> None:
    """Behind a load balancer the operator's "end" lands on any node: the publisher's node ends the
    room, and viewers on every node get its last line, then room_ended (4410)."""
    a, b, c = nodes
    room = "ended-everywhere"
    on_c: list[dict[str, Any]] = []
    publisher = await started(a.ingest_url(room))
    async with websockets.connect(c.captions_url(room)) as viewer:
        await asyncio.sleep(0.3)
        await publisher.send(float_to_s16le(audio(SPEECH[0])[: 16000 * 4]))  # mid-sentence
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession() as http, http.post(
                f"{b.base}/operator/rooms/{room}/end",
                headers={"Authorization": f"Bearer {b.keys.key('operator')}"}) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"room": room, "ended": True, "publisher_closed": True,
                                             "viewers_closed": 0}, "a's answer: c's viewer is c's to close"
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                on_c.append(json.loads(await asyncio.wait_for(viewer.recv(), timeout(10))))
    assert viewer.close_code == 4410 and on_c[-1]["code"] == "room_ended"
    said = await drain(publisher)
    assert publisher.close_code == 4410
    assert captions(said) and captions(on_c) == captions(said), "c's viewer got the line the end made final"
    assert room not in a.app[ROOMS].rooms and room not in c.app[ROOMS].rooms


async def test_redis_restarted_mid_stream_loses_no_final(nodes: list[LiveServer], redis_server: RedisServer) -> None:
    a, b, c = nodes
    room, done = "redis-restart", asyncio.Event()
    on_b: list[dict[str, Any]] = []
    viewer = asyncio.create_task(collect(b.captions_url(room), done, on_b))
    await asyncio.sleep(0.3)
    publishing = asyncio.create_task(stream_audio(a.ingest_url(room), np.concatenate([audio(r) for r in SPEECH]),
                                                  speed=2.5))
    while not any(m.get("kind") == "final" for m in on_b):
        await asyncio.sleep(0.1)
    await asyncio.to_thread(redis_server.stop)
    await asyncio.sleep(2.0)  # A serves on while Redis is out; what it owes waits
    cluster = a.app[ROOMS].cluster
    assert cluster is not None and cluster.pending
    await asyncio.to_thread(redis_server.start)
    result = await publishing
    for _ in range(100):
        if not cluster.pending:
            break
        await asyncio.sleep(0.1)
    done.set()
    await viewer
    finals = captions(result.messages)
    assert captions(on_b) == finals, "every final reached node B once Redis was back"
    async with aiohttp.ClientSession() as http, http.get(f"{c.base}/rooms/{room}/transcript.json") as response:
        exported = await response.json()
    assert [line["text"] for line in exported] == [text for _, _, text in finals if text]


async def test_operators_see_every_nodes_rooms_and_each_node_labels_its_metrics(nodes: list[LiveServer]) -> None:
    a, b, c = nodes
    room = "seen-everywhere"
    publisher = await started(a.ingest_url(room))
    headers = {"Authorization": f"Bearer {c.keys.key('operator')}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # nodes publish their rooms every second
            async with http.get(f"{c.base}/operator/rooms", headers=headers) as response:
                snapshot = await response.json()
            if any(r["name"] == room for r in snapshot["rooms"]):
                break
            await asyncio.sleep(0.1)
        shown = next(r for r in snapshot["rooms"] if r["name"] == room)
        assert shown["node"] == "a" and shown["session"] is not None
        assert snapshot["cluster"]["node"] == "c" and snapshot["cluster"]["redis"] == "reachable"
        assert {n["node"] for n in snapshot["cluster"]["nodes"]} >= {"a"}
        async with http.get(f"{b.base}/readyz") as response:
            assert (await response.json())["cluster"] == {"node": "b", "redis_reachable": True, "pending_writes": 0}
        async with http.get(f"{b.base}/metrics") as response:
            exposition = await response.text()
    samples = [line for line in exposition.splitlines() if line and not line.startswith("#")]
    assert samples and all('node="b"' in line for line in samples), "every sample says which node it is from"
    await publisher.close()


async def test_pages_on_every_node_are_told_the_room_records(nodes: list[LiveServer]) -> None:
    """Privacy: a room whose audio is recorded says so on every page, whatever node serves it."""
    a, b, _ = nodes
    room = "recorded"
    publisher = await started(a.ingest_url(room))
    async with aiohttp.ClientSession() as http:
        await patch_settings(http, a, room, {"recording": True})
        await asyncio.sleep(0.5)
        async with websockets.connect(b.captions_url(room)) as viewer:
            told = json.loads(await asyncio.wait_for(viewer.recv(), timeout(10)))
            assert told["type"] == "room" and told["recording"] is True, "told at once by node b"
            await patch_settings(http, a, room, {"recording": False})
            while (message := json.loads(await asyncio.wait_for(viewer.recv(), timeout(10))))["type"] != "room":
                pass
            assert message["recording"] is False, "and when it stops"
    await publisher.close()


async def test_a_room_ended_after_a_change_of_its_state_starts_again_on_any_node(nodes: list[LiveServer]) -> None:
    """Regression: the newest entries of the room's live stream were its state (recording switched
    on) and its end; no node could take the room after (every publisher got internal_error)."""
    a, b, c = nodes
    room = "ended-then-again"
    headers = {"Authorization": f"Bearer {a.keys.key('operator')}"}
    publisher = await started(a.ingest_url(room))
    async with aiohttp.ClientSession() as http:
        await patch_settings(http, a, room, {"recording": True})
        async with http.post(f"{b.base}/operator/rooms/{room}/end", headers=headers) as response:
            assert response.status == 200, await response.text()
    await drain(publisher)
    assert publisher.close_code == 4410
    result = await stream_audio(c.ingest_url(room), audio(SPEECH[1]), speed=3.0)
    assert result.finals and not [m for m in result.messages if m.get("type") == "error"]


async def test_an_owner_that_stalled_past_its_lease_is_fenced_off(redis_server: RedisServer) -> None:
    """Regression: a node stopped (SIGSTOP, a long GC pause) past its lease while another made a
    correction took the lease back when it woke and wrote seqs below the other's: Redis refused
    them, so viewers elsewhere lost its finals. It now loses the room instead (its publisher is
    told and reconnects to a node that goes on above every seq)."""
    metrics = Metrics()
    stalled = Cluster.connect(redis_server.url, "stalled", metrics, 1.0, 60.0)
    other = Cluster.connect(redis_server.url, "other", metrics, 1.0, 60.0)
    lost: list[str] = []

    async def losing(room: str, node: str) -> None:
        lost.append(node)

    room = "stalled-owner"
    assert await stalled.acquire(room) == 0
    stalled.own(room, losing, lambda: 10)
    await stalled.redis.delete(f"livecap:{{{room}}}:owner")  # its lease ran out while it did not run
    await other.acquire(room, take=False)
    await other.reserve(room, 1500)  # the correction's seq block
    await other.release(room)
    stalled.start(lambda: [], ignore_settings, no_requests)
    other.start(lambda: [], ignore_settings, no_requests)
    try:
        for _ in range(30):
            if lost:
                break
            await asyncio.sleep(0.1)
        assert lost == [""] and room not in stalled.owned, "fenced off: no newer publisher to name"
        assert await stalled.redis.get(f"livecap:{{{room}}}:owner") is None, "not taken back"
        # Woken up, the room tells it whether an operator ended the room meanwhile (its publisher is
        # then told room_ended) or another node made a correction (its publisher reconnects there)
        assert not await stalled.ended_last(room)
        other.ended(room, 1500)
        assert await other.flush(room, 5.0)
        assert await stalled.ended_last(room)
        state = CaptionState(room)
        state.seqs.skip_to(1500)
        event = state.final(state.new_segment(), (Word("again", 0, 1, 1.0),), 0.0, 1.0, "e", "v", 0.0)
        assert event is not None
        other.append(event)
        assert await other.flush(room, 5.0)
        assert not await stalled.ended_last(room), "an event after the end: a new session"
    finally:
        await stalled.close()
        await other.close()


@pytest.mark.parametrize("meanwhile", ["correction", "end"])
async def test_a_publisher_of_a_node_fenced_off_reconnects_or_is_told_the_room_ended(
        nodes: list[LiveServer], redis_server: RedisServer, meanwhile: str) -> None:
    """Node a stalled past its lease while another node made a correction (its seq block is above
    a's) or ended the room: a makes no final of the open utterance (Redis would refuse its seq, so
    only a's own viewers would get it) and tells its publisher to reconnect (server_busy: the audio
    not acknowledged goes again to the room's node), or that the room ended."""
    a = nodes[0]
    room = f"fenced-{meanwhile}"
    publisher = await started(a.ingest_url(room))
    await publisher.send(float_to_s16le(audio(SPEECH[0])[: 16000 * 3]))  # mid-sentence: no final yet
    await asyncio.sleep(1.0)
    client = aioredis.Redis(port=redis_server.port, decode_responses=True)
    async with client.pipeline(transaction=True) as pipe:  # what a node taking the room while a stalled leaves
        pipe.delete(f"livecap:{{{room}}}:owner")
        pipe.set(f"livecap:{{{room}}}:seq", 100_000)
        if meanwhile == "end":
            pipe.xadd(f"livecap:{{{room}}}:live", {"ended": f"{time.time():.3f}"}, id="100000-*")
        await pipe.execute()
    await client.aclose()
    said = await drain(publisher)
    assert not [m for m in said if m.get("kind") == "final"], "nothing made that the room's log refuses"
    if meanwhile == "end":
        assert publisher.close_code == 4410 and said[-1]["code"] == "room_ended"
    else:
        assert publisher.close_code == 1013 and said[-1]["code"] == "server_busy"


async def test_a_correction_waits_for_a_publisher_taking_the_room_over(nodes: list[LiveServer],
                                                                        redis_server: RedisServer) -> None:
    """Regression: between the old owner letting go and the new publisher's node taking the room,
    a correction on a third node took the lease (and a seq block), in the new owner's way."""
    a, b, _ = nodes
    room = "claimed"
    result = await stream_audio(a.ingest_url(room), audio(SPEECH[0]), speed=3.0)
    redis.Redis(port=redis_server.port).set(f"livecap:{{{room}}}:claim", "c", px=3000)
    headers = {"Authorization": f"Bearer {b.keys.key('operator')}"}
    async with aiohttp.ClientSession() as http, http.post(
            f"{b.base}/operator/rooms/{room}/corrections", headers=headers,
            json={"seq": result.finals[0]["seq"], "text": "too early"}) as response:
        assert response.status == 409 and (await response.json())["code"] == "room_elsewhere"
    redis.Redis(port=redis_server.port).delete(f"livecap:{{{room}}}:claim")


async def test_a_forwarded_request_read_late_is_left_undone(nodes: list[LiveServer], redis_server: RedisServer) -> None:
    """A request the captioning node reads after its node gave up (it stalled) is not carried out:
    nothing is done that was answered 503. Requests written by anything else are refused, not crashed on."""
    a = nodes[0]
    room = "late-request"
    publisher = await started(a.ingest_url(room))
    client = aioredis.Redis(port=redis_server.port, decode_responses=True)
    inbox = "livecap:inbox:a"
    top = entries(await client.xrevrange(inbox, count=1))
    newest_ms = int(top[0][0].split("-")[0]) if top else 0
    seconds, _ = await client.time()
    await asyncio.sleep(max(0.0, newest_ms / 1000 + START_S + 1.5 - seconds))  # room below "now - START_S"
    seconds, _ = await client.time()
    late = max(newest_ms + 1, int((seconds - START_S - 1) * 1000))
    await client.xadd(inbox, {"action": "end", "room": room, "body": "{}", "reply": "livecap:reply:late"},
                      id=f"{late}-0")
    await client.xadd(inbox, {"action": "end", "room": room, "body": "{}"})  # no reply list: skipped
    asked: dict[str, dict[Any, Any]] = {
        "livecap:reply:bad-body": {"action": "end", "room": room, "body": "[[["},
        "livecap:reply:stars": {"action": "rate", "room": room, "body": json.dumps({"stars": 99, "viewer": "v"})},
        "livecap:reply:action": {"action": "explode", "room": room, "body": "{}"}}
    for reply, request in asked.items():
        await client.xadd(inbox, {**request, "reply": reply})
    statuses = {}
    for reply in asked:
        found = await client.blpop([reply], timeout=5)
        statuses[reply] = json.loads(found[1])["status"] if found else None
    assert statuses == {"livecap:reply:bad-body": 400, "livecap:reply:stars": 400, "livecap:reply:action": 400}
    assert await client.lpop("livecap:reply:late") is None and room in a.app[ROOMS].rooms, "the late end not done"
    await client.aclose()
    await publisher.close()


async def test_a_change_after_redis_lost_its_data_keeps_the_other_settings(nodes: list[LiveServer],
                                                                              redis_server: RedisServer) -> None:
    """Regression: after FLUSHALL the room's settings hash held only the next change, and every
    node took the others' defaults (mask and recording switched off, outputs gone)."""
    a, b, _ = nodes
    room = "after-flush"
    whole = {"glossary": ["Kubernetes"], "recording": True, "profanity": ["darn"]}
    async with aiohttp.ClientSession() as http:
        await patch_settings(http, a, room, whole)
        for node in nodes:
            await settings_on(node, room, whole)
        await asyncio.to_thread(redis.Redis(port=redis_server.port).flushall)
        await patch_settings(http, b, room, {"language": "auto"})
    for node in nodes:
        await settings_on(node, room, {**whole, "language": "auto"})


async def test_settings_changed_at_once_on_two_nodes_both_hold(nodes: list[LiveServer],
                                                               redis_server: RedisServer) -> None:
    """Two operators change different settings of a room at the same moment on two nodes: both
    changes hold on every node (they were whole-object writes: the last one undid the other).
    Entries of the settings log written by anything else are skipped: the next change still
    reaches every node, and nobody's audit log takes them."""
    a, b, _ = nodes
    room = "two-operators"
    client = redis.Redis(port=redis_server.port)
    client.xadd("livecap:settings", {"room": room, "node": "x", "audit": "[" * 100_000})
    client.xadd("livecap:settings", {"room": room, "node": "x", "audit": json.dumps({"who": "evil"})})
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(patch_settings(http, a, room, {"glossary": ["Sintra"]}),
                             patch_settings(http, b, room, {"profanity": ["darn"]}))
    for node in nodes:
        await settings_on(node, room, {"glossary": ["Sintra"], "profanity": ["darn"]})
        store = node.app[ROOMS].settings
        assert store is not None
        assert all(entry.get("who") != "evil" for entry in store.audit()), "no entry of the room's but the two"


async def settings_on(node: LiveServer, room: str, wanted: dict[str, Any]) -> dict[str, Any]:
    """The room's settings on ``node`` once they include ``wanted`` (within 5 s)."""
    store = node.app[ROOMS].settings
    assert store is not None
    for _ in range(50):
        if (shown := store.get(room).shown()).items() >= wanted.items():
            return shown
        await asyncio.sleep(0.1)
    raise AssertionError(f"{room} on {node.base}: {store.get(room).shown()} lacks {wanted}")


async def test_room_settings_changed_on_any_node_reach_every_node(nodes: list[LiveServer]) -> None:
    """Behind a load balancer, an operator's change lands on any node: the node captioning the
    room takes it (a recording switched on through node b is recorded and said on node c's
    pages), every node audits it, and a change through the command line reaches them too."""
    a, b, c = nodes
    room = "set-anywhere"
    publisher = await started(a.ingest_url(room))
    async with websockets.connect(c.captions_url(room)) as viewer:
        await asyncio.sleep(0.3)
        wanted = {"recording": True, "glossary": ["Sintra", "OBS"]}
        async with aiohttp.ClientSession() as http:
            await patch_settings(http, b, room, wanted)
        for node in nodes:
            await settings_on(node, room, wanted)
        assert a.app[ROOMS].rooms[room].glossary.terms == ("Sintra", "OBS"), "the owner recognises with it"
        while (message := json.loads(await asyncio.wait_for(viewer.recv(), timeout(10))))["type"] != "room":
            pass
        assert message["recording"] is True, "the owner records, and says so on every node's pages"
    for node in (a, c):
        store = node.app[ROOMS].settings
        assert store is not None
        audit = store.audit(room)
        assert audit[-1]["node"] == "b" and audit[-1]["changes"]["recording"] == [False, True]
    assert main(["settings", room, "--set", "recording=false", "--data-dir", str(b.app[OPTIONS].data_dir),
                 "--redis", b.app[OPTIONS].redis, "--node", "b"]) == 0
    for node in nodes:
        await settings_on(node, room, {"recording": False, "glossary": ["Sintra", "OBS"]})
    await publisher.close()


async def test_a_node_that_joins_later_has_every_rooms_settings(nodes: list[LiveServer], redis_server: RedisServer,
                                                                tmp_path: Path) -> None:
    a = nodes[0]
    async with aiohttp.ClientSession() as http:
        await patch_settings(http, a, "early", {"language": "fr", "translate": "en"})
    late = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none", redis=redis_server.url,
                              node="late")
    try:
        await settings_on(late, "early", {"language": "fr", "translate": "en"})
    finally:
        await late.runner.cleanup()


def test_the_settings_command_changes_nothing_when_redis_is_unreachable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A change must reach every node or none: with the cluster's Redis down, nothing is written."""
    assert main(["settings", "hall", "--set", "recording=true", "--data-dir", str(tmp_path),
                 "--redis", "redis://127.0.0.1:9/0"]) == 1
    assert "nothing changed" in capsys.readouterr().err
    assert not (tmp_path / "settings" / "hall.json").exists()


async def test_a_node_that_captioned_a_room_before_exports_what_others_made_since(nodes: list[LiveServer]) -> None:
    a, b, _ = nodes
    room = "handed-on"
    for node, recording in ((a, SPEECH[0]), (b, SPEECH[1]), (a, "librispeech-1988-24833-0000"),
                            (b, "ljspeech-LJ050-0162")):
        result = await stream_audio(node.ingest_url(room), audio(recording), speed=3.0)
        assert result.finals
    assert room in a.app[ROOMS].rooms, "node a holds the room, following no one: no viewer there"
    async with aiohttp.ClientSession() as http:
        exports = []
        for node in nodes:
            async with http.get(f"{node.base}/rooms/{room}/transcript.json") as response:
                exports.append([(line["seq"], line["text"]) for line in await response.json()])
    assert exports[0] == exports[1] == exports[2] and len(exports[0]) >= 4


async def test_a_node_stops_following_when_its_last_viewer_leaves(nodes: list[LiveServer]) -> None:
    a, _, c = nodes
    room = "left-alone"
    publisher = await started(a.ingest_url(room))
    async with websockets.connect(c.captions_url(room)):
        await asyncio.sleep(0.3)
        assert c.app[ROOMS].rooms[room]._follower is not None
    await asyncio.sleep(0.3)
    assert c.app[ROOMS].rooms.get(room) is None or c.app[ROOMS].rooms[room]._follower is None, \
        "no XREAD loop left for a room nobody here watches"
    await publisher.close()


async def test_seqs_go_on_growing_after_redis_lost_its_data(nodes: list[LiveServer],
                                                            redis_server: RedisServer) -> None:
    """FLUSHALL (or Redis restarted without persistence): the node with the room's viewers writes
    the room's seq ceiling back, so a node new to the room goes on above it."""
    a, b, c = nodes
    room, done = "flushed", asyncio.Event()
    on_b: list[dict[str, Any]] = []
    viewer = asyncio.create_task(collect(b.captions_url(room), done, on_b))
    await asyncio.sleep(0.3)
    first = await stream_audio(a.ingest_url(room), audio("librispeech-1988-24833-0000"), speed=3.0)
    await asyncio.to_thread(redis.Redis(port=redis_server.port).flushall)
    await asyncio.sleep(1.5)
    assert room not in c.app[ROOMS].rooms, "node c never held the room"
    second = await stream_audio(c.ingest_url(room), audio("librispeech-2412-153948-0002"), speed=3.0)
    done.set()
    await viewer
    before = max(m["seq"] for m in first.messages if m.get("type") == "caption")
    assert second.finals and min(m["seq"] for m in second.finals) > before
    assert set(captions(second.messages)) <= set(captions(on_b)), "node b's viewer got node c's finals"


# ---- the pure parts


def test_a_followers_copy_of_a_room_is_the_owners() -> None:
    owner, follower = CaptionState("r"), CaptionState("r")
    words = (Word("hello", 0.0, 0.4, 0.9), Word("there", 0.4, 0.8, 0.8))
    partial = owner.partial(owner.new_segment(), words[:1], words[1:], 0.0, 0.8, "e", "v", 10.0)
    final = owner.final(0, words, 0.0, 0.8, "e", "v", 20.0)
    assert partial is not None and final is not None
    made = [partial, final, owner.correction(final.seq, "hello there!"),
            owner.translation(final, "hallo", "e", "v", 30.0)]
    for event in made:
        assert follower.apply(event)
    assert not follower.apply(final), "an event it holds already changes nothing"
    assert follower.transcript() == owner.transcript() and follower.seq == owner.seq
    assert follower.history_after(0) == owner.history_after(0)
    assert follower.new_segment() == 1, "a follower that takes the room over goes on after the owner's segments"


def test_seq_ceilings_are_reserved_half_a_block_ahead() -> None:
    """With --redis a ceiling reaches Redis after the seq that crossed into its block was sent to
    this node's viewers: half a block of margin keeps every seq sent below a ceiling Redis has."""
    ceilings: list[int] = []
    counter = SeqCounter(0, ceilings.append, block=10)
    margins = []
    for _ in range(40):
        seq = counter.next()
        assert seq <= ceilings[-1], "every seq is below a recorded ceiling"
        margins.append(ceilings[-1] - seq)
    assert min(margins) >= 5 and len(ceilings) <= 5, (margins, ceilings)
    counter.skip_to(100)  # another node handed out up to 100
    assert counter.next() == 101 and ceilings[-1] == 110


def test_the_dashboard_shows_a_room_as_its_owner_sees_it() -> None:
    mine: list[dict[str, Any]] = [{"name": "r", "session": None, "viewers": 3}, {"name": "only-here", "session": None}]
    nodes: list[dict[str, Any]] = [{"node": "b", "time": 0.0, "rooms": [{"name": "r", "session": "s1", "viewers": 1},
                                                  {"name": "elsewhere", "session": "s2"}]},
             {"node": "a", "time": 0.0, "rooms": [{"name": "r", "session": None}]}]
    shown = {room["name"]: room for room in merged(mine, nodes, "a")}
    assert shown["r"] == {"name": "r", "session": "s1", "viewers": 4, "node": "b"}, "the owner's view, every viewer"
    assert shown["only-here"]["node"] == "a" and shown["elsewhere"]["node"] == "b"


async def ignore_settings(room: str, settings: dict[str, Any], audit: dict[str, Any] | None) -> None:
    """For a ``Cluster`` started without rooms: no settings to take."""


async def no_requests(action: str, room: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    raise AssertionError("no other node knows this one")


async def test_redis_refuses_a_seq_that_is_not_new(redis_server: RedisServer) -> None:
    """A node that lost its lease without knowing it cannot write over its successor's events."""
    metrics = Metrics()
    cluster = Cluster.connect(redis_server.url, "stale", metrics, 3.0, 60.0)
    cluster.start(lambda: [], ignore_settings, no_requests)
    try:
        state = CaptionState("fenced")
        first = state.final(state.new_segment(), (Word("one", 0, 1, 1.0),), 0.0, 1.0, "e", "v", 0.0)
        assert first is not None
        cluster.append(replace(first, seq=50))  # the successor's
        cluster.append(first)  # seq 1: older than the log's last
        assert await cluster.flush("fenced", 5.0)
        lines = await cluster.lines_after("fenced", 0)
        assert [event.seq for event, _ in lines] == [50]
        assert metrics.registry.get_sample_value("livecap_cluster_events_skipped_total") == 1
    finally:
        await cluster.close()


def test_single_node_mode_needs_no_redis(tmp_path: Path) -> None:
    """Without --redis nothing of the cluster runs (the whole suite is that mode)."""
    options = ServerOptions(data_dir=tmp_path, secret="s")
    app = create_app(options, Keys(options.secret, False))
    assert app[ROOMS].cluster is None


@pytest.mark.slow
async def test_kill_9_of_the_owner_loses_no_final(redis_server: RedisServer, tmp_path: Path) -> None:
    """Three node processes; the publisher's node is killed (``kill -9``) mid-stream: the publisher
    goes on at another node, sending again what was not acknowledged; viewers on any node end with
    every line of the transcript, seqs strictly increasing."""
    nodes = [Node(name, redis_server.url, tmp_path / name, ["--engine", "pocketsphinx", "--fallback-engine", "none",
                                                            "--lease-s", "1.5"]) for name in ("p", "q", "r")]
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        samples = np.concatenate([audio(r) for r in KILLED])
        figures = await failover(nodes, redis_server.url, "killed", samples, kills=1, first_kill_s=6.0)
    finally:
        for node in nodes:
            node.stop()
    assert figures["kills"] == 1 and figures["reconnects"] >= 1 and figures["publisher_error"] is None
    assert figures["seq_strictly_increasing"]
    assert figures["viewers_with_every_line"] == figures["viewers"], figures
    assert 0 < figures["resent_audio_s"] < 10, "what was not acknowledged is sent again, no more"
    assert figures["gaps"][0]["to_next_caption_s"] < 15
    said = " ".join(recordings()[r].text for r in KILLED)
    assert word_error_rate([said], [figures["text"]]) < POCKETSPHINX_WER_BOUND, "nothing lost at the kill"
