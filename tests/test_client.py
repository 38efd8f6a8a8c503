"""The publisher client (``livecap.client``) when its server goes away."""

from __future__ import annotations

import asyncio

import numpy as np
from aiohttp import web

from livecap.client import ingest_url, stream_audio
from tests.conftest import timeout

READY = {"type": "ready", "session": "s", "offset": 12.5}


async def vanishing_server(request: web.Request) -> web.WebSocketResponse:
    """Fault injector: a server killed (``kill -9``) after the first audio frame,
    so the connection ends without a close frame."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.receive()  # start
    await ws.send_json(READY)
    await ws.receive()  # the first audio frame
    assert request.transport is not None
    request.transport.abort()
    return ws


async def test_a_stream_whose_server_vanishes_returns_what_it_got() -> None:
    """A publisher that reconnects (the soak benchmark's) needs what it received
    and when its audio started, not an exception."""
    app = web.Application()
    app.router.add_get("/ws/ingest/{room}", vanishing_server)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        result = await asyncio.wait_for(stream_audio(ingest_url(f"http://127.0.0.1:{port}", "r", None),
                                                     np.zeros(5 * 16000, np.float32)), timeout(30))
    finally:
        await runner.cleanup()
    assert result.messages == [READY] and result.close_code == 1006
    assert result.offset == 12.5 and result.audio_started > 0
