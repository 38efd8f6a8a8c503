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

from livecap.audio import read_wav
from livecap.client import ingest_url, stream_audio, wait_until_ready

log = logging.getLogger(__name__)
DEMO_ROOM = "demo"
DEMO_AUDIO = Path(__file__).parent / "assets" / "demo.wav"


async def play_demo(base_url: str, key: str) -> None:
    """Wait for the server to be ready, then loop the clip forever."""
    samples = read_wav(DEMO_AUDIO).mono_16k()
    await wait_until_ready(base_url)
    while True:
        try:
            await stream_audio(ingest_url(base_url, DEMO_ROOM, key), samples)
        except Exception:
            log.exception("demo stream failed; restarting in 5 s")
            await asyncio.sleep(5)
