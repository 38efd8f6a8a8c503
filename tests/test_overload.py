"""Overload: publishers beyond the server's capacity are refused at ``start``
with ``server_busy`` and a retry hint; admitted publishers keep their
connection (pings answered while a final is pending) and their budget; a
cold engine or a CPU spike does not hand a room to the fallback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets

from benchmarks.scoring import word_error_rate
from livecap.appkeys import SCHEDULER
from livecap.asr.engine import SAMPLE_RATE
from livecap.asr.faults import FaultInjector
from livecap.asr.scheduler import Scheduler, SchedulerOptions
from livecap.asr.streaming import StreamingOptions
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.audio import float_to_s16le
from livecap.client import StreamResult, stream_audio
from livecap.errors import LivecapError, ServerBusy
from livecap.metrics import Metrics
from livecap.rooms import RoomDefaults, RoomRegistry
from livecap.vad import VadOptions
from tests.conftest import LiveServer, start_server, timeout
from tests.speech import audio, recordings

CLIPS = ["ljspeech-LJ050-0159", "vctk-p225_001", "ljspeech-LJ050-0160", "vctk-p225_002"]
PAUSE = np.zeros(int(1.2 * SAMPLE_RATE), dtype=np.float32)


def speech(clips: list[str]) -> tuple[np.ndarray, str]:
    """The clips with pauses between them (one utterance each), and their text."""
    return (np.concatenate([part for clip in clips for part in (audio(clip), PAUSE)]),
            " ".join(recordings()[clip].text for clip in clips))


async def metric(server: LiveServer, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{server.base}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.split("{")[0].split(" ")[0] == name and all(f'{k}="{v}"' in line for k, v in labels.items()))


async def readyz(server: LiveServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.base}/readyz") as response:
        return dict(await response.json())


async def test_a_publisher_beyond_capacity_is_refused_unless_it_takes_its_room_over() -> None:
    scheduler = Scheduler(SchedulerOptions(max_publishers=1), Metrics())
    registry = RoomRegistry(scheduler, RoomDefaults(VadOptions(), StreamingOptions(), 10), None, max_rooms=10,
                            max_viewer_rooms=10)
    closed: list[LivecapError] = []

    async def disconnect(error: LivecapError) -> None:
        closed.append(error)

    first, second = registry.get("first", publisher=True), registry.get("second", publisher=True)
    try:
        registry.admit(first)
        await first.start_session(time.monotonic(), disconnect)
        with pytest.raises(ServerBusy) as refused:
            registry.admit(second)
        event = refused.value.to_event()
        assert event["code"] == "server_busy" and int(event["retry_after_ms"]) > 0
        registry.admit(first)  # a publisher taking its room over adds no load
        await first.start_session(time.monotonic(), disconnect)
        assert [e.code for e in closed] == ["publisher_replaced"]
    finally:
        await registry.close()
        scheduler.close()


# --- pings answered while a final is pending -------------------------------------------

FINAL_DELAY_S = 3.0
PING_S = 0.5


@pytest.fixture(scope="module")
async def slow_final_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """Every recognizer call takes ``FINAL_DELAY_S`` more (the fault injector), with no fallback:
    a final is pending for several of the clients' ping timeouts."""
    server = await start_server(tmp_path_factory.mktemp("slow-final"), engine="pocketsphinx",
                                fallback_engine="none", inject_primary_delay_s=FINAL_DELAY_S)
    yield server
    await server.runner.cleanup()


async def test_readiness_reports_the_measured_capacity(slow_final_server: LiveServer) -> None:
    capacity = (await readyz(slow_final_server))["capacity"]
    assert capacity["basis"] == "measured" and capacity["publishers"] >= 1 and capacity["step_cost_s"] > 0
    assert await metric(slow_final_server, "livecap_publisher_capacity") == capacity["publishers"]
    assert await metric(slow_final_server, "livecap_decode_step_cost_seconds") > 0


def start_message() -> str:
    return json.dumps({"type": "start", "format": "s16le", "sample_rate": SAMPLE_RATE, "channels": 1})


async def test_a_publisher_keeps_its_connection_while_its_final_is_pending(slow_final_server: LiveServer) -> None:
    samples, _ = speech(CLIPS[1:2])
    messages: list[dict[str, Any]] = []
    async with websockets.connect(slow_final_server.ingest_url("pending-final"), ping_interval=timeout(PING_S),
                                  ping_timeout=timeout(PING_S)) as ws:
        await ws.send(start_message())
        await ws.send(float_to_s16le(samples))  # 3 s of audio at once: within the rate limit's burst
        await ws.send(json.dumps({"type": "stop"}))
        began = time.monotonic()
        async with asyncio.timeout(timeout(60)):
            async for raw in ws:  # raises ConnectionClosedError (1011) if a ping goes unanswered
                messages.append(json.loads(raw))
                if messages[-1]["type"] == "stopped":
                    break
        pending = time.monotonic() - began
    assert pending > 2 * timeout(PING_S), f"the final was pending for {pending:.1f} s only"
    assert any(m["type"] == "caption" and m["kind"] == "final" and m["text"] for m in messages), messages


async def test_a_publisher_that_vanishes_while_its_final_is_pending_is_no_error(
        slow_final_server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="livecap")
    room = "vanishing"
    samples, _ = speech(CLIPS[1:2])
    async with websockets.connect(slow_final_server.captions_url(room)) as viewer:
        async with websockets.connect(slow_final_server.ingest_url(room)) as publisher:
            await publisher.send(start_message())
            await publisher.send(float_to_s16le(samples))
            await publisher.send(json.dumps({"type": "stop"}))
            publisher.transport.abort()  # gone without a close frame, as a phone that lost its network
        async with asyncio.timeout(timeout(60)):
            async for raw in viewer:
                message = json.loads(raw)
                if message.get("type") == "caption" and message["kind"] == "final" and message["text"]:
                    break
    async with aiohttp.ClientSession() as http, \
            http.get(f"{slow_final_server.base}/rooms/{room}/transcript.json") as response:
        transcript = await response.text()
    assert message["text"] in transcript, "the final is in the transcript"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


# --- overload end to end ----------------------------------------------------------------

CAPACITY = 2
PUBLISHERS = 4


@pytest.mark.slow
async def test_publishers_beyond_capacity_are_refused_and_the_admitted_keep_their_budget(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    server = await start_server(tmp_path_factory.mktemp("overload"), engine="whisper-onnx",
                                fallback_engine="pocketsphinx", max_publishers=CAPACITY)
    try:
        plans = [speech([CLIPS[k % len(CLIPS)], CLIPS[(k + 1) % len(CLIPS)]]) for k in range(PUBLISHERS)]
        results: list[StreamResult] = list(await asyncio.gather(*(
            stream_audio(server.ingest_url(f"overload-{k}"), samples) for k, (samples, _) in enumerate(plans))))
        capacity = (await readyz(server))["capacity"]
    finally:
        await server.runner.cleanup()
    assert capacity["publishers"] == CAPACITY and capacity["basis"] == "max_publishers"
    refused = [r for r in results if r.messages and r.messages[0]["type"] == "error"]
    admitted = [(r, reference) for r, (_, reference) in zip(results, plans, strict=True)
                if not (r.messages and r.messages[0]["type"] == "error")]
    assert len(refused) == PUBLISHERS - CAPACITY
    for result in refused:
        error = result.messages[0]
        assert error["code"] == "server_busy" and error["retry_after_ms"] > 0 and result.close_code == 1013
    for result, reference in admitted:
        assert result.close_code in (None, 1000) and result.messages[-1]["type"] == "stopped", result.messages[-1]
        finals = [m for m in result.finals if m["text"]]
        assert len(finals) >= 2, "every utterance has its final"
        assert word_error_rate([reference], [" ".join(m["text"] for m in finals)]) < 0.25
        lags = [m["latency_ms"] / 1000 for m in finals]
        assert max(lags) < timeout(3.0), f"final lags {lags}"


# --- a cold engine or a CPU spike does not hand the room to the fallback ---------------

@contextlib.contextmanager
def cpu_spike(processes: int) -> Iterator[None]:
    """Busy processes competing for every core, like a browser starting beside the server."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.mark.slow
async def test_the_first_utterance_after_ready_stays_on_the_primary_through_a_cpu_spike(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    server = await start_server(tmp_path_factory.mktemp("cold"), engine="whisper-onnx",
                                fallback_engine="pocketsphinx")
    try:
        injector = server.app[SCHEDULER].primary
        assert isinstance(injector, FaultInjector) and isinstance(injector.engine, WhisperOnnx)
        warmed = injector.engine.timings().encoder_calls
        assert warmed >= len(injector.engine.window.buckets_s), "every encoder window was used before ready"
        samples, reference = speech(CLIPS[:1])
        with cpu_spike(3 * (os.cpu_count() or 1)):
            result = await stream_audio(server.ingest_url("first"), samples)
        misses = {reason: await metric(server, "livecap_deadline_misses_total", reason=reason)
                  for reason in ("late", "predicted", "error", "skipped", "queued", "cpu")}
    finally:
        await server.runner.cleanup()
    engines = [m["engine"] for m in result.messages if m.get("type") == "caption"]
    assert engines and set(engines) == {"whisper-onnx"}, f"captions by engine: {engines}; misses {misses}"
    assert misses["late"] == misses["predicted"] == misses["error"] == 0, misses
    assert word_error_rate([reference], [" ".join(m["text"] for m in result.finals)]) < 0.25
