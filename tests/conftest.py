"""Shared fixtures: a real livecap server on a free port, real sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from livecap_models import Manifest, ensure_model
from playwright.async_api import Browser, Page, Playwright, async_playwright

from livecap import asr  # noqa: F401  (registers the engines)
from livecap.appkeys import METRICS, SCHEDULER
from livecap.asr.engine import EngineOptions
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.auth import Keys
from livecap.config import ServerOptions
from livecap.ingest import AudioReceived, IngestEvent, IngestProtocol
from livecap.server import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_FACTOR = float(os.environ.get("LIVECAP_TEST_TIMEOUT_FACTOR", "1"))
"""Scale every test timeout at once on a slow machine (websockets does the same)."""


def timeout(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


@dataclass
class LiveServer:
    app: web.Application
    runner: web.AppRunner
    base: str
    keys: Keys

    @property
    def ws_base(self) -> str:
        return self.base.replace("http", "ws", 1)

    def ingest_url(self, room: str, key: str | None = None) -> str:
        return f"{self.ws_base}/ws/ingest/{room}?token={key or self.keys.key('publisher', room)}"

    def captions_url(self, room: str, **query: Any) -> str:
        suffix = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{self.ws_base}/ws/captions/{room}" + (f"?{suffix}" if suffix else "")

    def disconnects(self, code: str) -> float:
        """Connections the server closed with ``code`` so far (its own count, as /metrics shows it)."""
        return self.app[METRICS].registry.get_sample_value("livecap_disconnects_total", {"code": code}) or 0.0


async def start_server(data_dir: Path, **settings: Any) -> LiveServer:
    """Start the real application on 127.0.0.1:0 and wait until its engine is loaded."""
    options = ServerOptions(**{"port": 0, "data_dir": data_dir, "secret": "test-secret", **settings})
    keys = Keys(options.secret, options.viewer_keys)
    app = create_app(options, keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await asyncio.wait_for(app[SCHEDULER].ready.wait(), timeout(300))
    return LiveServer(app, runner, f"http://127.0.0.1:{port}", keys)


@pytest.fixture(scope="session")
async def sphinx_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """A server with the PocketSphinx engine, lenient on rate so tests may stream faster than real time,
    and on publishers: its measured capacity, on a test machine busy with other work, can be one
    (tests/test_overload.py checks the capacity)."""
    server = await start_server(tmp_path_factory.mktemp("sphinx"), engine="pocketsphinx", max_audio_rate=50.0,
                                max_publishers=100)
    yield server
    await server.runner.cleanup()


@pytest.fixture(scope="session")
async def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """A real server that refuses every WebSocket with rate_limited (retryable), as the server of a venue full of
    phones behind one address would: no connections are allowed per address."""
    server = await start_server(tmp_path_factory.mktemp("refusing"), engine="pocketsphinx", fallback_engine="none",
                                max_connections_per_ip=0)
    yield server
    await server.runner.cleanup()


@pytest.fixture(scope="session")
def tiny_manifest() -> Manifest:
    """The real tiny.en int8 model, built once into the model cache
    (``$LIVECAP_MODEL_CACHE`` or the user's cache; a few seconds the first time)."""
    return ensure_model("tiny.en", "int8")


@pytest.fixture(scope="session")
def whisper_engine(tiny_manifest: Manifest) -> WhisperOnnx:
    return WhisperOnnx(EngineOptions(model="tiny.en", device="cpu", threads=2))


# --- real Chromium (Debian's, driven by Playwright: see shared/notes/browser-tests.md) ---------------------------


@pytest.fixture(scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is not installed: make system-deps")
    async with async_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def chromium_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | float | bool]:
    """Chromium writes a profile and caches under $HOME: keep them out of the real one."""
    home = tmp_path_factory.mktemp("chromium-home")
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache")}


@pytest.fixture(scope="session")
async def browser(playwright: Playwright, chromium_env: dict[str, str | float | bool]) -> AsyncIterator[Browser]:
    browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                              env=chromium_env)
    yield browser
    await browser.close()


def fail_on_page_errors(page: Page) -> list[str]:
    """Collect uncaught exceptions of the page; a test asserts the list is empty."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


# --- a microphone for the speaker page --------------------------------------------------------------------------------

def padded_wav(samples: np.ndarray, path: Path) -> Path:
    """16-bit PCM WAV with 1 s of silence before (the capture starts before the page listens) and 2 s after
    (Chromium repeats the last 10 ms block after the end of a %noloop file)."""
    silence = np.zeros(16000, dtype=np.float32)
    pcm = (np.clip(np.concatenate([silence, samples, silence, silence]), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(16000)
        file.writeframes(pcm.tobytes())
    return path


async def launch_microphone(playwright: Playwright, chromium_env: dict[str, str | float | bool],
                            wav: Path | None = None) -> Browser:
    """Chromium whose fake microphone plays ``wav`` once (``padded_wav``), or a tone without one."""
    capture = [f"--use-file-for-fake-audio-capture={wav}%noloop"] if wav is not None else []
    return await playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, env=chromium_env,
        args=[*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", *capture])


class AudioSpy:
    """Every chunk of audio the server's ingest decodes while a test runs."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.arrived = asyncio.Event()

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)

    async def wait_for(self, count: int) -> None:
        while True:
            self.arrived.clear()
            if sum(len(c) for c in self.chunks) >= count:
                return
            await asyncio.wait_for(self.arrived.wait(), timeout(10))


@pytest.fixture
def received_audio(monkeypatch: pytest.MonkeyPatch) -> AudioSpy:
    spy = AudioSpy()
    original: Callable[[IngestProtocol, bytes, float], list[IngestEvent]] = IngestProtocol.receive_bytes

    def receive_bytes(self: IngestProtocol, data: bytes, now: float) -> list[IngestEvent]:
        events = original(self, data, now)
        spy.chunks.extend(e.samples for e in events if isinstance(e, AudioReceived))
        spy.arrived.set()
        return events

    monkeypatch.setattr(IngestProtocol, "receive_bytes", receive_bytes)
    return spy
