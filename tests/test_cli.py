"""The ``livecap`` command as a user runs it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import shlex
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from livecap.auth import Keys
from livecap.cli import Parser, main
from livecap.config import add_arguments
from livecap.server import ROOMS
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
