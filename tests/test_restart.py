"""Restarts, ``kill -9`` included: seqs never repeat, and the words viewers
saw settle in the utterance cut off by the crash become a final."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from livecap.appkeys import ROOMS, SCHEDULER
from livecap.asr.engine import Word
from livecap.auth import Keys
from livecap.captions import RECOVERED, SEQ_BLOCK, CaptionState, SeqCounter
from livecap.client import ingest_url, stream_audio, wait_until_ready
from livecap.rooms import Room, RoomRegistry, TranscriptStore
from tests.conftest import LiveServer, timeout
from tests.speech import audio

ROOT = Path(__file__).resolve().parents[1]
SECRET = "restart-secret"


def test_seqs_never_repeat_across_restarts_at_any_point() -> None:
    ceilings: list[int] = []
    handed_out: list[int] = []
    rng = random.Random(11)
    for _ in range(50):  # a crash after a random number of seqs, then a start from what was recorded
        counter = SeqCounter(max(ceilings, default=0), ceilings.append, block=10)
        handed_out += [counter.next() for _ in range(rng.randrange(0, 35))]
        assert all(seq <= max(ceilings) for seq in handed_out), "every seq handed out was below a recorded ceiling"
    assert handed_out == sorted(set(handed_out)), "increasing, never repeated"
    assert len(ceilings) < len(handed_out) / 5, "a record per block, not per seq"


def test_no_seq_is_handed_out_before_its_reservation_is_recorded() -> None:
    class FullDisk(Exception):
        """Fault injected: the reservation cannot be written."""

    def fail(ceiling: int) -> None:
        raise FullDisk

    counter = SeqCounter(5, fail)
    with pytest.raises(FullDisk):
        counter.next()
    assert counter.last == 5 and counter.ceiling == 5


def test_the_store_keeps_reservations_and_settled_words(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path)
    store.reserve("r", 1000)
    store.reserve("r", 2000)
    assert store.load("r").reserved == 2000
    assert store.load("other").reserved == 0


def test_a_line_cut_short_by_a_crash_is_dropped_and_later_lines_stay_readable(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path)
    store.reserve("r", 1000)
    with open(tmp_path / "r.jsonl", "a") as file:
        file.write('{"type": "reserved", "se')  # the process died in the middle of a write
    assert store.load("r").reserved == 1000
    store.reserve("r", 2000)
    assert store.load("r").reserved == 2000


def test_lines_are_read_without_touching_a_line_being_written(tmp_path: Path) -> None:
    """``lines`` runs in a thread while the room appends: a line half written (even in
    the middle of a character) is left out, and the file is not changed."""
    store = TranscriptStore(tmp_path)
    state = CaptionState("r")
    final = state.final(state.new_segment(), (Word("café", 0.0, 0.5),), 0.0, 0.5, "e", "v", 0.0)
    assert final is not None
    store.append(final)
    store.append(state.correction(final.seq, "cafés"))
    store.reserve("r", 1000)
    half = json.dumps(final.to_message(), ensure_ascii=False).encode()
    with open(tmp_path / "r.jsonl", "ab") as file:
        file.write(half[: half.index("é".encode()) + 1])  # another thread is writing this line
    size = (tmp_path / "r.jsonl").stat().st_size
    assert [(e.kind, e.text) for e in store.lines("r")] == [("final", "café"), ("correction", "cafés")]
    assert (tmp_path / "r.jsonl").stat().st_size == size and store.lines("none") == []


async def test_a_segment_cut_off_becomes_a_final_of_its_settled_words(sphinx_server: LiveServer,
                                                                        tmp_path: Path) -> None:
    """The server's rooms, stopped without a final (as by kill -9) and opened
    again on the same files, as a restart does."""
    scheduler, settings = sphinx_server.app[SCHEDULER], sphinx_server.app[ROOMS].defaults
    room = Room("cut", scheduler, settings, TranscriptStore(tmp_path))
    said = ["we", "will", "go", "to", "the", "moon"]
    words = tuple(Word(w, i * 0.3, i * 0.3 + 0.25, 0.9) for i, w in enumerate(said))
    first = room.captions.final(room.captions.new_segment(), words[:2], 0.0, 0.6, "e", "v", 0.0)
    assert first is not None
    room.publish(first)
    segment = room.captions.new_segment()
    shown = []
    for settled in (0, 1, 1, 3, 4):
        partial = room.captions.partial(segment, words[:settled], words[settled:5], 0.0, 1.5, "e", "v1", 0.0)
        if partial is not None:
            room.publish(partial)
            shown.append(partial)
    assert [p.stable for p in shown] == ["", "we", "we will go", "we will go to"]
    last_seq = room.captions.seq

    stored = (tmp_path / "cut.jsonl").read_bytes()
    download = await RoomRegistry(scheduler, settings, TranscriptStore(tmp_path), 1, 1).transcript("cut")
    assert [e.text for e in download] == ["we will", "we will go to"], "a download shows it already"
    assert (tmp_path / "cut.jsonl").read_bytes() == stored, "and writes nothing"
    restarted = Room("cut", scheduler, settings, TranscriptStore(tmp_path))
    recovered = restarted.captions.finals[-1]
    assert (recovered.segment, recovered.text, recovered.engine, recovered.model_version) == \
        (segment, "we will go to", RECOVERED, "v1")
    assert recovered.words == words[:4] and recovered.seq > last_seq
    assert restarted.captions.history_after(last_seq) == [recovered], "a page resuming from any seq it saw gets it"
    assert restarted.captions.new_segment() == segment + 1
    again = Room("cut", scheduler, settings, TranscriptStore(tmp_path))
    assert [e.seq for e in again.captions.finals] == [first.seq, recovered.seq], "recovered once, then stored"
    assert again.captions.seq >= recovered.seq + SEQ_BLOCK - 1, "the next start skips the reserved block"


async def test_a_recovered_final_keeps_the_language_of_its_words(sphinx_server: LiveServer, tmp_path: Path) -> None:
    """A French utterance cut off by a crash becomes a French final (pages set its lang and
    script, the en track asks for its translation), not an English one."""
    scheduler, settings = sphinx_server.app[SCHEDULER], sphinx_server.app[ROOMS].defaults
    room = Room("coupe", scheduler, settings, TranscriptStore(tmp_path))
    words = tuple(Word(w, i * 0.3, i * 0.3 + 0.25, 0.9) for i, w in enumerate(["nous", "irons", "demain"]))
    partial = room.captions.partial(room.captions.new_segment(), words[:2], words[2:], 0.0, 0.9, "e", "v", 0.0,
                                    language="fr")
    assert partial is not None
    room.publish(partial)
    recovered = Room("coupe", scheduler, settings, TranscriptStore(tmp_path)).captions.finals[-1]
    assert (recovered.engine, recovered.text, recovered.language) == (RECOVERED, "nous irons", "fr")


# ---- kill -9 of a real server


@asynccontextmanager
async def serve(data_dir: Path) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """``livecap serve`` as its own process (PocketSphinx); yields its base URL and the process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livecap", "serve", "--engine", "pocketsphinx", "--fallback-engine", "none",
        "--port", "0", "--data-dir", str(data_dir), "--secret", SECRET, "--max-audio-rate", "50",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=open(data_dir / "server.log", "ab"))  # noqa: SIM115
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout(60))
        while b"listening on" not in line:
            assert line, (data_dir / "server.log").read_text()
            line = await asyncio.wait_for(process.stdout.readline(), timeout(60))
        base = line.decode().split("listening on ")[1].strip()
        await wait_until_ready(base, timeout(120), alive=lambda: process.returncode is None)
        yield base, process
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


def captions_url(base: str, room: str, **query: int) -> str:
    suffix = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{base.replace('http', 'ws', 1)}/ws/captions/{room}" + (f"?{suffix}" if suffix else "")


def on_screen(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The partial on screen when its segment has settled words and an earlier segment has its final."""
    captions = [m for m in messages if m.get("type") == "caption"]
    if not captions or not any(m["kind"] == "final" for m in captions):
        return None
    last = captions[-1]
    return last if last["kind"] == "partial" and len(last["stable"].split()) >= 3 else None


async def test_kill_9_repeats_no_seq_and_keeps_the_words_on_screen(tmp_path: Path) -> None:
    room = "crash"
    key = Keys(SECRET).key("publisher", room)
    before_kill: list[dict[str, Any]] = []
    # A short sentence (its final), then a long one, killed while its partials are on screen.
    first_run = np.concatenate([audio("librispeech-3752-4944-0000"), np.zeros(16000, np.float32),
                                audio("ljspeech-LJ050-0160")])
    to_publisher: list[dict[str, Any]] = []
    async with serve(tmp_path) as (base, process), websockets.connect(captions_url(base, room)) as viewer:
        publishing = asyncio.create_task(stream_audio(ingest_url(base, room, key), first_run, speed=1.5,
                                                      on_message=to_publisher.append))
        while (shown := on_screen(before_kill)) is None:
            before_kill.append(json.loads(await asyncio.wait_for(viewer.recv(), timeout(60))))
        os.kill(process.pid, signal.SIGKILL)  # the partial is on every screen
        await process.wait()
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                before_kill.append(json.loads(await asyncio.wait_for(viewer.recv(), timeout(10))))
        with contextlib.suppress(websockets.ConnectionClosed):
            await publishing
    last_seen = max(m["seq"] for m in before_kill + to_publisher if m.get("type") == "caption")
    assert not any(m.get("kind") == "final" and m["segment"] == shown["segment"] for m in before_kill)

    async with serve(tmp_path) as (base, _):
        second_publisher = await stream_audio(ingest_url(base, room, key), audio("librispeech-1988-24833-0000"),
                                              speed=3.0)
        assert second_publisher.finals
        after_restart = [m["seq"] for m in second_publisher.messages if m.get("type") == "caption"]
        assert min(after_restart) > last_seen, "no seq seen before the kill comes again, partials included"
        last_final = second_publisher.finals[-1]["seq"]
        replayed = await read_until(captions_url(base, room, after_seq=last_seen), last_final)
        transcript = await read_until(captions_url(base, room, after_seq=0), last_final)

    [recovered] = [m for m in replayed if m["engine"] == RECOVERED]
    assert recovered["kind"] == "final" and recovered["segment"] == shown["segment"]
    assert recovered["text"].startswith(shown["stable"]), "the settled words of the killed utterance are in a final"
    assert [m for m in replayed if m in second_publisher.finals] == second_publisher.finals, \
        "a page resuming from the last seq it saw gets every new final"
    seqs = [m["seq"] for m in transcript]
    assert seqs == sorted(set(seqs)) and transcript[-len(replayed):] == replayed
    assert all(m in transcript for m in before_kill if m["kind"] == "final")


async def read_until(url: str, seq: int) -> list[dict[str, Any]]:
    """The messages of a new viewer up to the caption ``seq``."""
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url) as viewer:
        while not messages or messages[-1]["seq"] < seq:
            messages.append(json.loads(await asyncio.wait_for(viewer.recv(), timeout(10))))
    return messages
