"""The ``livecap`` command as a user runs it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shlex
import signal
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from livecap.appkeys import ROOMS
from livecap.auth import Keys
from livecap.cli import STREAM_TRIES, main
from livecap.client import Backoff, ingest_url, stream_audio, wait_until_ready
from livecap.config import add_arguments
from livecap.demo import DEMO_ROOM, play_demo
from tests.conftest import LiveServer, timeout
from tests.speech import audio

REPO = Path(__file__).resolve().parents[1]
LIVECAP = [sys.executable, "-m", "livecap"]


def room_whose_key_starts_with_dash(keys: Keys, role: str = "publisher") -> str:
    """About one room in 64 has such a key (URL-safe base64 of an HMAC): find one."""
    return next(room for room in (f"dash-{i}" for i in itertools.count())
                if keys.key(role, room).startswith("-"))  # type: ignore[arg-type]


def write_wav(samples: np.ndarray, path: Path) -> Path:
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(16000)
        file.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def printed_keys(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, str]:
    """Run ``livecap keys`` and return its output as {label: value} ("play a file" → the command line)."""
    assert main(["keys", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {label.strip(): value.strip() for label, _, value in (line.partition(": ") for line in lines)}


@pytest.mark.parametrize("option", ["--secret", "--glossary"])
def test_option_values_may_begin_with_a_dash(option: str, tmp_path: Path) -> None:
    """getopt's rule for every option that takes a value, not just --key: the next word is the value."""
    from livecap.cli import Parser  # here, so that the other tests run against older versions too

    parser = Parser()
    add_arguments(parser)
    value = "-Xy_z-k3y"
    assert getattr(parser.parse_args([option, value, "--data-dir", str(tmp_path)]),
                   option.removeprefix("--")) == value
    assert getattr(parser.parse_args([f"{option}={value}"]), option.removeprefix("--")) == value


def test_keys_accepts_a_secret_that_begins_with_a_dash(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    secret = "-a-secret-from-token_urlsafe"
    printed = printed_keys(capsys, "hall", "--secret", secret, "--data-dir", str(tmp_path))
    keys = Keys(secret)
    assert printed["publisher key for room 'hall'"] == keys.key("publisher", "hall")
    assert printed["operator key (all rooms)"] == keys.key("operator")


async def test_stream_with_a_key_that_begins_with_a_dash_as_keys_prints_it(
        sphinx_server: LiveServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    room = room_whose_key_starts_with_dash(sphinx_server.keys)
    port = sphinx_server.base.rsplit(":", 1)[1]
    printed = printed_keys(capsys, room, "--secret", "test-secret", "--port", port, "--data-dir", str(tmp_path))
    key = printed[f"publisher key for room {room!r}"]
    assert key.startswith("-") and key == sphinx_server.keys.key("publisher", room)
    command = shlex.split(printed["play a file"])
    assert command[:2] == ["livecap", "stream"]
    wav = write_wav(audio("librispeech-3752-4944-0000"), tmp_path / "speech.wav")

    for argv in ([*LIVECAP, *command[1:]],  # as printed (--key=KEY)
                 [*LIVECAP, "stream", "FILE.wav", "--room", room, "--url", sphinx_server.base, "--key", key]):
        argv = [str(wav) if word == "FILE.wav" else word for word in argv] + ["--speed", "4", "--json"]
        process = await asyncio.create_subprocess_exec(*argv, cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout(60))
        assert process.returncode == 0, err.decode()
        messages = [json.loads(line) for line in out.decode().splitlines()]
        assert messages[0]["type"] == "ready" and messages[-1]["type"] == "stopped"
        finals = [m["text"] for m in messages if m.get("kind") == "final"]
        assert "scenery" in " ".join(finals), finals
    assert len(sphinx_server.app[ROOMS].get(room).captions.transcript()) >= 2


async def read_lines(stream: asyncio.StreamReader, lines: list[str], found: asyncio.Event, marker: str) -> None:
    """Collect a process's output (so its pipe never fills); set ``found`` at the first line containing ``marker``."""
    while line := await stream.readline():
        lines.append(line.decode())
        if marker in lines[-1]:
            found.set()


async def follow(url: str, messages: list[dict[str, Any]], got_caption: asyncio.Event) -> int | None:
    """A viewer: every message until the server closes; returns the close code."""
    async with websockets.connect(url) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                messages.append(json.loads(raw))
                if messages[-1].get("type") == "caption":
                    got_caption.set()
    return ws.close_code


@pytest.mark.slow
@pytest.mark.parametrize("signum, whole_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "sigterm"])
async def test_serve_demo_stops_quickly_and_cleanly(signum: int, whole_group: bool, tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group (engine workers too); docker stop and systemd send SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        *LIVECAP, "serve", "--demo", "--engine", "pocketsphinx", "--fallback-engine", "none", "--port", "0",
        "--data-dir", str(tmp_path), "--secret", "test-secret", cwd=REPO, start_new_session=True,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    output: list[str] = []
    listening = asyncio.Event()
    reader = asyncio.create_task(read_lines(process.stdout, output, listening, "listening on "))
    try:
        await asyncio.wait_for(listening.wait(), timeout(60))
        base = next(line for line in output if "listening on " in line).split("listening on ")[1].strip()
        viewer_messages: list[dict[str, Any]] = []
        demo_caption, other_caption = asyncio.Event(), asyncio.Event()
        viewer = asyncio.create_task(follow(f"{base.replace('http', 'ws')}/ws/captions/demo", viewer_messages,
                                            demo_caption))
        await wait_until_ready(base, timeout(120))
        # A second speaker, mid-sentence when the server is told to stop.
        publisher = asyncio.create_task(stream_audio(
            ingest_url(base, "hall", Keys("test-secret").key("publisher", "hall")), audio("ljspeech-LJ050-0160"),
            on_message=lambda m: other_caption.set() if m.get("kind") == "partial" else None))
        await asyncio.wait_for(asyncio.gather(demo_caption.wait(), other_caption.wait()), timeout(60))

        os.killpg(process.pid, signum) if whole_group else process.send_signal(signum)
        stopping = time.monotonic()
        await asyncio.wait_for(process.wait(), timeout(10))
        stopped_in = time.monotonic() - stopping
        await reader
    finally:
        if process.returncode is None:
            process.kill()
    log = "".join(output)
    assert process.returncode == 0, log
    assert "Traceback" not in log and " ERROR " not in log, log
    assert stopped_in < timeout(10)

    for messages, close_code in [(viewer_messages, await viewer), ((result := await publisher).messages,
                                                                   result.close_code)]:
        assert messages[-1] == {"type": "error", "code": "shutting_down", "message": messages[-1]["message"]}
        assert close_code == 1001, "documented close: going away"
        captions = [m for m in messages if m.get("type") == "caption"]
        finals = {m["segment"] for m in captions if m["kind"] == "final"}
        assert {m["segment"] for m in captions} <= finals, "every open utterance became final"


# ---- a refusing server is asked less and less often

def test_backoff_grows_with_full_jitter_up_to_a_cap_and_honours_the_hint() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    for attempt in range(10):
        assert 0 <= backoff.next() <= min(4.0, 0.5 * 2**attempt)
    hinted = Backoff().next({"code": "server_busy", "retry_after_ms": 3000})
    assert 3.0 <= hinted <= 3.5, "never sooner than the server asks; jitter on top spreads the crowd"
    for nonsense in ("soon", -5, float("nan"), None):
        assert 0 <= Backoff().next({"retry_after_ms": nonsense}) <= 0.5
    backoff.reset()
    assert backoff.next() <= 0.5
    delays = [Backoff(base_s=1.0).next() for _ in range(200)]
    assert max(delays) - min(delays) > 0.5, "full jitter: clients refused together come back apart"


@pytest.mark.slow
async def test_refused_demo_backs_off(refusing_server: LiveServer) -> None:
    before = refusing_server.disconnects("rate_limited")
    demo = asyncio.create_task(play_demo(refusing_server.base, refusing_server.keys.key("publisher", DEMO_ROOM)))
    await asyncio.sleep(6.0)  # the measurement window (windows of 0.5, 1, 2, 4 s: about 5 attempts)
    demo.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await demo
    attempts = refusing_server.disconnects("rate_limited") - before
    assert 1 <= attempts <= 8, f"{attempts:.0f} attempts in 6 s"


@pytest.mark.slow
async def test_refused_stream_tries_again_a_few_times_then_says_so(refusing_server: LiveServer,
                                                                   tmp_path: Path) -> None:
    before = refusing_server.disconnects("rate_limited")
    wav = write_wav(audio("librispeech-3752-4944-0000"), tmp_path / "speech.wav")
    room = "refused-cli"
    process = await asyncio.create_subprocess_exec(
        *LIVECAP, "stream", str(wav), "--room", room, "--url", refusing_server.base,
        f"--key={refusing_server.keys.key('publisher', room)}", cwd=REPO, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), timeout(60))
    assert process.returncode == 1
    assert err.decode().count("error rate_limited:") == STREAM_TRIES
    assert err.decode().count("trying again in") == STREAM_TRIES - 1
    assert refusing_server.disconnects("rate_limited") - before == STREAM_TRIES
