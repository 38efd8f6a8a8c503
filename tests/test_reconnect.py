"""A publisher whose connection is cut mid-sentence reconnects and sends again what the server had
not acknowledged, less what the server says it has (``skip_ms``): nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.async_api import Playwright, WebSocketRoute, expect

from benchmarks.scoring import normalize, word_error_rate
from livecap.appkeys import ROOMS
from livecap.client import stream_audio
from livecap.errors import ProtocolError
from livecap.ingest import IngestLimits, IngestProtocol
from tests.conftest import LiveServer, fail_on_page_errors, launch_microphone, padded_wav, timeout
from tests.speech import audio, recordings
from tests.test_server import POCKETSPHINX_WER_BOUND

SPEECH = ["librispeech-1988-24833-0000", "librispeech-2412-153948-0002", "ljspeech-LJ050-0160"]
SPEED = 2.0


class CuttingProxy:
    """Fault injector: a TCP proxy in front of the server whose connections can be cut (a network
    that drops, a laptop changing Wi-Fi); new connections get through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def proxy(sphinx_server: LiveServer) -> AsyncIterator[tuple[CuttingProxy, str]]:
    port = int(sphinx_server.base.rsplit(":", 1)[1])
    cutter = CuttingProxy(port)
    mine = await cutter.start()
    yield cutter, sphinx_server.ingest_url("cut-publisher").replace(f":{port}/", f":{mine}/")
    await cutter.close()


async def test_a_cut_publisher_resends_what_was_not_acknowledged_and_nothing_twice(
        sphinx_server: LiveServer, proxy: tuple[CuttingProxy, str]) -> None:
    cutter, url = proxy
    samples = np.concatenate([np.concatenate([audio(r), np.zeros(16000, np.float32)]) for r in SPEECH])
    messages: list[dict[str, Any]] = []
    cut_at = len(audio(SPEECH[0])) / 16000 + 2.5  # in the second sentence, after the first one's final

    async def cut_mid_sentence() -> None:
        while not any(m.get("type") == "ack" for m in messages) or not any(
                m.get("kind") == "final" and m["text"] for m in messages):
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, cut_at / SPEED - 4.0 / SPEED))
        cutter.cut()

    cutting = asyncio.create_task(cut_mid_sentence())
    result = await stream_audio(url, samples, speed=SPEED, on_message=messages.append, reconnect=3)
    await cutting
    assert result.reconnects and result.error is None and result.messages[-1]["type"] == "stopped"
    ready = [m for m in result.messages if m.get("type") == "ready"]
    assert len(ready) == 2 and "skip_ms" in ready[1], "the second start resent, and was told what to skip"
    assert ready[1]["skip_ms"] > 0 or result.resent_samples > 0, "some audio was not acknowledged at the cut"
    lines = [m["text"] for m in result.finals if m["text"]]
    said = " ".join(recordings()[r].text for r in SPEECH)
    assert word_error_rate([said], [" ".join(lines)]) < POCKETSPHINX_WER_BOUND, lines
    words = normalize(" ".join(lines)).split()
    assert len(words) <= len(normalize(said).split()) * 1.15, f"words said twice: {lines}"


async def test_a_publisher_cut_twice_in_a_row_resends_from_what_the_server_has(
        sphinx_server: LiveServer, proxy: tuple[CuttingProxy, str]) -> None:
    """The second cut comes right after the reconnection's ``ready``, before any ``ack``."""
    cutter, url = proxy
    samples = np.concatenate([np.concatenate([audio(r), np.zeros(16000, np.float32)]) for r in SPEECH])
    messages: list[dict[str, Any]] = []

    async def cut_twice() -> None:
        while not any(m.get("kind") == "final" and m["text"] for m in messages):
            await asyncio.sleep(0.02)
        cutter.cut()
        while sum(m.get("type") == "ready" for m in messages) < 2:
            await asyncio.sleep(0.005)
        cutter.cut()

    cutting = asyncio.create_task(cut_twice())
    result = await stream_audio(url, samples, speed=SPEED, on_message=messages.append, reconnect=3)
    await cutting
    assert len(result.reconnects) == 2 and result.error is None and result.messages[-1]["type"] == "stopped"
    lines = [m["text"] for m in result.finals if m["text"]]
    said = " ".join(recordings()[r].text for r in SPEECH)
    assert word_error_rate([said], [" ".join(lines)]) < POCKETSPHINX_WER_BOUND, lines
    assert len(normalize(" ".join(lines)).split()) <= len(normalize(said).split()) * 1.15, f"said twice: {lines}"


@pytest.mark.parametrize("resend", [True, "x", {"session": "s"}, {"session": 1, "from_ms": 0},
                                    {"session": "s", "from_ms": -1}, {"session": "s", "from_ms": 1.5},
                                    {"session": "s" * 65, "from_ms": 0}, {"session": "s", "from_ms": 0, "x": 1}])
def test_a_malformed_resend_is_a_protocol_error(resend: object) -> None:
    protocol = IngestProtocol(IngestLimits())
    with pytest.raises(ProtocolError, match="resend"):
        protocol.receive_text(json.dumps({"type": "start", "resend": resend}), 0.0)


class IngestCutter:
    """Routes the speaker page's ingest socket through Playwright (fault injector: bad Wi-Fi), keeping
    every ``start`` the page sends."""

    def __init__(self) -> None:
        self.routes: list[WebSocketRoute] = []
        self.starts: list[dict[str, Any]] = []
        self.acked = asyncio.Event()

    async def handle(self, route: WebSocketRoute) -> None:
        self.routes.append(route)
        server = route.connect_to_server()

        def upstream(message: str | bytes) -> None:
            if isinstance(message, str) and json.loads(message).get("type") == "start":
                self.starts.append(json.loads(message))
            server.send(message)

        def downstream(message: str | bytes) -> None:
            if isinstance(message, str) and json.loads(message).get("type") == "ack":
                self.acked.set()
            route.send(message)

        route.on_message(upstream)
        server.on_message(downstream)


@pytest.mark.slow
async def test_the_speaker_page_resends_after_a_cut_and_says_nothing_twice(
        sphinx_server: LiveServer, playwright: Playwright, chromium_env: dict[str, str | float | bool],
        tmp_path: Path) -> None:
    room = "cut-speaker"
    recording = ["librispeech-1988-24833-0000", "ljspeech-LJ050-0160"]
    speech = np.concatenate([audio(recording[0]), np.zeros(16000, np.float32), audio(recording[1])])
    microphone = await launch_microphone(playwright, chromium_env, padded_wav(speech, tmp_path / "microphone.wav"))
    cutter = IngestCutter()
    try:
        page = await microphone.new_page()
        errors = fail_on_page_errors(page)
        await page.route_web_socket(lambda url: "/ws/ingest/" in url, cutter.handle)
        await page.goto(f"{sphinx_server.base}/speak/{room}?token={sphinx_server.keys.key('publisher', room)}")
        await page.get_by_role("button", name="Start").click()
        await expect(page.locator("#status")).to_have_attribute("data-state", "open")
        began = time.monotonic()
        await asyncio.wait_for(cutter.acked.wait(), timeout(30))
        # padded_wav: 1 s of silence first; cut 2 s into the second sentence
        await asyncio.sleep(max(0.0, began + 1.0 + len(audio(recording[0])) / 16000 + 3.0 - time.monotonic()))
        await cutter.routes[-1].close(code=4000)
        await expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=timeout(30) * 1000)
        await asyncio.sleep(max(0.0, began + len(speech) / 16000 + 3.5 - time.monotonic()))  # the rest, and silence
        await page.get_by_role("button", name="Stop").click()
        await expect(page.locator("#status-text")).to_have_text("Stopped")
        assert not errors
    finally:
        await microphone.close()
    assert len(cutter.starts) == 2 and "resend" not in cutter.starts[0]
    assert set(cutter.starts[1]["resend"]) == {"session", "from_ms"}, "the second start resends"
    lines = [e.text for e in sphinx_server.app[ROOMS].get(room).captions.transcript()]
    said = " ".join(recordings()[r].text for r in recording)
    assert word_error_rate([said], [" ".join(lines)]) < POCKETSPHINX_WER_BOUND, lines
    assert len(normalize(" ".join(lines)).split()) <= len(normalize(said).split()) * 1.15, f"said twice: {lines}"
