"""Per-room settings: validation, persistence and audit, and what each one
does to a real room (glossary, profanity mask, viewer keys, recording)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets

from livecap.appkeys import METRICS, OPTIONS, ROOMS
from livecap.asr.engine import Word
from livecap.cli import main
from livecap.client import stream_audio
from livecap.errors import InvalidRequest
from livecap.labels import LabelStore
from livecap.mask import WordMask
from livecap.recordings import RecordingStore
from livecap.settings import RoomSettings, SettingsStore, changes
from tests.conftest import LiveServer, start_server, timeout
from tests.speech import audio, recordings

SPOKEN = "librispeech-3752-4944-0002"
"""A recording PocketSphinx gets nearly right, with "shadow" in it (tests/test_pages.py)."""


@pytest.mark.parametrize(("data", "expected"), [
    ({"glossary": ["Sintra", " OBS ", "Sintra", ""]}, {"glossary": ("Sintra", "OBS")}),
    ({"glossary": "Sintra, Dr.  Smith"}, {"glossary": ("Sintra", "Dr. Smith")}),
    ({"glossary": None, "viewer_keys": None}, {"glossary": None, "viewer_keys": None}),
    ({"profanity": "darn, heck", "recording": True, "viewer_keys": False},
     {"profanity": ("darn", "heck"), "recording": True, "viewer_keys": False})])
def test_settings_changes_are_validated(data: dict[str, Any], expected: dict[str, Any]) -> None:
    assert changes(data) == expected


@pytest.mark.parametrize("data", [
    {"colour": "red"}, {"recording": "yes"}, {"recording": None}, {"profanity": None}, {"glossary": 5},
    {"glossary": ["x" * 101]}, {"glossary": [f"t{i}" for i in range(501)]}, {"viewer_keys": 1},
    {"glossary": ["bell\x07"]}])
def test_bad_settings_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        changes(data)


def test_settings_persist_and_every_change_is_audited(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path)
    assert store.get("r") == RoomSettings()
    store.change("r", {"glossary": ("Sintra",), "recording": True}, "ab12cd34", 100.0)
    store.change("r", {"recording": True}, "cli", 101.0)  # no change: not audited
    store.change("r", {"recording": False, "profanity": ("darn",)}, "cli", 102.0)
    again = SettingsStore(tmp_path)
    assert again.get("r") == RoomSettings(glossary=("Sintra",), profanity=("darn",), recording=False)
    assert again.audit("r") == [
        {"time": 100.0, "room": "r", "who": "ab12cd34", "changes": {"glossary": [None, ["Sintra"]],
                                                                    "recording": [False, True]}},
        {"time": 102.0, "room": "r", "who": "cli", "changes": {"profanity": [[], ["darn"]],
                                                               "recording": [True, False]}}]
    assert not list(tmp_path.glob(".*.tmp")), "written atomically, no temporary file left"


def test_the_mask_hides_listed_words_whole_apart_from_case_and_punctuation() -> None:
    mask = WordMask.of(["Darn", "heck!"])
    words = [Word(w, 0, 1, 0.9) for w in ["Darn,", "it", "heckler", "HECK."]]
    masked, count = mask.apply(words)
    assert [w.text for w in masked] == ["D***,", "it", "heckler", "H***."] and count == 2
    assert WordMask().apply(words) == (tuple(words), 0)


def test_the_settings_command_changes_and_audits_as_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings", "hall", "--set", "glossary=Sintra, OBS", "--set", "recording=true",
                 "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["glossary"] == ["Sintra", "OBS"]
    assert main(["settings", "hall", "--audit", "--data-dir", str(tmp_path)]) == 0
    [entry] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entry["who"] == "cli" and entry["changes"]["recording"] == [False, True]
    assert main(["settings", "hall", "--set", "recording=maybe", "--data-dir", str(tmp_path)]) == 2
    assert main(["settings", "../etc", "--data-dir", str(tmp_path)]) == 2


# --- on a real server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    live = await start_server(tmp_path_factory.mktemp("settings"), engine="pocketsphinx", fallback_engine="none",
                              max_audio_rate=50.0, max_publishers=100)
    yield live
    await live.runner.cleanup()


async def patch(server: LiveServer, room: str, body: Any, key: str | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.patch(
            f"{server.base}/operator/rooms/{room}/settings", data=json.dumps(body),
            headers={"Authorization": f"Bearer {key or server.keys.key('operator')}"}) as response:
        return response.status, await response.json(content_type=None) if response.status != 401 else {}


def speech() -> np.ndarray:
    silence = np.zeros(16000, dtype=np.float32)
    return np.concatenate([silence, audio(SPOKEN), silence])


async def test_only_the_operator_key_changes_settings(server: LiveServer) -> None:
    for key in (server.keys.key("publisher", "locked"), server.keys.key("viewer", "locked"), "wrong"):
        status, _ = await patch(server, "locked", {"recording": True}, key=key)
        assert status == 401
    assert server.app[ROOMS].settings_of("locked") == RoomSettings()
    status, refusal = await patch(server, "locked", {"recording": "on"})
    assert (status, refusal["code"]) == (400, "invalid_request")
    async with aiohttp.ClientSession() as http:
        for method, path in (("PATCH", "settings"), ("POST", "glossary")):
            async with http.request(method, f"{server.base}/operator/rooms/locked/{path}", data=b"\x80\xff",
                                    headers={"Authorization": f"Bearer {server.keys.key('operator')}"}) as response:
                assert response.status == 400, "a body that is not UTF-8 is refused, not a server error"


async def test_settings_survive_a_restart_with_their_audit(tmp_path: Path) -> None:
    first = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none")
    try:
        status, answer = await patch(first, "kept", {"glossary": ["Sintra"], "viewer_keys": True})
        assert status == 200 and answer["effective"]["glossary"] == ["Sintra"]
    finally:
        await first.runner.cleanup()
    second = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none")
    try:
        async with aiohttp.ClientSession() as http, http.get(
                f"{second.base}/operator/rooms/kept/settings",
                headers={"Authorization": f"Bearer {second.keys.key('operator')}"}) as response:
            answer = await response.json()
        assert answer["settings"]["glossary"] == ["Sintra"] and answer["effective"]["viewer_keys"] is True
        [entry] = answer["audit"]
        assert len(entry["who"]) == 8, "the operator key's id"
        assert entry["changes"] == {"glossary": [None, ["Sintra"]], "viewer_keys": [None, True]}
    finally:
        await second.runner.cleanup()


async def test_a_room_that_needs_viewer_keys_refuses_viewers_without_one(server: LiveServer) -> None:
    await patch(server, "private", {"viewer_keys": True})
    async with websockets.connect(server.captions_url("private")) as viewer:
        error = json.loads(await asyncio.wait_for(viewer.recv(), timeout(10)))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(viewer.recv(), timeout(10))
    assert error["code"] == "unauthorized" and closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    key = server.keys.key("viewer", "private")
    async with websockets.connect(server.captions_url("private", token=key)) as viewer:
        await viewer.send(json.dumps({"type": "rating", "stars": 5}))
        assert json.loads(await asyncio.wait_for(viewer.recv(), timeout(10)))["type"] == "rated"
    async with websockets.connect(server.captions_url("public")) as viewer:  # other rooms: as the server says
        await viewer.send(json.dumps({"type": "rating", "stars": 5}))
        assert json.loads(await asyncio.wait_for(viewer.recv(), timeout(10)))["type"] == "rated"
    async with aiohttp.ClientSession() as http, http.get(f"{server.base}/rooms/private/transcript.txt") as response:
        assert response.status == 403


async def test_terms_are_proposed_from_pasted_text(server: LiveServer) -> None:
    """The operator pastes a programme; livecap proposes what the room's glossary lacks, changing nothing."""
    url = f"{server.base}/operator/rooms/proposed/glossary/candidates"
    operator = {"Authorization": f"Bearer {server.keys.key('operator')}"}
    async with aiohttp.ClientSession() as http:
        async with http.patch(f"{server.base}/operator/rooms/proposed/settings", headers=operator,
                              data=json.dumps({"glossary": ["Kubernetes"]})) as response:
            assert response.status == 200
        text = "Day two: Kubernetes operators with Siobhan Ferreira, then CRISPR screens and apixaban in practice."
        async with http.post(url, headers=operator, data=json.dumps({"text": text})) as response:
            assert response.status == 200
            proposed = {c["term"]: c["why"] for c in (await response.json())["candidates"]}
        assert proposed == {"CRISPR": "acronym", "Siobhan Ferreira": "name", "Ferreira": "name",
                            "Siobhan": "name", "apixaban": "rare"}, proposed
        async with http.get(f"{server.base}/operator/rooms/proposed/settings", headers=operator) as response:
            assert (await response.json())["settings"]["glossary"] == ["Kubernetes"]  # nothing changed
        for body in ({"text": 5}, {}, {"text": "x" * 100_001}):
            async with http.post(url, headers=operator, data=json.dumps(body)) as response:
                assert response.status == 400 and (await response.json())["code"] == "invalid_request"
        async with http.post(url, data=json.dumps({"text": text})) as response:
            assert response.status == 401


async def test_teaching_the_room_a_term_puts_it_in_its_glossary(server: LiveServer) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base}/operator/rooms/taught/glossary", data=json.dumps({"terms": ["Dr. Smith", "Sintra"]}),
            headers={"Authorization": f"Bearer {server.keys.key('operator')}"}) as response:
        answer = await response.json()
    assert answer["settings"]["glossary"] == ["Dr. Smith", "Sintra"]
    room = server.app[ROOMS].get("taught")
    assert room.terms() == ("Dr. Smith", "Sintra")
    spelled = room.glossary.apply([Word(w, 0, 1) for w in ["we", "met", "dr", "smith", "in", "sintra"]])
    assert " ".join(w.text for w in spelled) == "we met Dr. Smith in Sintra"
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base}/operator/rooms/taught/glossary", data=json.dumps({"terms": []}),
            headers={"Authorization": f"Bearer {server.keys.key('operator')}"}) as response:
        assert response.status == 400


@pytest.mark.slow
async def test_a_masked_word_is_masked_everywhere_and_counted(server: LiveServer) -> None:
    assert "shadow" in recordings()[SPOKEN].text.lower()
    await patch(server, "masked", {"profanity": ["shadow"]})
    result = await stream_audio(server.ingest_url("masked"), speech(), speed=4.0)
    shown = [m["text"] for m in result.messages if m.get("type") == "caption"]
    assert shown and not any("shadow" in text.lower() for text in shown), shown
    assert any("s*****" in text for text in shown), shown
    async with aiohttp.ClientSession() as http:
        for fmt in ("txt", "json"):
            async with http.get(f"{server.base}/rooms/masked/transcript.{fmt}") as response:
                text = await response.text()
            assert "s*****" in text and "shadow" not in text.lower()
    masked = server.app[METRICS].registry.get_sample_value("livecap_masked_words_total", {"room": "masked"})
    assert masked and masked >= 1


def audio_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in (".wav", ".pcm", ".raw", ".flac")]


@pytest.mark.slow
async def test_no_audio_is_written_unless_the_room_records(tmp_path: Path) -> None:
    live = await start_server(tmp_path, engine="pocketsphinx", fallback_engine="none", max_audio_rate=50.0)
    try:
        result = await stream_audio(live.ingest_url("quiet"), speech(), speed=4.0)
        assert [m for m in result.finals if m["text"]]
        assert audio_files(tmp_path) == [], "recording is off by default: no audio anywhere"

        async with websockets.connect(live.captions_url("recorded")) as viewer:
            await patch(live, "recorded", {"recording": True})
            told = json.loads(await asyncio.wait_for(viewer.recv(), timeout(10)))
            assert (told["type"], told["recording"]) == ("room", True), "every page is told at once"
        result = await stream_audio(live.ingest_url("recorded"), speech(), speed=4.0)
        await live.app[ROOMS].get("recorded").flush_recordings()
        finals = [m for m in result.finals if m["text"]]
        files = sorted((tmp_path / "recordings" / "recorded").glob("*.wav"))
        assert len(files) == len(finals) >= 1, "one WAV per utterance"
        assert {int(f.stem) for f in files} == {m["segment"] for m in finals}
        async with websockets.connect(live.captions_url("recorded")) as viewer:
            told = json.loads(await asyncio.wait_for(viewer.recv(), timeout(10)))
            assert (told["type"], told["recording"]) == ("room", True), "a page that comes later is told too"
        async with aiohttp.ClientSession() as http, http.post(
                f"{live.base}/operator/rooms/recorded/corrections",
                data=json.dumps({"seq": finals[0]["seq"], "text": "corrected"}),
                headers={"Authorization": f"Bearer {live.keys.key('operator')}"}) as response:
            assert response.status == 200
        [label] = [lb for lb in LabelStore(tmp_path / "labels").read(room="recorded")]
        assert label.audio == f"recordings/recorded/{finals[0]['segment']:06d}.wav"

        store = RecordingStore(tmp_path / "recordings", live.app[OPTIONS].recording_retention_days)
        old = time.time() - 8 * 86400
        os.utime(files[0], (old, old))
        assert store.sweep() == 1 and not files[0].exists(), "past the 7 days of retention"
        assert main(["recordings", "delete", "--room", "recorded", "--data-dir", str(tmp_path)]) == 0
        assert audio_files(tmp_path) == []
    finally:
        await live.runner.cleanup()
