"""The latency budget with the real engines: Whisper (primary) slowed down or
failing through the fault injector, PocketSphinx (fallback) taking over, and
the primary coming back. Streams run at real-time pace, since deadlines are
measured from the arrival of audio."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from benchmarks.scoring import word_error_rate
from livecap.client import StreamResult, stream_audio
from livecap.vad import VadOptions
from tests.conftest import LiveServer, start_server
from tests.speech import audio, recordings

pytestmark = pytest.mark.slow

BUDGET_S = 1.0
RETRY_S = 1.0
MAX_RETRY_S = 12 * RETRY_S
CLIPS = ["ljspeech-LJ050-0159", "vctk-p225_001", "ljspeech-LJ050-0160", "vctk-p225_002"]
FALLBACK_WER_BOUND = 0.6
"""PocketSphinx's finals measure 24-50% WER on these sets; every utterance present keeps it well below 60%."""


@pytest.fixture(scope="module")
async def budget_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    server = await start_server(tmp_path_factory.mktemp("budget"), engine="whisper-onnx",
                                fallback_engine="pocketsphinx", latency_budget_s=BUDGET_S,
                                primary_retry_s=RETRY_S)
    yield server
    await server.runner.cleanup()


async def set_faults(server: LiveServer, delay_s: float = 0.0, failure_rate: float = 0.0) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base}/operator/faults", json={"delay_s": delay_s, "failure_rate": failure_rate},
            headers={"Authorization": f"Bearer {server.keys.key('operator')}"}) as response:
        assert response.status == 200, await response.text()


@contextlib.asynccontextmanager
async def faults(server: LiveServer, delay_s: float = 0.0, failure_rate: float = 0.0) -> AsyncIterator[None]:
    """The primary is slow or failing inside the block (the fault injector), healthy after it."""
    await set_faults(server, delay_s, failure_rate)
    try:
        yield
    finally:
        await set_faults(server)


def speech(clips: list[str]) -> tuple[np.ndarray, str]:
    """The clips one after another with 1.2 s pauses (each becomes an utterance), and their text."""
    pause = np.zeros(19_200, dtype=np.float32)
    samples = np.concatenate([part for clip in clips for part in (audio(clip), pause)])
    return samples, " ".join(recordings()[clip].text for clip in clips)


async def stream(server: LiveServer, room: str, clips: list[str]) -> tuple[StreamResult, str]:
    samples, reference = speech(clips)
    result = await stream_audio(server.ingest_url(room), samples)
    assert result.close_code in (None, 1000) and result.messages[-1]["type"] == "stopped"
    return result, reference


def captions(result: StreamResult) -> list[dict[str, Any]]:
    return [m for m in result.messages if m.get("type") == "caption"]


def final_text(result: StreamResult) -> str:
    return " ".join(m["text"] for m in result.finals)


async def metric(server: LiveServer, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{server.base}/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_served_by_fallback_within_budget(result: StreamResult, reference: str) -> None:
    events = captions(result)
    assert {m["engine"] for m in result.finals} == {"pocketsphinx"}, "every final came from the fallback"
    assert word_error_rate([reference], [final_text(result)]) < FALLBACK_WER_BOUND, "no utterance is missing"
    # A miss is detected at the deadline, so the event right after it is about one budget late;
    # every other event comes from the fallback well within the budget.
    latencies = sorted(m["latency_ms"] / 1000 for m in events)
    assert latencies[len(latencies) // 2] < BUDGET_S / 2
    assert latencies[-1] < BUDGET_S + 0.75, latencies[-5:]


async def test_a_primary_slower_than_the_budget_hands_over_to_the_fallback(budget_server: LiveServer) -> None:
    async with faults(budget_server, delay_s=3 * BUDGET_S):
        result, reference = await stream(budget_server, "slow-primary", CLIPS[:3])
    assert_served_by_fallback_within_budget(result, reference)
    assert await metric(budget_server, "livecap_deadline_misses_total", reason="late") >= 1


async def test_a_failing_primary_hands_over_and_comes_back_when_healthy(budget_server: LiveServer) -> None:
    async with faults(budget_server, failure_rate=1.0):
        result, reference = await stream(budget_server, "failing-primary", CLIPS[:3])
    assert_served_by_fallback_within_budget(result, reference)
    assert await metric(budget_server, "livecap_engine_failures_total", engine="whisper-onnx") >= 1

    # Fault removed: the primary is tried again once the back-off (at most MAX_RETRY_S) has passed,
    # passes the trial utterance and serves the room from then on.
    result, reference = await stream(budget_server, "failing-primary", CLIPS + CLIPS[:2])
    engines = [m["engine"] for m in result.finals]
    assert "whisper-onnx" in engines, engines
    first = engines.index("whisper-onnx")
    assert set(engines[first:]) == {"whisper-onnx"}, f"the primary stays once it is back: {engines}"
    back_after = result.arrivals[result.messages.index(result.finals[first])] - result.audio_started
    # the trial utterance starts within the back-off and its final comes at its end (the VAD's cut at the latest)
    latest = MAX_RETRY_S + VadOptions().max_utterance_s + 2 * BUDGET_S
    assert back_after < latest, f"primary back after {back_after:.1f} s"
    assert word_error_rate([reference], [final_text(result)]) < FALLBACK_WER_BOUND


async def test_a_primary_near_the_budget_does_not_flap(budget_server: LiveServer) -> None:
    # A call then takes 0.9 budget plus the real decoding: sometimes in time, sometimes not, and
    # never within the trial margin (0.8), so after its first miss the room stays on the fallback.
    async with faults(budget_server, delay_s=0.9 * BUDGET_S):
        result, reference = await stream(budget_server, "borderline", CLIPS + CLIPS[:2])
    engines = [m["engine"] for m in result.finals]
    switches = sum(a != b for a, b in itertools.pairwise(engines))
    assert len(engines) >= 5 and switches <= 2, f"finals by engine: {engines}"
    assert word_error_rate([reference], [final_text(result)]) < FALLBACK_WER_BOUND
    steps = [m for m in captions(result) if m["kind"] == "partial"]
    assert steps, "partials kept coming"
