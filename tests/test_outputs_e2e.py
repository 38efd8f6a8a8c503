"""Room outputs against real HTTP destinations on loopback that fail on demand, while a real
recording streams into a real server: nothing lost, seq rules kept, viewers not held up."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets
from playwright.async_api import Browser
from playwright.async_api import expect as playwright_expect

from benchmarks.outputs import Destination, seq_rules_kept
from benchmarks.scoring import word_error_rate
from livecap.appkeys import METRICS, ROOMS
from livecap.asr.engine import Word
from livecap.captions import CaptionEvent
from livecap.client import stream_audio
from livecap.outputs.cea608 import COLUMNS, caption_safe
from livecap.outputs.formats import SIGNATURE_HEADER
from tests.conftest import LiveServer, fail_on_page_errors, timeout
from tests.obs_studio import ObsStudio, read_captions
from tests.speech import audio, recordings

RECORDING = "osr-us-000-0034-8k"
"""35 s of Harvard sentences: a dozen utterances."""
FAILING_S = 30.0
SECRET = "hook-secret"
expect = playwright_expect
expect.set_options(timeout=timeout(30) * 1000)


@pytest.fixture
async def destination() -> AsyncIterator[tuple[Destination, str]]:
    receiver = Destination()
    runner, base = await receiver.serve()
    yield receiver, base
    await runner.cleanup()


async def operator(server: LiveServer, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as http, http.request(
            method, f"{server.base}{path}", data=None if body is None else json.dumps(body),
            headers={"Authorization": f"Bearer {server.keys.key('operator')}"}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def outputs_of(server: LiveServer, room: str) -> list[dict[str, Any]]:
    rooms = (await operator(server, "GET", "/operator/rooms"))["rooms"]
    return next(r["outputs"] for r in rooms if r["name"] == room)


@pytest.mark.slow
async def test_a_failing_destination_gets_every_final_once_it_recovers(sphinx_server: LiveServer,
                                                                       destination: Any) -> None:
    receiver, base = destination
    room = "outputs-e2e"
    await operator(sphinx_server, "PATCH", f"/operator/rooms/{room}/settings", {"outputs": [
        {"name": "yt", "kind": "youtube", "url": f"{base}/yt?cid=stream-key"},
        {"name": "zoom", "kind": "zoom", "url": f"{base}/zoom?id=1&ns=abc&signature=x"},
        {"name": "archive", "kind": "webhook", "url": f"{base}/hook", "secret": SECRET}]})
    failing_until = receiver.failing["/"] = time.monotonic() + FAILING_S
    viewer_finals: list[tuple[float, dict[str, Any]]] = []
    states_seen: set[str] = set()
    errors_seen: set[str] = set()

    async with websockets.connect(sphinx_server.captions_url(room)) as viewer:
        async def watch() -> None:
            async for raw in viewer:
                message = json.loads(raw)
                if message.get("type") == "caption" and message["kind"] == "final":
                    viewer_finals.append((time.monotonic(), message))

        async def poll() -> None:
            while True:
                for output in await outputs_of(sphinx_server, room):
                    states_seen.add(output["state"])
                    errors_seen.add(output["last_error"] or "")
                await asyncio.sleep(1.0)

        watching, polling = asyncio.create_task(watch()), asyncio.create_task(poll())
        result = await stream_audio(sphinx_server.ingest_url(room), audio(RECORDING))
        assert result.messages[-1]["type"] == "stopped"
        deadline = time.monotonic() + timeout(FAILING_S + 60)
        while time.monotonic() < deadline:
            outputs = await outputs_of(sphinx_server, room)
            if time.monotonic() > failing_until and all(o["queued"] == 0 for o in outputs):
                break
            await asyncio.sleep(0.5)
        polling.cancel()
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(polling, watching)

    lines = [m for _, m in viewer_finals if m["text"]]
    assert len(lines) >= 6, "the recording gives a dozen utterances"
    during_failure = [t for t, _ in viewer_finals if t < failing_until]
    assert len(during_failure) >= 4, "viewers got their finals while every destination failed"

    youtube, zoom, hook = (receiver.delivered(path) for path in ("/yt", "/zoom", "/hook"))
    assert [a.body.decode().split("\n")[1] for a in youtube] == [m["text"] for m in lines], "no line lost or repeated"
    assert [a.body.decode() for a in zoom] == [m["text"] for m in lines]
    assert all(a.query["lang"] == ["en-US"] and a.query["id"] == ["1"] for a in zoom)
    assert [json.loads(a.body)["seq"] for a in hook] == [m["seq"] for _, m in viewer_finals]
    for attempt in hook:
        signature = hmac.new(SECRET.encode(), attempt.body, hashlib.sha256).hexdigest()
        assert attempt.headers[SIGNATURE_HEADER] == f"sha256={signature}"
    for path in ("/yt", "/zoom"):
        attempts = [a for a in receiver.attempts if a.path == path]
        assert len(attempts) > len(lines), "there were retries"
        assert seq_rules_kept(attempts), "seq one more for each new post, the same on a retry"

    assert "retrying" in states_seen and "failing" in states_seen, "the dashboard showed the failure"
    assert any(error.startswith("HTTP 503") for error in errors_seen)
    assert any("no answer within" in error for error in errors_seen), "a hanging destination is timed out"
    final_states = await outputs_of(sphinx_server, room)
    assert {o["state"] for o in final_states} == {"ok"} and all(o["dropped"] == 0 for o in final_states)
    assert {o["name"]: o["sent"] for o in final_states} == {"yt": len(lines), "zoom": len(lines),
                                                           "archive": len(viewer_finals)}
    assert all(o["secret"] in (None, "(kept)") for o in final_states), "the secret is never shown"


async def test_zoom_posts_go_on_from_the_seq_zoom_last_took(sphinx_server: LiveServer, destination: Any) -> None:
    """After a restart of livecap, or with the URL of another meeting, the posts go on from the seq
    Zoom says it last took (its ``…/closedcaption/seq``), not from 1."""
    receiver, base = destination
    room = "zoom-seq"
    receiver.seqs.update({"/zoom": 41, "/zoom2": 7})
    output = {"name": "zoom", "kind": "zoom", "url": f"{base}/zoom?id=1&ns=abc"}
    await operator(sphinx_server, "PATCH", f"/operator/rooms/{room}/settings", {"outputs": [output]})
    for text in ("first line", "second line"):
        say(sphinx_server, room, text)
    await until(lambda o: o["sent"] == 2, sphinx_server, room)
    await operator(sphinx_server, "PATCH", f"/operator/rooms/{room}/settings",
                   {"outputs": [{**output, "url": f"{base}/zoom2?id=2&ns=def"}]})
    say(sphinx_server, room, "in the next meeting")
    await until(lambda o: o["sent"] == 3, sphinx_server, room)
    posts = [(a.path, a.query["seq"], a.body.decode()) for a in receiver.attempts]
    assert posts == [("/zoom", ["42"], "first line"), ("/zoom", ["43"], "second line"),
                     ("/zoom2", ["8"], "in the next meeting")]
    metrics = sphinx_server.app[METRICS]
    labels = {"room": metrics.room(room), "output": "zoom", "kind": "zoom"}
    assert (metrics.registry.get_sample_value("livecap_output_sent_total", labels) or 0) >= 3
    assert metrics.registry.get_sample_value("livecap_output_state", labels) == 0

    # `livecap settings ROOM --set outputs=[]` changes the file: the output stops without a caption,
    # and leaves no state behind (a removed output is not "failing" for ever).
    store = sphinx_server.app[ROOMS].settings
    assert store is not None
    store.change(room, {"outputs": ()}, "cli", time.time())
    deadline = time.monotonic() + timeout(10)
    while metrics.registry.get_sample_value("livecap_output_state", labels) is not None:
        assert time.monotonic() < deadline, "the removed output is still at work"
        await asyncio.sleep(0.1)
    hub = sphinx_server.app[ROOMS].outputs
    assert hub is not None and room not in hub.workers


@pytest.mark.slow
async def test_the_dashboard_adds_an_output_and_shows_its_health(sphinx_server: LiveServer, browser: Browser,
                                                                 destination: Any) -> None:
    """The operator adds a signed webhook in the settings dialog; the room's card says it fails, and
    why, while the destination answers 503, then that it delivered everything; a second save
    without retyping the secret keeps it."""
    receiver, base = destination
    room_name = "dashboard-outputs"
    server = sphinx_server
    async with aiohttp.ClientSession() as http, http.ws_connect(server.captions_url(room_name)):
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        errors = fail_on_page_errors(page)
        await page.goto(f"{server.base}/dashboard?token={server.keys.key('operator')}")
        card = page.locator(f'.card[data-room="{room_name}"]')
        await card.get_by_role("button", name="Settings…").click()
        dialog = page.locator("#settings-dialog")
        await dialog.get_by_role("button", name="Add an output").click()
        row = dialog.locator(".output").last
        await row.get_by_label("Kind").select_option("webhook")
        await row.get_by_label("Name").fill("archive")
        await row.get_by_label("Address").fill(f"{base}/hook")
        await row.get_by_label("Password or secret").fill(SECRET)
        receiver.failing["/"] = time.monotonic() + 3600
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()

        final = say(server, room_name, "hello outputs")
        state = card.locator(".output-state")
        await expect(state.locator(".badge")).to_have_text(re.compile("retrying|failing"))
        await expect(state.locator(".error")).to_have_text(re.compile("HTTP 503"))
        await expect(state).to_have_attribute("data-state", "failing", timeout=timeout(30) * 1000)
        receiver.failing.clear()
        await expect(state).to_have_attribute("data-state", "ok", timeout=timeout(30) * 1000)
        await expect(state.locator(".figures")).to_contain_text("1 sent · 0 waiting")
        await expect(state.locator(".error")).to_have_count(0)

        await card.get_by_role("button", name="Settings…").click()
        secret = dialog.locator(".output").last.get_by_label("Password or secret")
        await expect(secret).to_have_value("")
        await expect(secret).to_have_attribute("placeholder", re.compile("kept"))
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()
        room = server.app[ROOMS].get(room_name)
        room.publish(room.captions.correction(final.seq, "hello, outputs"))
        await expect(state.locator(".figures")).to_contain_text("2 sent · 0 waiting")
        await page.close()
    delivered = receiver.delivered("/hook")
    assert [json.loads(a.body)["kind"] for a in delivered] == ["final", "correction"]
    for attempt in delivered:
        signature = hmac.new(SECRET.encode(), attempt.body, hashlib.sha256).hexdigest()
        assert attempt.headers[SIGNATURE_HEADER] == f"sha256={signature}", "the secret was kept"
    assert not errors


# ---- OBS Studio: real OBS under Xvfb streaming to an RTMP receiver on loopback (tests/obs_studio.py)

OBS_CLIPS = ["librispeech-3752-4944-0000", "librispeech-3752-4944-0001", "librispeech-3752-4944-0002"]
"""Recordings PocketSphinx gets nearly right (0-12% WER each): what comes back is checked against them."""
OBS_WER_BOUND = 0.3


@pytest.fixture
async def obs(tmp_path: Path) -> AsyncIterator[ObsStudio]:
    studio = ObsStudio(tmp_path)
    try:
        await studio.start()
        yield studio
    finally:
        await studio.close()


async def drained(server: LiveServer, room: str, limit_s: float = 60.0) -> list[dict[str, Any]]:
    """The room's outputs once none has anything waiting and none is failing."""
    deadline = time.monotonic() + timeout(limit_s)
    while True:
        outputs = await outputs_of(server, room)
        if all(o["queued"] == 0 and o["state"] in ("ok", "idle") for o in outputs) or time.monotonic() > deadline:
            return outputs
        await asyncio.sleep(0.3)


@pytest.mark.slow
async def test_obs_gets_608_stream_captions_and_its_text_source(sphinx_server: LiveServer, obs: ObsStudio) -> None:
    """Finals of a real recording go into OBS's stream as CEA-608 captions (read back from what the
    RTMP receiver got): rows of at most 32 columns, two on screen rolling up a line at a time,
    every word once; the scene's text source shows the last two lines."""
    room = "obs-stream"
    await operator(sphinx_server, "PATCH", f"/operator/rooms/{room}/settings", {"outputs": [
        {"name": "stream", "kind": "obs", "url": obs.url, "secret": obs.password, "mode": "captions", "lines": 2},
        {"name": "scene", "kind": "obs", "url": obs.url, "secret": obs.password, "mode": "text", "lines": 2}]})
    say(sphinx_server, room, "said before the stream started")
    before = await until(lambda o: o["dropped"] == 1, sphinx_server, room, "stream")
    assert "not streaming" in before["last_error"] and before["queued"] == 0, "not kept for a stream not started"
    await obs.start_stream()
    pause = np.zeros(16_000, dtype=np.float32)
    result = await stream_audio(sphinx_server.ingest_url(room),
                                np.concatenate([part for clip in OBS_CLIPS for part in (audio(clip), pause)]))
    finals = [m["text"] for m in result.finals if m["text"]]
    outputs = {o["name"]: o for o in await drained(sphinx_server, room)}
    assert outputs["stream"]["state"] == "ok" and outputs["scene"]["state"] == "ok", outputs
    assert outputs["stream"]["dropped"] == 1
    shown = await obs.call("GetInputSettings", {"inputName": "Captions"})
    assert shown["inputSettings"]["text"] == "\n".join(finals[-2:])  # type: ignore[index]
    await asyncio.sleep(1.0)  # the last caption's frame is encoded and sent
    await obs.stop_stream()

    captions = read_captions(obs.received)
    sent = {o["name"]: o["sent"] for o in await outputs_of(sphinx_server, room)}
    assert len(captions) == sent["stream"], f"OBS put every caption into the stream: {captions}"
    assert not any("before the stream" in row for rows in captions for row in rows), \
        "a row OBS did not take (not streaming) never shows up in a later caption"
    previous: list[str] = []
    for rows in captions:
        assert 1 <= len(rows) <= 2 and all(0 < len(row) <= COLUMNS for row in rows), rows
        assert rows == [*previous, rows[-1]][-2:], "roll-up: a caption adds one line to the one before"
        previous = rows
    streamed = " ".join(rows[-1] for rows in captions)
    assert streamed.split() == caption_safe(" ".join(finals)).split(), "every word of the finals, once"
    reference = " ".join(recordings()[clip].text for clip in OBS_CLIPS)
    assert word_error_rate([reference], [streamed]) < OBS_WER_BOUND


@pytest.mark.slow
async def test_obs_output_says_what_is_wrong_and_catches_up_when_obs_comes_back(sphinx_server: LiveServer,
                                                                                obs: ObsStudio) -> None:
    """A wrong password and a closed OBS are shown on the dashboard with the reason; the lines wait
    in the output's queue, and reach OBS once the password is fixed and OBS is back."""
    room = "obs-restart"
    output = {"name": "scene", "kind": "obs", "url": obs.url, "secret": "not-the-password", "mode": "text",
              "lines": 3}
    await operator(sphinx_server, "PATCH", f"/operator/rooms/{room}/settings", {"outputs": [output]})
    lines = [say(sphinx_server, room, "the first line").text]
    await until(lambda o: "password" in (o["last_error"] or ""), sphinx_server, room)
    await obs.stop_obs()
    await operator(sphinx_server, "PATCH", f"/operator/rooms/{room}/settings",
                   {"outputs": [{**output, "secret": obs.password}]})
    lines.append(say(sphinx_server, room, "said while OBS was closed").text)
    waiting = await until(lambda o: "cannot connect" in (o["last_error"] or ""), sphinx_server, room)
    assert waiting["queued"] >= 1 and waiting["state"] in ("retrying", "failing")
    await obs.start()
    lines.append(say(sphinx_server, room, "and after it came back").text)
    [state] = await drained(sphinx_server, room)
    assert state["state"] == "ok" and state["dropped"] == 0, state
    shown = await obs.call("GetInputSettings", {"inputName": "Captions"})
    assert shown["inputSettings"]["text"] == "\n".join(lines)  # type: ignore[index]


async def until(check: Callable[[dict[str, Any]], bool], server: LiveServer, room: str,
                name: str | None = None) -> dict[str, Any]:
    """The room's output ``name`` (or its only one), once ``check`` holds for it."""
    deadline = time.monotonic() + timeout(30)
    while True:
        outputs = await outputs_of(server, room)
        [output] = [o for o in outputs if name in (None, o["name"])]
        if check(output):
            return output
        assert time.monotonic() < deadline, f"output never reached the expected state: {output}"
        await asyncio.sleep(0.2)


def say(server: LiveServer, name: str, text: str) -> CaptionEvent:
    """A final of ``text`` in room ``name``, published as the recognizer's would be."""
    room = server.app[ROOMS].get(name)
    words = tuple(Word(w, i * 0.3, i * 0.3 + 0.3, 0.9) for i, w in enumerate(text.split()))
    final = room.captions.final(room.captions.new_segment(), words, 0.0, words[-1].end, "test", "1", 1.0)
    assert final is not None
    room.publish(final)
    return final
