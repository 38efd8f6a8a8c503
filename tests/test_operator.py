"""What operators see: /metrics, speech-to-screen acks, the dashboard and its
actions, health and readiness, logs, and the Grafana/Prometheus files, all
against a real server over real sockets (and the dashboard in real Chromium)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets
from aiohttp.test_utils import make_mocked_request
from playwright.async_api import Browser
from playwright.async_api import expect as playwright_expect
from prometheus_client.parser import text_string_to_metric_families

from livecap.appkeys import ROOMS
from livecap.asr.engine import Word
from livecap.auth import Keys
from livecap.client import stream_audio
from livecap.config import ServerOptions
from livecap.logs import JsonFormatter
from livecap.server import create_app, readyz
from tests.conftest import LiveServer, fail_on_page_errors, timeout
from tests.speech import audio
from tests.test_pages import ARTIFACTS
from tests.test_server import drain

MONITORING = Path(__file__).resolve().parent.parent / "livecap" / "monitoring"
SPEECH = "librispeech-1988-24833-0001"  # 7.9 s, two sentences
expect = playwright_expect
expect.set_options(timeout=timeout(30) * 1000)


async def scrape(server: LiveServer) -> dict[str, Any]:
    """/metrics as {family name: family}, and {(sample name, sorted labels): value}."""
    async with aiohttp.ClientSession() as http, http.get(f"{server.base}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    return {"text": text, "families": families, "samples": samples}


def value(metrics: dict[str, Any], name: str, **labels: str) -> float:
    return float(metrics["samples"].get((name, tuple(sorted(labels.items()))), 0.0))


class AckingViewer:
    """A viewer socket that acknowledges what it receives like the pages do: the newest seq, at most
    twice a second."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[dict[str, Any]] = []
        self.acks: list[int] = []
        self.ws: websockets.ClientConnection | None = None

    async def run(self, connected: asyncio.Event) -> None:
        async with websockets.connect(self.url) as ws:
            self.ws = ws
            connected.set()
            last_ack = -1.0
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    self.messages.append(message)
                    if message.get("type") == "caption" and time.monotonic() - last_ack >= 0.5:
                        await ws.send(json.dumps({"type": "ack", "seq": message["seq"], "age_ms": 0}))
                        self.acks.append(message["seq"])
                        last_ack = time.monotonic()
            except websockets.ConnectionClosed:
                pass


async def test_metrics_show_latency_traffic_and_connections(sphinx_server: LiveServer) -> None:
    room = "metrics"
    before = await scrape(sphinx_server)
    viewer, connected = AckingViewer(sphinx_server.captions_url(room)), asyncio.Event()
    viewing = asyncio.create_task(viewer.run(connected))
    await connected.wait()
    signal = audio(SPEECH)
    result = await stream_audio(sphinx_server.ingest_url(room), signal, speed=4.0)
    finals = result.finals
    assert finals and viewer.ws is not None
    await viewer.ws.ping()  # the server has read every ack sent before this returns (RFC 6455 §5.5.2)
    during = await scrape(sphinx_server)

    labels = {"room": room, "engine": "pocketsphinx"}
    final_words = sum(len(m["words"]) for m in finals)
    assert value(during, "livecap_word_lag_seconds_count", **labels) == final_words > 0
    word_lag_mean = value(during, "livecap_word_lag_seconds_sum", **labels) / final_words
    assert 0 < word_lag_mean < 10, word_lag_mean
    assert value(during, "livecap_final_lag_seconds_count", **labels) == len(finals)
    assert value(during, "livecap_utterances_total", **labels) == len(finals)
    assert value(during, "livecap_captions_total", room=room, kind="final") == len(finals)
    assert value(during, "livecap_captions_total", room=room, kind="partial") > 0
    assert value(during, "livecap_audio_seconds_total", room=room) == pytest.approx(len(signal) / 16000, abs=0.001)
    assert value(during, "livecap_speech_to_screen_seconds_count", room=room) >= 1
    assert value(during, "livecap_viewers", room=room) == 1
    assert value(during, "livecap_connections", role="viewer") == value(before, "livecap_connections",
                                                                       role="viewer") + 1
    assert value(during, "livecap_connections", role="publisher") == value(before, "livecap_connections",
                                                                          role="publisher")
    assert value(during, "livecap_decode_step_seconds_count", engine="pocketsphinx", kind="finish") > 0
    assert value(during, "livecap_process_cpu_seconds_total") == 0, "no prefix on the process collector"
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "livecap_build_info"):
        assert any(key[0] == name for key in during["samples"]), name

    await viewer.ws.close()
    await viewing
    deadline = time.monotonic() + timeout(10)
    while value(after := await scrape(sphinx_server), "livecap_viewers", room=room) != 0:
        assert time.monotonic() < deadline, "the viewer gauge goes back down"
        await asyncio.sleep(0.05)
    assert value(after, "livecap_connections", role="viewer") == value(before, "livecap_connections", role="viewer")


async def test_speech_to_screen_is_measured_from_acks_and_bad_messages_close_the_viewer(
        sphinx_server: LiveServer) -> None:
    room_name = "acks"
    room = sphinx_server.app[ROOMS].get(room_name, publisher=True)  # publishes like a publisher's room
    segment = room.captions.new_segment()
    old = room.captions.final(segment, (Word("earlier", 0.0, 0.5),), 0.0, 0.5, "test", "1", 100.0)
    assert old is not None
    room.publish(old)
    async with websockets.connect(sphinx_server.captions_url(room_name)) as ws:
        assert json.loads(await ws.recv())["seq"] == old.seq  # replayed history
        await ws.send(json.dumps({"type": "ack", "seq": old.seq}))  # not live on this connection: not measured
        segment = room.captions.new_segment()
        event = room.captions.partial(segment, (), (Word("now", 0.0, 0.4),), 0.0, 0.4, "test", "1", 200.0)
        assert event is not None
        room.publish(event)
        assert json.loads(await ws.recv())["seq"] == event.seq
        await ws.send(json.dumps({"type": "ack", "seq": event.seq, "age_ms": 0}))
        await ws.send(json.dumps({"type": "ack", "seq": event.seq}))  # a repeat
        await ws.send(json.dumps({"type": "ack", "seq": event.seq + 50}))  # never sent
        await ws.ping()
        metrics = await scrape(sphinx_server)
        assert value(metrics, "livecap_speech_to_screen_seconds_count", room=room_name) == 1
        assert value(metrics, "livecap_speech_to_screen_seconds_sum", room=room_name) >= 0.2, "includes latency_ms"

    disconnects = value(metrics, "livecap_disconnects_total", code="rate_limited")
    cases: list[tuple[list[str | bytes], str, int]] = [
        (["{not json"], "invalid_json", 1007),
        (['{"type": "subscribe"}'], "protocol_error", 1008),
        (['{"type": "ack", "seq": "7"}'], "protocol_error", 1008),
        ([b"\x00\x01"], "protocol_error", 1008),
        ([json.dumps({"type": "ack", "seq": i}) for i in range(30)], "rate_limited", 4429),
    ]
    for frames, code, close_code in cases:
        async with websockets.connect(sphinx_server.captions_url(room_name)) as ws:
            for frame in frames:
                await ws.send(frame)
            errors = [m for m in await drain(ws) if m["type"] == "error"]
        assert [e["code"] for e in errors] == [code] and ws.close_code == close_code, code
    metrics = await scrape(sphinx_server)
    assert value(metrics, "livecap_disconnects_total", code="rate_limited") == disconnects + 1


async def test_dashboard_and_its_data_need_the_operator_key(sphinx_server: LiveServer) -> None:
    keys, base = sphinx_server.keys, sphinx_server.base
    sphinx_server.app[ROOMS].get("listed")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/dashboard") as response:
            assert response.status == 200 and response.content_type == "text/html"
            assert "dashboard.js" in await response.text()
        for headers, query in [({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?token=wrong"),
                               ({"Authorization": f"Bearer {keys.key('publisher', 'listed')}"}, "")]:
            async with http.get(f"{base}/operator/rooms{query}", headers=headers) as response:
                assert response.status == 401, (headers, query)
                assert response.headers["WWW-Authenticate"] == "Bearer"
            async with http.post(f"{base}/operator/rooms/listed/end{query}", headers=headers) as response:
                assert response.status == 401
        operator = keys.key("operator")
        async with http.get(f"{base}/operator/rooms?token={operator}") as response:
            assert response.status == 200
        async with http.get(f"{base}/operator/rooms", headers={"Authorization": f"Bearer {operator}"}) as response:
            assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
            snapshot = await response.json()
    assert snapshot["server"]["status"] == "ready" and snapshot["server"]["engine"] == "pocketsphinx"
    listed = next(r for r in snapshot["rooms"] if r["name"] == "listed")
    assert listed["state"] == "no_publisher" and listed["viewers"] == 0
    assert set(listed["latency"]) == {"word_lag", "final_lag", "speech_to_screen"}
    assert len(listed["series"]["t"]) == len(listed["series"]["word_lag_p95"]) == 60
    assert listed["links"]["qr"] == "/qr/listed"


async def test_an_operator_ends_a_room(sphinx_server: LiveServer) -> None:
    room = "ending"
    operator = {"Authorization": f"Bearer {sphinx_server.keys.key('operator')}"}
    publisher = await websockets.connect(sphinx_server.ingest_url(room))
    await publisher.send(json.dumps({"type": "start"}))
    ready = json.loads(await publisher.recv())
    viewer = await websockets.connect(sphinx_server.captions_url(room))
    signal = audio("librispeech-3752-4944-0001")
    await publisher.send(np.clip(signal[: int(2.5 * 16000)] * 32767, -32768, 32767).astype("<i2").tobytes())
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sphinx_server.base}/operator/rooms", headers=operator) as response:
            state = next(r for r in (await response.json())["rooms"] if r["name"] == room)
        assert state["session"] == ready["session"] and state["viewers"] == 1
        async with http.post(f"{sphinx_server.base}/operator/rooms/{room}/end", headers=operator) as response:
            assert response.status == 200
            assert await response.json() == {"room": room, "ended": True, "publisher_closed": True,
                                             "viewers_closed": 1}
        published, seen = await drain(publisher), await drain(viewer)
        assert publisher.close_code == viewer.close_code == 4410
        for messages in (published, seen):
            assert messages[-1]["code"] == "room_ended"
            final = next(m for m in messages if m.get("kind") == "final")
            assert len(final["text"].split()) >= 3, "the open utterance was finished before the close"
        async with http.get(f"{sphinx_server.base}/operator/rooms", headers=operator) as response:
            assert room not in [r["name"] for r in (await response.json())["rooms"]]
        async with http.post(f"{sphinx_server.base}/operator/rooms/{room}/end", headers=operator) as response:
            assert response.status == 404
    # The transcript stays and the room can start again.
    result = await stream_audio(sphinx_server.ingest_url(room), audio("librispeech-3752-4944-0000"), speed=4.0)
    assert result.finals and result.messages[-1]["type"] == "stopped"
    assert len(sphinx_server.app[ROOMS].get(room).captions.finals) >= 2


async def test_health_and_readiness_say_what_is_going_on(sphinx_server: LiveServer, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sphinx_server.base}/healthz") as response:
            health = await response.json()
        async with http.get(f"{sphinx_server.base}/readyz") as response:
            assert response.status == 200
            ready = await response.json()
    assert health["status"] == "ok" and health["uptime_s"] > 0 and "version" in health
    assert ready["status"] == "ready" and ready["engine"] == "pocketsphinx" and ready["primary_healthy"] is True
    assert ready["device"] == "cpu" and ready["latency_budget_s"] > 0
    # Before the engines are loaded (the lifecycle has not run): 503 and what is loading.
    app = create_app(ServerOptions(data_dir=tmp_path, engine="pocketsphinx"), Keys("s"))
    loading = await readyz(make_mocked_request("GET", "/readyz", app=app))
    assert loading.status == 503 and json.loads(loading.text or "") == {
        "status": "loading", "engine": "pocketsphinx", "fallback": None}


async def test_publisher_logs_carry_room_and_session(sphinx_server: LiveServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="livecap.server")
    result = await stream_audio(sphinx_server.ingest_url("logs"), audio("librispeech-3752-4944-0002"), speed=4.0)
    session = result.messages[0]["session"]
    records = [r for r in caplog.records if getattr(r, "session", None) == session]
    assert records[0].getMessage() == f"room logs: publisher session {session} started"
    assert "ended (stop)" in records[-1].getMessage()
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["room"] == "logs" and line["session"] == session and line["level"] == "info"


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b((?:livecap|process)_[a-z_]+)\b", expression))


async def test_grafana_and_alerts_use_only_metrics_the_server_exports(sphinx_server: LiveServer) -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    referenced = {name for p in panels for t in p["targets"] for name in metric_names(t["expr"])}
    referenced |= metric_names(json.dumps(dashboard["templating"]))
    referenced |= metric_names((MONITORING / "alerts.yml").read_text())
    exported = (await scrape(sphinx_server))["families"]
    # Families are listed even before their first sample: a histogram "x" has the series x_bucket, x_sum and
    # x_count, a counter "x" the series x_total.
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}
    names = {name + suffix for name, f in exported.items() for suffix in suffixes.get(f.type, ("",))}
    missing = sorted(referenced - names)
    assert not missing, f"not exported: {missing}"
    assert {"livecap_word_lag_seconds_bucket", "livecap_speech_to_screen_seconds_bucket",
            "livecap_decode_step_seconds_bucket", "process_cpu_seconds_total"} <= referenced
    titles = {p["title"] for p in panels}
    assert {"Word lag", "Final lag", "Speech to screen", "Decode step latency p95", "Deadline misses and fallbacks",
            "Viewers", "Connections", "Audio ingested", "CPU", "Memory"} <= titles


PROMTOOL = shutil.which("promtool")


async def test_promtool_accepts_the_scrape_config_rules_and_metrics(sphinx_server: LiveServer) -> None:
    assert PROMTOOL is not None, "promtool is missing: make system-deps (Debian package prometheus)"
    config = subprocess.run([PROMTOOL, "check", "config", str(MONITORING / "prometheus.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr
    scraped = (await scrape(sphinx_server))["text"]
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=scraped, capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr


# ---- the dashboard page in Chromium


@pytest.mark.slow
async def test_dashboard_shows_a_live_room_and_ends_it(sphinx_server: LiveServer,
                                                       browser: Browser) -> None:
    room, base = "dash-room", sphinx_server.base
    ARTIFACTS.mkdir(exist_ok=True)
    phone = await browser.new_page()
    phone_errors = fail_on_page_errors(phone)
    await phone.goto(f"{base}/view/{room}")
    await expect(phone.locator("#status")).to_have_attribute("data-state", "open")

    # Without a key the dashboard asks for one; a wrong one is refused in words.
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors = fail_on_page_errors(page)
    await page.goto(f"{base}/dashboard?theme=dark")
    await page.get_by_label("operator key").fill("wrong")
    await page.get_by_role("button", name="Open the dashboard").click()
    await expect(page.get_by_role("alert").first).to_contain_text("not accepted")
    await page.get_by_label("operator key").fill(sphinx_server.keys.key("operator"))
    await page.get_by_role("button", name="Open the dashboard").click()
    card = page.locator(f'.card[data-room="{room}"]')
    await expect(card.locator(".viewers")).to_have_text("1")

    speaking = asyncio.Event()
    publisher = asyncio.create_task(stream_audio(
        sphinx_server.ingest_url(room), np.concatenate([audio(r) for r in (SPEECH, "librispeech-3752-4944-0000",
                                                                           "librispeech-1988-24833-0002")]),
        speed=2.0, on_message=lambda m: speaking.set() if m.get("kind") == "final" else None))
    await expect(card).to_have_attribute("data-state", "speaking")
    await asyncio.wait_for(speaking.wait(), timeout(30))
    await expect(card.locator(".engine")).to_have_text("pocketsphinx")
    await expect(card.locator(".word-lag .p95")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
    await expect(card.locator(".screen .p50")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
    await expect(card.locator(".recent li time")).not_to_have_count(0)
    assert await card.locator(".plot .uplot canvas").count() == 1, "the chart is uPlot's"
    assert "token" not in page.url, "the key left the address bar"
    await page.screenshot(path=ARTIFACTS / "dashboard-dark-1280x800.png", animations="disabled")
    await page.evaluate("document.documentElement.dataset.theme = 'light'")
    await page.screenshot(path=ARTIFACTS / "dashboard-light-1280x800.png", animations="disabled")
    await card.get_by_role("link", name="Show QR").evaluate("a => a.removeAttribute('target')")
    qr_href = await card.get_by_role("link", name="Show QR").get_attribute("href")
    assert qr_href == f"/qr/{room}"

    await publisher  # the speaker's end is tested in test_an_operator_ends_a_room; here: the viewer's
    await card.get_by_role("button", name="End room…").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text(re.compile("the 1 viewer", re.IGNORECASE))
    await page.screenshot(path=ARTIFACTS / "dashboard-end-room.png", animations="disabled")
    await dialog.get_by_role("button", name="End room").click()
    await expect(card).to_have_count(0)
    await expect(phone.locator("#notice")).to_contain_text("an operator ended this room")
    await context.close()
    await phone.close()
    assert not errors and not phone_errors
