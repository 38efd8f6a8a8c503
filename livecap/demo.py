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

import websockets

from livecap.audio import read_wav
from livecap.client import RETRYABLE, Backoff, ingest_url, stream_audio, wait_until_ready

log = logging.getLogger(__name__)
DEMO_ROOM = "demo"
DEMO_AUDIO = Path(__file__).parent / "assets" / "demo.wav"


async def play_demo(base_url: str, key: str) -> None:
    """Wait for the server to be ready, then loop the clip until stopped or
    told to leave (room ended, another speaker took the room over). A refused
    or broken play is tried again with back-off (and never sooner than the
    server asks), so a demo cannot hammer a busy server."""
    samples = read_wav(DEMO_AUDIO).mono_16k()
    await wait_until_ready(base_url)
    backoff = Backoff()
    while True:
        try:
            result = await stream_audio(ingest_url(base_url, DEMO_ROOM, key), samples)
        except (OSError, websockets.WebSocketException) as problem:
            delay = backoff.next()
            log.warning("demo stream failed (%s); again in %.1f s", problem, delay)
        else:
            error = result.error
            if error is None and result.close_code == 1000:
                backoff.reset()
                continue
            if error is None:
                delay = backoff.next()
                log.warning("demo stream lost its connection (close code %s); again in %.1f s", result.close_code,
                            delay)
            elif error["code"] not in RETRYABLE:
                log.info("the demo stops: %s (%s)", error["code"], error["message"])
                return
            else:
                delay = backoff.next(error)
                log.warning("demo stream refused: %s (%s); again in %.1f s", error["code"], error["message"], delay)
        await asyncio.sleep(delay)
