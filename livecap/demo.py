"""``livecap serve --demo``: a public-domain recording played into room 'demo'.

A newcomer sees live captions the moment the server is up. The audio goes
through the same WebSocket path as a real speaker's (see ``client``). The clip
is J. F. Kennedy's 1961 inaugural address ("ask not …", US government work)
followed by three LJ Speech 1.1 sentences (public domain); see README.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp

from livecap.audio import read_wav
from livecap.client import ingest_url, stream_audio

log = logging.getLogger(__name__)
DEMO_ROOM = "demo"
DEMO_AUDIO = Path(__file__).parent / "assets" / "demo.wav"


async def play_demo(base_url: str, key: str) -> None:
    """Wait for the server to be ready, then loop the clip forever."""
    samples = read_wav(DEMO_AUDIO).mono_16k()
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{base_url}/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    websocket_base = base_url.replace("http", "ws", 1)
    while True:
        try:
            await stream_audio(ingest_url(websocket_base, DEMO_ROOM, key), samples)
        except Exception:
            log.exception("demo stream failed; restarting in 5 s")
            await asyncio.sleep(5)
