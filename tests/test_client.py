"""The publisher client (``livecap.client``) and its users when the server goes away."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from livecap.client import ingest_url, stream_audio
from livecap.demo import play_demo
from tests.conftest import timeout
from tests.test_cli import REPO, write_wav

READY = {"type": "ready", "session": "s", "offset": 12.5}
CONNECTIONS = web.AppKey("connections", list[float])


async def vanishing_server(request: web.Request) -> web.WebSocketResponse:
    """Fault injector: a server killed (``kill -9``) after the first audio frame,
    so the connection ends without a close frame."""
    request.app[CONNECTIONS].append(asyncio.get_running_loop().time())
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.receive()  # start
    await ws.send_json(READY)
    await ws.receive()  # the first audio frame
    assert request.transport is not None
    request.transport.abort()
    return ws


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


@pytest.fixture
async def vanishing() -> AsyncIterator[tuple[str, list[float]]]:
    """(base URL, times of the publishers' connections) of a server that vanishes under each."""
    app = web.Application()
    app[CONNECTIONS] = []
    app.router.add_get("/ws/ingest/{room}", vanishing_server)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", app[CONNECTIONS]
    await runner.cleanup()


async def test_a_stream_whose_server_vanishes_returns_what_it_got(vanishing: tuple[str, list[float]]) -> None:
    """A publisher that reconnects (the soak benchmark's) needs what it received
    and when its audio started, not an exception."""
    result = await asyncio.wait_for(stream_audio(ingest_url(vanishing[0], "r", None),
                                                 np.zeros(5 * 16000, np.float32)), timeout(30))
    assert result.messages == [READY] and result.close_code == 1006
    assert result.offset == 12.5 and result.audio_started > 0


async def test_a_demo_whose_server_vanishes_backs_off(vanishing: tuple[str, list[float]]) -> None:
    base, connections = vanishing
    demo = asyncio.create_task(play_demo(base, "key"))
    await asyncio.sleep(3.0)  # back-off windows of 0.5, 1, 2 s: about 3 attempts
    demo.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await demo
    assert 1 <= len(connections) <= 6, f"{len(connections)} attempts in 3 s"


async def test_a_stream_whose_server_vanishes_says_so(vanishing: tuple[str, list[float]], tmp_path: Path) -> None:
    wav = write_wav(np.zeros(16000, np.float32), tmp_path / "silence.wav")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livecap", "stream", str(wav), "--room", "r", "--url", vanishing[0], "--key=k",
        cwd=REPO, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), timeout(60))
    assert process.returncode == 1 and "connection lost (close code 1006)" in err.decode()
