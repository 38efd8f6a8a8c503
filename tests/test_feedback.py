"""The quality loop over real sockets: an editor's corrections (operator
API), viewers' flags and ratings (caption socket), their refusals, labels and
metrics. Captions are fed straight into the room (the engine does not matter
here); the pages are tried in tests/test_pages.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import websockets

from livecap import rooms
from livecap.appkeys import METRICS, OPTIONS, ROOMS
from livecap.asr.engine import Word
from livecap.captions import CaptionEvent
from livecap.labels import LabelStore
from livecap.rooms import Room
from tests.conftest import LiveServer, start_server, timeout


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    live = await start_server(tmp_path_factory.mktemp("feedback"), engine="pocketsphinx", fallback_engine="none")
    yield live
    await live.runner.cleanup()


def say(room: Room, text: str, version: str = "v1") -> CaptionEvent:
    """A final in ``room``, as the recognition stage would make it; the last word unsure."""
    words = tuple(Word(w, i * 0.4, i * 0.4 + 0.3, 0.2 if i == len(text.split()) - 1 else 0.9)
                  for i, w in enumerate(text.split()))
    final = room.captions.final(room.captions.new_segment(), words, 0.0, 2.0, "test-engine", version, 0.0)
    assert final is not None
    room.publish(final)
    return final


async def correct(server: LiveServer, room: str, body: Any, key: str | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base}/operator/rooms/{room}/corrections", data=json.dumps(body),
            headers={"Authorization": f"Bearer {key or server.keys.key('operator')}"}) as response:
        return response.status, await response.json(content_type=None) if response.status != 401 else {}


async def next_of(ws: websockets.ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of type ``kind`` (a caption's ``kind`` for captions), skipping the others."""
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
        if kind in (message["type"], message.get("kind")):
            return message


def metric(server: LiveServer, name: str, **labels: str) -> float:
    return server.app[METRICS].registry.get_sample_value(name, labels) or 0.0


async def test_a_correction_reaches_every_viewer_the_transcript_and_the_labels(server: LiveServer) -> None:
    room = server.app[ROOMS].get("corrected")
    final = say(room, "welcome to the jason workshop")
    async with websockets.connect(server.captions_url("corrected", after_seq=0)) as viewer:
        assert (await next_of(viewer, "final"))["seq"] == final.seq
        status, event = await correct(server, "corrected",
                                      {"seq": final.seq, "text": " welcome to the\nJSON workshop "})
        assert status == 200 and event["kind"] == "correction" and event["text"] == "welcome to the JSON workshop"
        shown = await next_of(viewer, "correction")
        assert shown == event and shown["seq"] > final.seq and shown["segment"] == final.segment
    async with websockets.connect(server.captions_url("corrected", after_seq=final.seq)) as resumed:
        assert (await next_of(resumed, "correction"))["text"] == "welcome to the JSON workshop"
    async with aiohttp.ClientSession() as http:
        for fmt, needle in (("txt", "JSON workshop"), ("vtt", "JSON workshop"), ("srt", "JSON workshop"),
                            ("json", "JSON workshop")):
            async with http.get(f"{server.base}/rooms/corrected/transcript.{fmt}") as response:
                assert needle in await response.text() and "jason" not in await response.text()
    store = LabelStore(server.app[OPTIONS].data_dir / "labels")
    label = [lb for lb in store.read(room="corrected") if lb.kind == "correction"][-1]
    assert (label.text, label.corrected, label.engine, label.model_version, label.seq, label.segment) == \
        ("welcome to the jason workshop", "welcome to the JSON workshop", "test-engine", "v1", event["seq"],
         final.segment)
    assert label.words[-1] == ("workshop", 0.2), "the model's words, with their confidences"
    assert len(label.by) == 8 and label.by not in server.keys.key("operator"), "a key id, never the key"
    assert metric(server, "livecap_corrections_total", engine="test-engine", model_version="v1") >= 1


async def test_two_editors_on_one_line_the_second_is_told_not_overwritten(server: LiveServer) -> None:
    room = server.app[ROOMS].get("two-editors")
    final = say(room, "the speaker is doctor smith")
    first, answer = await correct(server, "two-editors", {"seq": final.seq, "text": "the speaker is Dr. Smith"})
    assert first == 200
    second, refusal = await correct(server, "two-editors", {"seq": final.seq, "text": "the speaker is Doctor Smyth"})
    assert second == 409 and refusal["type"] == "refused" and refusal["code"] == "edit_conflict"
    assert refusal["current"] == {"seq": answer["seq"], "segment": final.segment, "text": "the speaker is Dr. Smith"}
    assert room.captions.transcript()[-1].text == "the speaker is Dr. Smith", "the first correction stands"
    again, _ = await correct(server, "two-editors", {"seq": refusal["current"]["seq"], "text": "Dr. Smyth"})
    assert again == 200, "knowing the other correction, the second editor may save over it"


@pytest.mark.parametrize(("body", "status", "code"), [
    ("not json", 400, "invalid_request"), (b"\x80{}", 400, "invalid_request"), ([1, 2], 400, "invalid_request"),
    ({"text": "x"}, 400, "invalid_request"),
    ({"seq": "1", "text": "x"}, 400, "invalid_request"), ({"seq": True, "text": "x"}, 400, "invalid_request"),
    ({"seq": 1, "text": 5}, 400, "invalid_request"), ({"seq": 1, "text": "x" * 2001}, 400, "invalid_request"),
    ({"seq": 1, "text": "bell\x07"}, 400, "invalid_request"), ({"seq": 10**9, "text": "x"}, 404, "unknown_seq")])
async def test_a_bad_correction_is_refused_with_its_code(server: LiveServer, body: Any, status: int,
                                                          code: str) -> None:
    say(server.app[ROOMS].get("bad-corrections"), "some line")
    got, refusal = await correct(server, "bad-corrections", body if not isinstance(body, str | bytes) else None)
    if isinstance(body, str | bytes):
        async with aiohttp.ClientSession() as http, http.post(
                f"{server.base}/operator/rooms/bad-corrections/corrections", data=body,
                headers={"Authorization": f"Bearer {server.keys.key('operator')}"}) as response:
            got, refusal = response.status, await response.json()
    assert (got, refusal["code"]) == (status, code)


async def test_only_the_operator_key_corrects(server: LiveServer) -> None:
    final = say(server.app[ROOMS].get("keys"), "a line")
    for key in (server.keys.key("publisher", "keys"), server.keys.key("viewer", "keys"), "wrong"):
        status, _ = await correct(server, "keys", {"seq": final.seq, "text": "changed"}, key=key)
        assert status == 401
    assert server.app[ROOMS].get("keys").captions.transcript()[-1].text == "a line"
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base}/operator/rooms/bad%0Aname/corrections",
            headers={"Authorization": f"Bearer {server.keys.key('operator')}"}) as response:
        assert response.status == 404


async def test_viewers_flag_lines_and_rate_the_captions(server: LiveServer) -> None:
    room = server.app[ROOMS].get("flags")
    lines = [say(room, "first line"), say(room, "second line", "v2")]
    before = metric(server, "livecap_caption_flags_total", engine="test-engine", model_version="v2")
    async with websockets.connect(server.captions_url("flags", after_seq=0)) as alice, \
            websockets.connect(server.captions_url("flags", after_seq=0)) as bob:
        await alice.send(json.dumps({"type": "flag", "seq": lines[1].seq}))
        assert await next_of(alice, "flagged") == {"type": "flagged", "seq": lines[1].seq, "counted": True}
        await alice.send(json.dumps({"type": "flag", "seq": lines[1].seq}))
        assert (await next_of(alice, "flagged"))["counted"] is False, "one flag per viewer and line"
        await bob.send(json.dumps({"type": "flag", "seq": lines[1].seq}))
        assert (await next_of(bob, "flagged"))["counted"] is True
        await bob.send(json.dumps({"type": "rating", "stars": 4}))
        assert await next_of(bob, "rated") == {"type": "rated", "stars": 4}
    assert metric(server, "livecap_caption_flags_total", engine="test-engine", model_version="v2") == before + 2
    assert metric(server, "livecap_caption_rating_stars_count", model_version="v2") >= 1
    quality = room.quality()
    assert quality["flags"] == 2 and quality["rating"] == 4.0
    assert quality["flagged"] == [{"seq": lines[1].seq, "segment": lines[1].segment, "text": "second line",
                                   "flags": 2}]
    async with aiohttp.ClientSession() as http, http.get(
            f"{server.base}/operator/rooms", headers={"Authorization": f"Bearer {server.keys.key('operator')}"}) as r:
        snapshot = await r.json()
    card = next(c for c in snapshot["rooms"] if c["name"] == "flags")
    assert card["quality"]["flagged"][0]["flags"] == 2 and card["links"]["edit"] == "/edit/flags"
    v2 = next(m for m in snapshot["models"] if m["model_version"] == "v2")
    assert v2["flags_per_100_lines"] is not None and v2["flags_per_100_lines"] > 0 and v2["rating"] == 4.0
    status, _ = await correct(server, "flags", {"seq": lines[1].seq, "text": "second line."})
    assert status == 200 and room.quality()["flagged"] == [], "corrected: off the editor's list"


async def test_a_reader_of_the_english_track_flags_a_translation(server: LiveServer) -> None:
    """A translation is a line of its own on the en track: its flag counts once per viewer, for
    the translation's model version, and is kept as a label about the translation; the original
    line's flags are apart, and only those reach the editor's list (a translation is made anew)."""
    room = server.app[ROOMS].get("traduction")
    words = tuple(Word(w, i * 0.4, i * 0.4 + 0.3, 0.9) for i, w in enumerate(["bonjour", "à", "tous"]))
    final = room.captions.final(room.captions.new_segment(), words, 0.0, 1.2, "test-engine", "v1", 0.0,
                                language="fr")
    assert final is not None
    room.publish(final)
    translation = room.captions.translation(final, "Hello everyone", "test-engine", "translator", 0.0)
    room.publish(translation)
    before = metric(server, "livecap_caption_flags_total", engine="test-engine", model_version="translator")
    async with websockets.connect(server.captions_url("traduction", after_seq=0, track="en")) as reader:
        assert (await next_of(reader, "translation"))["seq"] == translation.seq
        for counted in (True, False):
            await reader.send(json.dumps({"type": "flag", "seq": translation.seq}))
            assert await next_of(reader, "flagged") == {"type": "flagged", "seq": translation.seq,
                                                         "counted": counted}
        await reader.send(json.dumps({"type": "flag", "seq": final.seq}))
        assert (await next_of(reader, "flagged"))["counted"] is True, "the original line is another line"
    assert metric(server, "livecap_caption_flags_total", engine="test-engine", model_version="translator") == \
        before + 1
    assert [line["seq"] for line in room.quality()["flagged"]] == [final.seq]
    assert room.flags_by_version["translator"] == 1


@pytest.mark.parametrize(("messages", "code"), [
    ([{"type": "flag", "seq": "3"}], "invalid_request"), ([{"type": "flag"}], "invalid_request"),
    ([{"type": "flag", "seq": -1}], "invalid_request"), ([{"type": "rating", "stars": 6}], "invalid_request"),
    ([{"type": "rating", "stars": 4.5}], "invalid_request"), ([{"type": "rating", "stars": True}], "invalid_request"),
    ([{"type": "flag", "seq": 10**12}], "unknown_seq"),
    ([{"type": "rating", "stars": 3}] * 6, "too_many_requests")])
async def test_bad_feedback_is_refused_and_the_viewer_keeps_its_captions(server: LiveServer,
                                                                         messages: list[dict[str, Any]],
                                                                         code: str) -> None:
    room = server.app[ROOMS].get("bad-feedback")
    say(room, "a line")
    async with websockets.connect(server.captions_url("bad-feedback")) as viewer:
        await next_of(viewer, "final")
        for message in messages:
            await viewer.send(json.dumps(message))
        refusal = await next_of(viewer, "refused")
        assert refusal["code"] == code, refusal
        later = say(room, "captions go on")
        assert (await next_of(viewer, "final"))["seq"] == later.seq
    assert metric(server, "livecap_refusals_total", code=code) >= 1


async def test_a_flood_of_feedback_closes_like_any_flood(server: LiveServer) -> None:
    """Beyond the feedback limit, refusals; beyond the limit of all messages, the documented close."""
    say(server.app[ROOMS].get("flood"), "a line")
    async with websockets.connect(server.captions_url("flood")) as viewer:
        for _ in range(30):
            await viewer.send(json.dumps({"type": "rating", "stars": 1}))
        codes = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                message = json.loads(await asyncio.wait_for(viewer.recv(), timeout(10)))
                codes.append(message.get("code"))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
    assert "too_many_requests" in codes and codes[-1] == "rate_limited"


async def test_lines_no_longer_in_memory_still_reach_viewers_editors_and_exports(
        server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A room keeps its last lines in memory (``rooms.KEPT_LINES``, 3 here); a viewer
    resuming from before them, an editor correcting an old line and a download get
    the older ones from the transcript file; a viewer's flag of an old line is refused."""
    monkeypatch.setattr(rooms, "KEPT_LINES", 3)
    room = server.app[ROOMS].get("long-day")
    finals = [say(room, f"line number {i}") for i in range(8)]
    assert room.captions.finals == finals[-3:]
    async with websockets.connect(server.captions_url("long-day", after_seq=0)) as viewer:
        assert [(await next_of(viewer, "final"))["seq"] for _ in finals] == [f.seq for f in finals]
        await viewer.send(json.dumps({"type": "flag", "seq": finals[0].seq}))
        assert (await next_of(viewer, "refused"))["code"] == "unknown_seq"
        await viewer.send(json.dumps({"type": "flag", "seq": finals[5].seq}))
        assert (await next_of(viewer, "flagged"))["seq"] == finals[5].seq
        status, event = await correct(server, "long-day", {"seq": finals[1].seq, "text": "line number one"})
        assert status == 200 and (await next_of(viewer, "correction"))["seq"] == event["seq"]
    status, conflict = await correct(server, "long-day", {"seq": finals[1].seq, "text": "stale"})
    assert status == 409 and conflict["current"]["seq"] == event["seq"]
    later = [say(room, f"line number {i}") for i in range(8, 11)]
    async with websockets.connect(server.captions_url("long-day", after_seq=later[-1].seq)) as newcomer:
        await newcomer.send(json.dumps({"type": "flag", "seq": later[0].seq}))
        assert (await next_of(newcomer, "flagged"))["seq"] == later[0].seq
    assert set(room.flaggers) == {(later[0].segment, False)}, "who flagged lines no longer in memory is forgotten"
    async with websockets.connect(server.captions_url("long-day", after_seq=finals[4].seq)) as resumed:
        assert (await next_of(resumed, "final"))["seq"] == finals[5].seq, "from memory, in seq order"
    async with aiohttp.ClientSession() as http, http.get(f"{server.base}/rooms/long-day/transcript.txt") as response:
        text = await response.text()
    assert "line number one" in text and "line number 0" in text and "line number 7" in text
    assert "line number 1\n" not in text


async def test_a_resume_misses_nothing_that_leaves_memory_while_the_file_is_read(
        server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a fresh tester: lines published and pushed out of memory while a resuming viewer's
    read of the file was in flight were in neither; and the room, idle meanwhile, could leave the
    registry, so the viewer was served by a room no publisher would reach again. A slow disk (fault
    injected into ``TranscriptStore.lines``) makes the race certain."""
    monkeypatch.setattr(rooms, "KEPT_LINES", 3)
    registry = server.app[ROOMS]
    room = registry.get("slow-disk")
    first = [say(room, f"line number {i}") for i in range(5)]
    reading, release = asyncio.Event(), asyncio.Event()
    read = room.store.lines  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()

    def slow_read(name: str) -> list[CaptionEvent]:  # fault: the disk stalls after reading
        lines = read(name)
        loop.call_soon_threadsafe(reading.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        return lines

    monkeypatch.setattr(room.store, "lines", slow_read)
    async with websockets.connect(server.captions_url("slow-disk", after_seq=0)) as viewer:
        await asyncio.wait_for(reading.wait(), timeout(10))
        during = [say(room, f"said during the read {i}") for i in range(5)]  # the first of them leave memory
        registry.get("another-room")  # would evict idle rooms
        assert registry.rooms.get("slow-disk") is room, "a room being read stays in the registry"
        release.set()
        seqs = [(await next_of(viewer, "final"))["seq"] for _ in range(10)]
        assert seqs == [e.seq for e in first + during]
        after = say(room, "said after the resume")
        assert (await next_of(viewer, "final"))["seq"] == after.seq, "the viewer is on the room that speaks"
