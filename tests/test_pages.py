"""The browser views in real Chromium: overlay, phone view, speaker page, join QR code.

Real speech goes through the real server to pages in Debian's Chromium driven
by Playwright (no browser download; see shared/notes/browser-tests.md). The
speaker page captures Chromium's fake microphone, fed with a recording.
Screenshots land in test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from playwright.async_api import Browser, Page, Playwright, Route, WebSocketRoute
from playwright.async_api import expect as playwright_expect

from benchmarks.scoring import word_error_rate
from livecap.appkeys import OPTIONS, ROOMS
from livecap.asr.engine import Word
from livecap.client import stream_audio
from livecap.config import ServerOptions
from livecap.pages import view_url
from tests.conftest import AudioSpy, LiveServer, fail_on_page_errors, launch_microphone, padded_wav, timeout
from tests.speech import audio, recordings

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# Recordings PocketSphinx transcribes well (WER 0-12% each), with words it gets right.
SENTENCES = ["librispeech-3752-4944-0000", "librispeech-3752-4944-0001", "librispeech-3752-4944-0002"]
SENTENCE_WORDS = ["scenery", "abandoned", "shadow"]
SPEAKER_RECORDING = "librispeech-1988-24833-0001"
SPEAKER_WER_BOUND = 0.35
"""PocketSphinx gets 7% on this file streamed directly; through the fake microphone, Chromium's capture at
44.1 kHz and the page's resampler it should stay close. A broken resampler, wrong rate or lost frames give
well over 50%."""

expect = playwright_expect
expect.set_options(timeout=timeout(30) * 1000)


@pytest.fixture
def server(sphinx_server: LiveServer) -> LiveServer:
    """The server the pages talk to; the engine is chosen here (words and bounds above fit PocketSphinx)."""
    return sphinx_server


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), dtype=np.float32)


# Records the stable text of every partial the overlay renders, to check that it only ever grows.
RECORD_STABLE = """
new MutationObserver(() => {
  for (const item of document.querySelectorAll(".item.partial")) {
    (window.stableSeen ??= []).push([item.dataset.segment, item.querySelector(".stable").textContent]);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.mark.slow
async def test_overlay_rolls_partials_into_finals(server: LiveServer, browser: Browser, artifacts: Path) -> None:
    room = "overlay"
    page = await browser.new_page(viewport={"width": 1280, "height": 720})
    errors = fail_on_page_errors(page)
    await page.goto(f"{server.base}/overlay/{room}?hold=0")
    await expect(page.locator("html")).to_have_attribute("data-connection", "open")
    await page.evaluate(RECORD_STABLE)
    signal = np.concatenate([np.concatenate([audio(r), silence(1.0)]) for r in SENTENCES])
    publisher = asyncio.create_task(stream_audio(server.ingest_url(room), signal, speed=1.5))

    first_partial = page.locator("#live .item.partial").first
    await expect(first_partial).to_have_text(re.compile(r"\w"))
    segment = await first_partial.get_attribute("data-segment")
    await page.evaluate("window.watched = document.querySelector('#live .item.partial')")
    await page.screenshot(path=artifacts / "overlay-partial.png", animations="disabled")
    # The very element that showed the partial settles as the final: no flicker, no re-layout.
    await page.wait_for_function("() => watched.isConnected && watched.classList.contains('final')"
                                 " && document.getElementById('log').contains(watched)", timeout=timeout(30) * 1000)
    assert await page.evaluate("watched.dataset.segment") == segment

    result = await publisher
    finals = " ".join(m["text"] for m in result.finals)
    assert all(word in finals for word in SENTENCE_WORDS), finals
    log = page.locator("#log")
    await expect(log).to_have_text(finals)
    await expect(page.locator("#live .item")).to_have_count(0)

    stable_seen: list[tuple[str, str]] = await page.evaluate("window.stableSeen")
    assert stable_seen, "partials were rendered"
    for (seg_a, before), (seg_b, after) in itertools.pairwise(stable_seen):
        if seg_a == seg_b:
            assert after.startswith(before), f"stable text changed: {before!r} → {after!r}"

    for name, background in [("dark", "linear-gradient(160deg, #10161f, #3b4a5c 60%, #1c232d)"),
                             ("light", "linear-gradient(160deg, #ffffff, #d9e2ea 60%, #f4efe6)")]:
        await page.evaluate(f"document.documentElement.style.background = {json.dumps(background)}")
        await page.screenshot(path=artifacts / f"overlay-on-{name}-video.png", animations="disabled")
    for theme in ("dark", "light"):
        projector = await browser.new_page(viewport={"width": 1280, "height": 720})
        await projector.goto(f"{server.base}/overlay/{room}?hold=0&theme={theme}&lines=3")
        await expect(projector.locator("#log")).to_have_text(finals)
        await projector.screenshot(path=artifacts / f"overlay-theme-{theme}.png", animations="disabled")
        await projector.close()
    await page.close()
    assert not errors


@pytest.mark.slow
async def test_overlay_marks_low_confidence_words_and_applies_corrections(server: LiveServer,
                                                                          browser: Browser) -> None:
    room_name = "overlay-words"
    page = await browser.new_page()
    errors = fail_on_page_errors(page)
    await page.goto(f"{server.base}/overlay/{room_name}?lowconf=0.5&color=ffcc00&size=30&lines=3&position=top")
    await expect(page.locator("html")).to_have_attribute("data-connection", "open")
    room = server.app[ROOMS].get(room_name)
    segment = room.captions.new_segment()
    words = (Word("captions", 0.0, 0.5, 0.9), Word("for", 0.5, 0.7, 0.8), Word("everyone", 0.7, 1.2, 0.2))
    for event in (room.captions.partial(segment, words[:1], words[1:2], 0.0, 0.7, "test", "1", 1.0),
                  room.captions.final(segment, words, 0.0, 1.2, "test", "1", 1.0)):
        assert event is not None
        room.publish(event)
    await expect(page.locator("#log .low-confidence")).to_have_text("everyone")
    await expect(page.locator("#log")).to_have_text("captions for everyone")
    box = page.locator("#box")
    assert await box.evaluate("e => getComputedStyle(e).color") == "rgb(255, 204, 0)"
    assert await box.evaluate("e => getComputedStyle(e).fontSize") == "30px"
    assert (await box.bounding_box() or {"y": 1e9})["y"] < 100, "position=top"
    room.publish(room.captions.correction(room.captions.finals[-1].seq, "captions for every one"))
    await expect(page.locator("#log .item.corrected")).to_have_text("captions for every one")
    await page.close()
    assert not errors


# The rendered lines of the overlay's captions: characters grouped by the line box they sit in.
RENDERED_LINES = """() => {
  const lines = new Map();
  const walker = document.createTreeWalker(document.querySelector(".flow"), NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const rect = range.getClientRects()[0];
      if (!rect || rect.width === 0) continue;
      const top = Math.round(rect.top);
      lines.set(top, (lines.get(top) ?? "") + node.data[i]);
    }
  }
  const window = document.querySelector(".window").getBoundingClientRect();
  return [...lines.entries()].sort((a, b) => a[0] - b[0])
    .map(([top, text]) => ({text: text.trim(), visible: top >= window.top - 1 && top < window.bottom - 1}));
}"""


@pytest.mark.slow
@pytest.mark.parametrize("lines", [2, 3])
async def test_overlay_608_preset_shows_at_most_32_columns_and_its_lines(server: LiveServer, browser: Browser,
                                                                        lines: int) -> None:
    """What an AV team sees on the projector matches the stream's CEA-608 captions: rows of at most
    32 characters, 2 or 3 of them, however large the text."""
    name = f"overlay-608-{lines}"
    page = await browser.new_page(viewport={"width": 1920, "height": 1080})
    errors = fail_on_page_errors(page)
    await page.goto(f"{server.base}/overlay/{name}?preset=608&lines={lines}&size=64&maxchars=80&hold=0")
    await expect(page.locator("html")).to_have_attribute("data-connection", "open")
    room = server.app[ROOMS].get(name)
    text = ("the committee approved the interdisciplinary programme for accessibility "
            "and the captions of every talk reach the stream in real time")
    words = tuple(Word(w, i * 0.3, i * 0.3 + 0.3, 0.9) for i, w in enumerate(text.split()))
    segment = room.captions.new_segment()
    event = room.captions.final(segment, words, 0.0, words[-1].end, "test", "1", 1.0)
    assert event is not None
    room.publish(event)
    await expect(page.locator("#log")).to_have_text(text)
    rendered = await page.evaluate(RENDERED_LINES)
    assert len(rendered) >= 4 and all(len(line["text"]) <= 32 for line in rendered), rendered
    assert " ".join(line["text"] for line in rendered) == text
    assert sum(line["visible"] for line in rendered) == lines, "the window shows the last rows only"
    assert "mono" in (await page.locator("#box").evaluate("e => getComputedStyle(e).fontFamily")).lower()
    await page.close()
    assert not errors


class Cutter:
    """Routes the page's caption sockets through Playwright so the test can cut them like bad Wi-Fi would, and
    records the acknowledgements the page sends."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.routes: list[WebSocketRoute] = []
        self.acks: list[tuple[float, int, int]] = []
        """(time, connection number, seq) of every ack."""
        self.acked = asyncio.Event()
        self.down = False

    async def handle(self, route: WebSocketRoute) -> None:
        if self.down:  # the network is gone: every attempt fails at once
            await route.close(code=1011)
            return
        number = len(self.routes)
        self.urls.append(route.url)
        self.routes.append(route)
        server = route.connect_to_server()

        def forward(message: str | bytes) -> None:
            if isinstance(message, str) and json.loads(message).get("type") == "ack":
                self.acks.append((time.monotonic(), number, json.loads(message)["seq"]))
                self.acked.set()
            server.send(message)

        route.on_message(forward)

    async def cut(self) -> None:
        self.down = True
        await self.routes[-1].close(code=4000)

    async def wait_for_ack(self, seq: int) -> None:
        while True:
            self.acked.clear()
            if self.acks and self.acks[-1][2] >= seq:
                return
            await asyncio.wait_for(self.acked.wait(), timeout(10))


async def page_finals(page: Page) -> list[tuple[int, str]]:
    return [(int(seq), text) for seq, text in await page.eval_on_selector_all(
        "#log .item", "items => items.map(i => [i.dataset.seq, i.querySelector('.text').textContent])")]


@pytest.mark.slow
async def test_phone_view_resumes_after_a_cut_without_missing_or_duplicated_finals(
        server: LiveServer, browser: Browser, artifacts: Path) -> None:
    room = "phone"
    context = await browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                        is_mobile=True, has_touch=True)
    page = await context.new_page()
    errors = fail_on_page_errors(page)
    cutter = Cutter()
    await page.route_web_socket(lambda url: "/ws/captions/" in url, cutter.handle)
    await page.goto(f"{server.base}/view/{room}")
    status = page.locator("#status")
    await expect(status).to_have_attribute("data-state", "open")

    final_during_cut = asyncio.Event()

    def on_message(message: dict[str, Any]) -> None:
        if message.get("kind") == "final" and cutter.down:
            final_during_cut.set()

    recordings_in_order = [*SENTENCES, "librispeech-1272-141231-0000", "librispeech-1988-24833-0000"]
    signal = np.concatenate([np.concatenate([audio(r), silence(1.0)]) for r in recordings_in_order])
    publisher = asyncio.create_task(stream_audio(server.ingest_url(room), signal, speed=2.0, on_message=on_message))

    await expect(page.locator("#log .item")).not_to_have_count(0)
    await cutter.cut()
    await expect(status).to_have_attribute("data-state", "reconnecting")
    await page.screenshot(path=artifacts / "phone-view-reconnecting.png", animations="disabled")
    seq_at_cut = max(seq for seq, _ in await page_finals(page))
    await asyncio.wait_for(final_during_cut.wait(), timeout(60))
    cutter.down = False  # the network is back; the page's next attempt gets through
    await expect(status).to_have_attribute("data-state", "open")
    resumed_after = int(parse_qs(urlsplit(cutter.urls[-1]).query)["after_seq"][0])
    assert resumed_after >= seq_at_cut, "the page resumes after the last event it has"
    await publisher

    async with aiohttp.ClientSession() as http, http.get(f"{server.base}/rooms/{room}/transcript.json") as response:
        transcript = [(m["seq"], m["text"]) for m in await response.json()]
    assert len(transcript) >= len(recordings_in_order) - 1
    await expect(page.locator("#log .item")).to_have_count(len(transcript))
    assert await page_finals(page) == transcript, "no final missing, none twice, in order"
    assert len(cutter.routes) >= 2, "the page reconnected"

    # Acknowledgements: the latest rendered seq, at most twice a second per connection.
    await cutter.wait_for_ack(transcript[-1][0])
    for (t1, n1, s1), (t2, n2, s2) in itertools.pairwise(cutter.acks):
        if n1 == n2:
            assert s2 > s1 and t2 - t1 > 0.4, "acks grow and come at most twice a second"

    await page.screenshot(path=artifacts / "phone-view-390x844.png", animations="disabled")

    # Reading preferences survive a reload.
    await page.locator("#settings summary").click()
    await page.get_by_label("Dark").check()
    await page.get_by_role("button", name="Larger text").click()
    await page.get_by_role("button", name="Larger text").click()
    await page.screenshot(path=artifacts / "phone-view-settings.png", animations="disabled")
    await page.reload()
    await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    await expect(page.locator("#size-value")).to_have_text("130%")
    await expect(page.locator("#log .item")).not_to_have_count(0)
    await page.screenshot(path=artifacts / "phone-view-dark-130.png", animations="disabled")

    # Scrolling up to reread stops following; "Jump to live" resumes it.
    at_live_end = "() => innerHeight + scrollY >= document.documentElement.scrollHeight - 2"
    await page.set_viewport_size({"width": 390, "height": 300})
    await page.wait_for_function(at_live_end)  # the smaller window still shows the live end
    await page.mouse.wheel(0, -600)
    jump = page.get_by_role("button", name="Jump to live")
    await expect(jump).to_be_visible()
    assert not await page.evaluate(at_live_end)
    await jump.click()
    await expect(jump).to_be_hidden()
    assert await page.evaluate(at_live_end)
    await context.close()
    assert not errors


@pytest.mark.slow
async def test_speaker_page_sends_the_microphone_and_shows_the_captions(
        server: LiveServer, playwright: Playwright, chromium_env: dict[str, str | float | bool], tmp_path: Path,
        received_audio: AudioSpy, artifacts: Path) -> None:
    room = "speaker"
    speech = audio(SPEAKER_RECORDING)
    wav = padded_wav(speech, tmp_path / "microphone.wav")
    microphone = await launch_microphone(playwright, chromium_env, wav)
    try:
        page = await microphone.new_page(viewport={"width": 480, "height": 900})
        errors = fail_on_page_errors(page)

        # Without a key in the URL the page asks for one; a wrong one is refused in words.
        await page.goto(f"{server.base}/speak/{room}")
        await page.get_by_label("Publisher key").fill("not-the-key")
        await page.get_by_role("button", name="Start").click()
        await expect(page.get_by_role("alert")).to_contain_text("publisher key was not accepted")
        await expect(page.get_by_role("button", name="Start")).to_be_enabled()

        await page.goto(f"{server.base}/speak/{room}?token={server.keys.key('publisher', room)}")
        await expect(page.get_by_label("Publisher key")).to_be_hidden()
        await page.get_by_role("button", name="Start").click()
        await expect(page.locator("#status")).to_have_attribute("data-state", "open")
        await expect(page.locator(".item.partial").filter(has_text=re.compile(r"\w+ \w+ \w+"))).not_to_have_count(0)
        await page.screenshot(path=artifacts / "speaker-page.png", animations="disabled")
        # The leading silence, the recording and 1.5 s of the silence after it reach the server; then stop.
        await received_audio.wait_for(len(speech) + int(2.5 * 16000))
        await page.get_by_role("button", name="Stop").click()
        await expect(page.locator("#status-text")).to_have_text("Stopped")

        rms = float(np.sqrt(np.mean(received_audio.samples**2)))
        assert rms > 0.01, f"the received audio is (nearly) silent: rms {rms:.4f}"

        finals = [e.text for e in server.app[ROOMS].get(room).captions.transcript()]
        wer = word_error_rate([recordings()[SPEAKER_RECORDING].text], [" ".join(finals)])
        assert wer < SPEAKER_WER_BOUND, f"WER {wer:.1%}: {finals}"
        await expect(page.locator("#log")).to_contain_text(finals[-1])
        assert not errors
    finally:
        await microphone.close()


async def test_qr_code_points_at_the_phone_view(server: LiveServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base}/qr/main-hall") as response:
            page = await response.text()
            assert response.status == 200 and response.content_type == "text/html"
        assert f"{server.base}/view/main-hall" in page and "<svg" in page
        async with http.get(f"{server.base}/rooms/main-hall/qr.svg") as response:
            assert response.content_type == "image/svg+xml"
            assert (await response.text()).startswith("<svg")
        for path in ("/view/main-hall", "/overlay/main-hall", "/speak/main-hall", "/static/captions.js",
                     "/static/pcm-worklet.js"):
            async with http.get(f"{server.base}{path}") as response:
                assert response.status == 200, path
        async with http.get(f"{server.base}/view/no%20spaces") as response:
            assert response.status == 404


def test_qr_code_uses_the_public_url_and_carries_the_viewer_key() -> None:
    app = web.Application()
    app[OPTIONS] = ServerOptions(public_url="https://captions.example.org/")
    request = make_mocked_request("GET", "/rooms/main-hall/qr.svg?token=k%26y", app=app)
    assert view_url(request, "main-hall") == "https://captions.example.org/view/main-hall?token=k%26y"


# ---- a refusing or unreachable server is asked less and less often, never sooner than it says

REFUSED_WINDOW_S = 12.0
"""Long enough for the backoff to reach 8 s windows; the old fixed 0.25 s delays made about 60 attempts in it."""


async def count_refusals(server: LiveServer, window_s: float) -> tuple[float, float]:
    """(refusals in the first half, in the second half) of a window of wall time: the measurement itself."""
    start = server.disconnects("rate_limited")
    await asyncio.sleep(window_s / 2)
    middle = server.disconnects("rate_limited")
    await asyncio.sleep(window_s / 2)
    return middle - start, server.disconnects("rate_limited") - middle


@pytest.mark.slow
async def test_refused_phone_view_backs_off(refusing_server: LiveServer, browser: Browser) -> None:
    page = await browser.new_page()
    errors = fail_on_page_errors(page)
    await page.goto(f"{refusing_server.base}/view/refused")
    await expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
    first, second = await count_refusals(refusing_server, REFUSED_WINDOW_S)
    # Exponential windows of 0.5, 1, 2, 4, 8 s with full jitter: about 6 attempts in 12 s, rarely 9.
    assert 2 <= first + second <= 10, (first, second)
    assert second <= 4, f"the retries thin out: {first} then {second}"
    await expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")  # still trying
    await page.close()
    assert not errors


@pytest.mark.slow
async def test_refused_speaker_page_backs_off(refusing_server: LiveServer, playwright: Playwright,
                                              chromium_env: dict[str, str | float | bool]) -> None:
    microphone = await launch_microphone(playwright, chromium_env)
    try:
        page = await microphone.new_page()
        errors = fail_on_page_errors(page)
        room = "refused-speaker"
        await page.goto(f"{refusing_server.base}/speak/{room}?token={refusing_server.keys.key('publisher', room)}")
        await page.get_by_role("button", name="Start").click()
        await expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        first, second = await count_refusals(refusing_server, REFUSED_WINDOW_S)
        assert 2 <= first + second <= 10 and second <= 4, (first, second)
        await expect(page.locator("#status-text")).to_contain_text("connections from one address")  # the reason
        assert not errors
    finally:
        await microphone.close()


class RetryHintInjector:
    """Fault injector: relays the page's caption sockets to the real server and adds ``retry_after_ms`` to the
    error events it sends (the server gives that hint with server_busy at ``start``; this puts it on every
    refusal), recording when each attempt began."""

    def __init__(self, retry_after_ms: int) -> None:
        self.retry_after_ms = retry_after_ms
        self.attempts: list[float] = []

    async def handle(self, route: WebSocketRoute) -> None:
        self.attempts.append(time.monotonic())
        server = route.connect_to_server()

        def hint(message: str | bytes) -> None:
            event = json.loads(message)
            if event.get("type") == "error":
                event["retry_after_ms"] = self.retry_after_ms
            route.send(json.dumps(event))

        server.on_message(hint)
        server.on_close(lambda code, reason: route.close(code=code, reason=reason))


@pytest.mark.slow
async def test_refused_page_waits_as_long_as_the_server_asks(refusing_server: LiveServer, browser: Browser) -> None:
    injector = RetryHintInjector(retry_after_ms=3000)
    page = await browser.new_page()
    errors = fail_on_page_errors(page)
    await page.route_web_socket(lambda url: "/ws/captions/" in url, injector.handle)
    await page.goto(f"{refusing_server.base}/overlay/hinted")
    await asyncio.sleep(REFUSED_WINDOW_S)  # the measurement window
    # Not even a wake-up or a network change may come back sooner.
    await page.evaluate("dispatchEvent(new Event('online'))")
    await asyncio.sleep(1.0)
    gaps = [b - a for a, b in itertools.pairwise(injector.attempts)]
    assert 2 <= len(injector.attempts) <= 4, gaps
    assert all(gap >= 2.9 for gap in gaps), f"attempts {gaps} s apart; the server asked for 3 s"
    await page.close()
    assert not errors


@pytest.mark.slow
async def test_dashboard_polls_an_unreachable_server_less_and_less(server: LiveServer, browser: Browser) -> None:
    polls: list[float] = []
    down = True

    async def network(route: Route) -> None:
        """Fault injector: while ``down``, every poll fails as on a dead network."""
        polls.append(time.monotonic())
        await (route.abort() if down else route.continue_())

    page = await browser.new_page()
    await page.route("**/operator/rooms", network)
    await page.goto(f"{server.base}/dashboard?token={server.keys.key('operator')}")
    await expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
    start = time.monotonic()
    await asyncio.sleep(REFUSED_WINDOW_S)
    in_window = [t for t in polls if t >= start]
    assert len(in_window) <= 7, f"{len(in_window)} polls in {REFUSED_WINDOW_S:.0f} s (one a second before)"
    down = False
    await expect(page.locator("#status")).to_have_attribute("data-state", "open")
    await page.close()
