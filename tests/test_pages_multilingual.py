"""The pages in a multilingual room, in real Chromium: the English track, and lines in any script.

Real French and Arabic speech (../shared/speech-multilingual) goes through a real server with the
multilingual Whisper model to the phone view and the overlay in Debian's Chromium, driven by
Playwright (see shared/notes/browser-tests.md); the speaker page sends French from Chromium's fake
microphone in the language its speaker chose, and the dashboard sets a room's languages. Screenshots
land in test-artifacts/.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from playwright.async_api import Browser, Locator, Page, Playwright, Route, WebSocket
from playwright.async_api import expect as playwright_expect

from livecap.appkeys import ROOMS
from livecap.asr.engine import Word
from livecap.client import StreamResult, stream_audio
from livecap.language import WHISPER_LANGUAGES
from tests.conftest import (
    AudioSpy,
    LiveServer,
    fail_on_page_errors,
    launch_microphone,
    padded_wav,
    start_server,
    timeout,
)
from tests.speech import multilingual
from tests.speech import multilingual_audio as speech

MULTILINGUAL = Path(__file__).resolve().parents[2] / "shared" / "speech-multilingual"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

FRENCH = "asterisk-fr-tt-allbusy"
ARABIC = "auditok-ar-one-to-six"
FRENCH_WORDS = {"nous", "nos", "sont", "votre", "est", "pour", "merci", "tous"}
"""French words of the recording, which an English line does not contain."""
ENGLISH_WORDS = {"the", "a", "of", "to", "and", "is", "are", "our", "your", "you", "we", "for", "all", "call", "please"}
"""Words any English rendering of the recording has a few of (tests/test_languages.py checks the translation)."""
ARABIC_LETTERS = re.compile(r"[\u0600-\u06ff]")

expect = playwright_expect
expect.set_options(timeout=timeout(30) * 1000)


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """Whisper: tiny.en for English, base for French and Arabic, loaded before the server is ready;
    speech may be sent at twice real time."""
    live = await start_server(tmp_path_factory.mktemp("multilingual-pages"), max_audio_rate=4.0, languages="fr,ar")
    yield live
    await live.runner.cleanup()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


async def publish(server: LiveServer, room: str, recording: str, translate: str | None) -> StreamResult:
    """Stream ``recording`` in its language into ``room``; the captions the publisher got."""
    result = await stream_audio(server.ingest_url(room), speech(recording), speed=2.0,
                                language=multilingual()[recording]["language"], translate=translate)
    assert result.error is None, result.error
    return result


def lines_of(result: StreamResult, kind: str) -> list[str]:
    """The text of the publisher's caption events of ``kind`` that have any."""
    return [m["text"] for m in result.messages if m.get("type") == "caption" and m["kind"] == kind and m["text"]]


async def download(server: LiveServer, link: Locator) -> str:
    """What a download link of a page serves."""
    href = await link.get_attribute("href")
    assert href, "the link has no address"
    async with aiohttp.ClientSession() as http, http.get(f"{server.base}{href}") as response:
        assert response.status == 200, href
        return await response.text()


async def languages(items: Locator) -> list[tuple[str | None, str | None]]:
    """(lang, dir) of each line."""
    return [(item["lang"], item["dir"]) for item in await items.evaluate_all(
        "items => items.map(i => ({lang: i.getAttribute('lang'), dir: i.getAttribute('dir')}))")]


def caption_sockets(page: Page) -> list[str]:
    """The URL of every caption socket the page opens, in order."""
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url) if "/ws/captions/" in ws.url else None)
    return urls


# ---- the phone view: English, or the words as spoken; the choice kept on the device ----------------------------


@pytest.mark.slow
async def test_phone_view_reads_a_french_room_in_english_or_in_french(server: LiveServer, browser: Browser,
                                                                      artifacts: Path) -> None:
    room = "salle-fr"
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    page = await context.new_page()
    errors = [fail_on_page_errors(page)]
    sockets = caption_sockets(page)
    await page.goto(f"{server.base}/view/{room}?track=en")
    await expect(page.locator("#status")).to_have_attribute("data-state", "open")
    assert "track=en" in sockets[-1]
    result = await publish(server, room, FRENCH, translate="en")
    # The publisher gets every event: the French lines and their translations (test_languages checks them).
    original, english = lines_of(result, "final"), lines_of(result, "translation")
    assert original and len(english) == len(original), (original, english)
    assert len(words(" ".join(english)) & ENGLISH_WORDS) >= 3, f"not English: {english}"

    # ?track=en: the translations are the lines, in English; none of the French.
    lines = page.locator("#log .item .text")
    await expect(lines).to_have_text(english)
    assert await languages(lines) == [("en", "ltr")] * len(english)
    assert not words(await page.locator("main").inner_text()) & FRENCH_WORDS
    await page.screenshot(path=artifacts / "phone-view-english-track.png", animations="disabled")
    await lines.first.click()  # a translation is flagged as a line of its own
    await page.get_by_role("button", name="Caption wrong?").click()
    await expect(page.get_by_role("button", name="Reported. Thank you")).to_be_visible()
    first = next(m for m in result.messages if m.get("kind") == "translation" and m["text"])
    assert (first["segment"], True) in server.app[ROOMS].get(room).flaggers, "the translation's flag reached the room"
    await page.locator("#settings summary").click()
    exported = await download(server, page.locator("#download-txt"))
    assert all(line in exported for line in english) and not words(exported) & FRENCH_WORDS, exported

    # "Original": the French lines (their seqs are below the translations': a page that kept its
    # last seq across the switch would skip them), marked as French; the downloads follow.
    await page.get_by_label("Original").check()
    await expect(lines).to_have_text(original)
    assert await languages(lines) == [("fr", "ltr")] * len(original)
    assert "track=" not in sockets[-1], "the original track is the server's default"
    exported = await download(server, page.locator("#download-txt"))
    assert all(line in exported for line in original), exported
    assert "track=original" in page.url, "a reload keeps the choice, not the ?track= the page came with"
    await page.locator("#settings summary").click()
    await lines.first.click()
    await expect(page.get_by_role("button", name="Caption wrong?")).to_be_visible()
    await page.screenshot(path=artifacts / "phone-view-original-track.png", animations="disabled")
    await page.close()

    # The choice is kept on the device; ?track= overrides it.
    page = await context.new_page()
    errors.append(fail_on_page_errors(page))
    lines = page.locator("#log .item .text")
    await page.goto(f"{server.base}/view/{room}")
    await expect(lines).to_have_text(original)
    await page.locator("#settings summary").click()
    await page.get_by_label("English").check()
    await expect(lines).to_have_text(english)
    await page.reload()
    await expect(lines).to_have_text(english)
    await expect(page.get_by_label("English")).to_be_checked()
    await page.goto(f"{server.base}/view/{room}?track=original")
    await expect(lines).to_have_text(original)
    await context.close()

    # The overlay takes ?track= too.
    overlay = await browser.new_page(viewport={"width": 1280, "height": 720})
    errors.append(fail_on_page_errors(overlay))
    overlay_sockets = caption_sockets(overlay)
    await overlay.goto(f"{server.base}/overlay/{room}?hold=0&track=en")
    await expect(overlay.locator("#log")).to_have_text(" ".join(english))
    assert "track=en" in overlay_sockets[-1]
    assert await languages(overlay.locator("#log .item .text")) == [("en", "ltr")] * len(english)
    await overlay.close()
    assert not any(errors), errors


# ---- the dashboard: each room's language, and why its captions are degraded ------------------------------------


@pytest.mark.slow
async def test_dashboard_shows_the_room_language_and_why_it_is_degraded(server: LiveServer, browser: Browser) -> None:
    room = "tableau"
    await publish(server, room, FRENCH, translate="en")
    page = await browser.new_page()
    errors = fail_on_page_errors(page)
    answer: dict[str, Any] = {}

    async def inject(route: Route) -> None:
        """Fault injector: the server's answer, with the room's newer fields as ``answer`` says (None: absent)."""
        response = await route.fetch()
        snapshot = await response.json()
        for shown in snapshot["rooms"]:
            if shown["name"] == room:
                shown.update(answer)
                for name in [name for name, value in answer.items() if value is None]:
                    del shown[name]
        await route.fulfill(response=response, json=snapshot)

    await page.route("**/operator/rooms", inject)
    await page.goto(f"{server.base}/dashboard?token={server.keys.key('operator')}")
    card = page.locator(f'.card[data-room="{room}"]')
    await expect(card.locator(".language")).to_have_text("French → English")  # the server's own: set at start
    answer.update(degraded="partial captions skipped (3 so far): the fr model misses the latency budget")
    await expect(card.locator(".degraded")).to_have_text(f"⚠ {answer['degraded']}")
    await expect(card).to_have_attribute("data-degraded", "true")
    answer.update(language={"language": None, "detected": "es", "pinned": False, "locked": False,
                            "locked_after_s": None}, degraded="")
    await expect(card.locator(".language")).to_have_text("Detecting… (Spanish?) → English")
    await expect(card.locator(".degraded")).to_be_hidden()
    answer.update(language=None, translate=None, degraded=None)  # a server without them
    await expect(card.locator(".language-stat")).to_be_hidden()
    await expect(card.locator(".degraded")).to_be_hidden()
    await expect(card.locator(".viewers")).to_have_text(re.compile(r"\d"))
    await page.close()
    assert not errors


# ---- the speaker page: the language spoken and an English track, the speaker's choice -----------------------

SPOKEN = "asterisk-fr-queue-periodic-announce"
"""The shortest French recording (7.3 s): the fake microphone plays it at real-time pace."""


def ingest_messages(page: Page) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The JSON messages the page sends and receives on its ingest sockets, in order."""
    sent: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []

    def watch(ws: WebSocket) -> None:
        if "/ws/ingest/" in ws.url:
            ws.on("framesent", lambda payload: sent.append(json.loads(payload)) if isinstance(payload, str) else None)
            ws.on("framereceived",
                  lambda payload: received.append(json.loads(payload)) if isinstance(payload, str) else None)

    page.on("websocket", watch)
    return sent, received


@pytest.mark.slow
async def test_speaker_page_sends_the_language_and_translation_chosen(
        server: LiveServer, playwright: Playwright, chromium_env: dict[str, str | float | bool], tmp_path: Path,
        received_audio: AudioSpy, artifacts: Path) -> None:
    room = "orateur"
    spoken = speech(SPOKEN)
    wav = padded_wav(spoken, tmp_path / "microphone.wav")
    microphone = await launch_microphone(playwright, chromium_env, wav)
    try:
        page = await microphone.new_page(viewport={"width": 480, "height": 900})
        errors = fail_on_page_errors(page)
        sent, received = ingest_messages(page)
        address = f"{server.base}/speak/{room}?token={server.keys.key('publisher', room)}"
        await page.goto(address)
        language, translate = page.get_by_label("Language spoken"), page.get_by_label("English translation")

        # The menu: the room's setting (nothing sent), detection, then Whisper's 99 languages by name.
        options = await language.locator("option").evaluate_all("os => os.map(o => [o.value, o.textContent])")
        assert options[:2] == [["", "Room's setting"], ["auto", "Detect (auto)"]], options[:2]
        named = dict(options[2:])
        assert len(options) == 2 + len(WHISPER_LANGUAGES) and named == WHISPER_LANGUAGES, \
            {code: (named.get(code), WHISPER_LANGUAGES.get(code)) for code in named.keys() | WHISPER_LANGUAGES.keys()
             if named.get(code) != WHISPER_LANGUAGES.get(code)}
        assert list(named.values()) == sorted(named.values(), key=str.casefold)
        await expect(language).to_have_value("")
        await expect(translate).not_to_be_checked()

        # The choice is kept on the device; ?language= overrides the language kept (an unknown one does not),
        # and a choice made on such a page replaces it in the address.
        await language.select_option("fr")
        await translate.check()
        await page.reload()
        await expect(language).to_have_value("fr")
        await expect(translate).to_be_checked()
        await page.goto(f"{address}&language=auto")
        await expect(language).to_have_value("auto")
        await language.select_option("es")
        assert "language=es" in page.url
        await language.select_option("fr")
        await page.goto(f"{address}&language=xx")
        await expect(language).to_have_value("fr")

        await page.get_by_role("button", name="Start").click()
        await expect(page.locator("#status")).to_have_attribute("data-state", "open")
        await expect(language).to_be_disabled()
        # The leading silence, the speech and 1.5 s of the silence after it reach the server; then stop.
        await received_audio.wait_for(len(spoken) + int(2.5 * 16000))
        await page.get_by_role("button", name="Stop").click()
        await expect(page.locator("#status-text")).to_have_text("Stopped")
        rms = float(np.sqrt(np.mean(received_audio.samples**2)))
        assert rms > 0.01, f"the received audio is (nearly) silent: rms {rms:.4f}"

        assert [m for m in sent if m.get("type") == "start"] == [
            {"type": "start", "format": "s16le", "sample_rate": 16000, "channels": 1, "language": "fr",
             "translate": "en"}]
        # "stopped" comes after every final and translation of the session (the page stops waiting after 10 s).
        assert {"type": "stopped"} in received, received[-3:]
        told = [m for m in received if m["type"] == "room"]
        assert told and told[-1]["language"]["language"] == "fr" and told[-1]["language"]["pinned"], told
        assert told[-1]["translate"] == "en", told
        captions = [m for m in received if m["type"] == "caption"]
        finals = [m for m in captions if m["kind"] == "final" and m["text"]]
        translations = [m for m in captions if m["kind"] == "translation"]
        assert finals and all(m["language"] == "fr" for m in finals), finals
        assert words(" ".join(m["text"] for m in finals)) & FRENCH_WORDS, finals
        assert [m["segment"] for m in translations] == [m["segment"] for m in finals], translations
        assert all(m["language"] == "en" and m["source_language"] == "fr" for m in translations), translations
        english = " ".join(m["text"] for m in translations)
        assert len(words(english) & ENGLISH_WORDS) >= 2, f"not English: {english}"

        # The page shows the French lines, marked as French; the translations are the English track's.
        lines = page.locator("#log .item .text")
        await expect(lines).to_have_text([m["text"] for m in finals])
        assert await languages(lines) == [("fr", "ltr")] * len(finals)
        await page.screenshot(path=artifacts / "speaker-page-french.png", animations="disabled")
        assert not errors
    finally:
        await microphone.close()


# ---- the dashboard's settings: a room's language, the languages it may be, its English track ---------------


@pytest.mark.slow
async def test_dashboard_settings_set_the_language_candidates_and_translation(server: LiveServer, browser: Browser,
                                                                              artifacts: Path) -> None:
    room = "reglages"
    operator = server.keys.key("operator")
    address = f"{server.base}/operator/rooms/{room}/settings"

    async def saved() -> dict[str, Any]:
        async with http.get(address) as response:
            assert response.status == 200
            settings: dict[str, Any] = (await response.json())["settings"]
            return settings

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {operator}"}) as http, \
            http.ws_connect(server.captions_url(room)):  # a viewer: the room is on the dashboard
        page = await browser.new_page()
        errors = fail_on_page_errors(page)
        patches: list[dict[str, Any]] = []
        page.on("request", lambda r: patches.append(json.loads(r.post_data or "{}")) if r.method == "PATCH" else None)
        await page.goto(f"{server.base}/dashboard?token={operator}")
        dialog = page.locator("#settings-dialog")
        settings_button = page.locator(f'.card[data-room="{room}"]').get_by_role("button", name="Settings…")
        language, candidates = dialog.get_by_label("Language spoken"), dialog.get_by_label("Languages it may be")
        translate = dialog.get_by_label("English translation")

        await settings_button.click()
        await expect(language).to_have_value("en")  # the default
        await expect(language.locator("option")).to_have_count(1 + len(WHISPER_LANGUAGES))
        await expect(candidates).to_be_hidden()
        await expect(translate).not_to_be_checked()
        await language.select_option("auto")
        await candidates.fill("es, EN")
        await translate.check()
        await page.screenshot(path=artifacts / "dashboard-settings-languages.png", animations="disabled")
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()
        settings = await saved()
        assert (settings["language"], settings["candidates"], settings["translate"]) == ("auto", ["es", "en"], "en")

        # Read back; a candidate that is no Whisper code: the server's refusal, word for word; nothing saved.
        await settings_button.click()
        await expect(language).to_have_value("auto")
        await expect(candidates).to_have_value("es, en")
        await expect(translate).to_be_checked()
        await candidates.fill("es, xx")
        await dialog.get_by_role("button", name="Save").click()
        async with http.patch(address, json={"candidates": ["es", "xx"]}) as response:
            assert response.status == 400
            refusal = (await response.json())["message"]
        await expect(dialog.get_by_role("alert")).to_have_text(f"Not saved: {refusal}")
        await expect(dialog).to_be_visible()
        assert (await saved())["candidates"] == ["es", "en"]

        # Only changed languages are sent: saving another setting leaves an auto room's detection alone.
        await candidates.fill("es, en")
        await dialog.get_by_label("Words to mask").fill("zut")
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()
        assert (await saved())["profanity"] == ["zut"]
        assert patches[0].items() >= {"language": "auto", "candidates": ["es", "en"], "translate": "en"}.items()
        assert patches[-1].keys() == {"glossary", "profanity", "viewer_keys", "recording"}, patches[-1]
        await page.close()
        assert not errors


# ---- right to left: Arabic in the overlay ---------------------------------------------------------------------


@pytest.mark.slow
async def test_overlay_sets_arabic_right_to_left(server: LiveServer, browser: Browser, artifacts: Path) -> None:
    room = "arabic"
    page = await browser.new_page(viewport={"width": 1280, "height": 720})
    errors = [fail_on_page_errors(page)]
    await page.goto(f"{server.base}/overlay/{room}?hold=0&lines=3&theme=dark")
    await expect(page.locator("html")).to_have_attribute("data-connection", "open")
    said = lines_of(await publish(server, room, ARABIC, translate=None), "final")
    assert said and all(ARABIC_LETTERS.search(line) for line in said), said

    lines = page.locator("#log .item .text")
    await expect(page.locator("#log")).to_have_text(" ".join(said))
    assert await languages(lines) == [("ar", "rtl")] * len(said)
    await expect(page.locator(".flow")).to_have_attribute("dir", "rtl")
    # Laid out from the right: the first word said starts at the box's right edge.
    box = await page.locator("#box").bounding_box()
    first = await lines.first.evaluate("""e => {
      const range = document.createRange();
      range.setStart(e.firstChild, 0);
      range.setEnd(e.firstChild, 1);
      const r = range.getBoundingClientRect();
      return {left: r.left, right: r.right};
    }""")
    assert box
    assert box["x"] + box["width"] - first["right"] < 0.1 * box["width"], (box, first)
    # In the line's fonts: Arabic ones first, not the Latin stack.
    font = await lines.last.evaluate("e => getComputedStyle(e).fontFamily")
    assert font.startswith('"Noto Naskh Arabic"'), font
    await page.screenshot(path=artifacts / "overlay-arabic.png", animations="disabled")
    await page.close()

    # The room is not translated: a phone on the English track says so rather than stay blank.
    phone = await browser.new_page(viewport={"width": 390, "height": 844})
    errors.append(fail_on_page_errors(phone))
    await phone.goto(f"{server.base}/view/{room}?track=en")
    await expect(phone.locator("#empty")).to_contain_text("speaks Arabic and is not translated into English")
    await expect(phone.locator("#log .item")).to_have_count(0)
    await phone.close()
    assert not any(errors), errors


# ---- writing without spaces: the stylesheets -------------------------------------------------------------------

JAPANESE = ("ちょっとキャッシュのチェックをしてから、ショッピングセンターでジャケットとシャツを買いました。"
            "きょうはとってもきゅうくつなスケジュールでしたが、みんなでパーティーをしてたのしかったです。")
"""Small kana (ょ, ッ, ャ), prolonged sound marks (ー) and closing punctuation throughout: a line
break before any of them is one that Japanese typesetting forbids (kinsoku)."""
CHINESE = "今天我们讨论的是如何在一个没有空格的语言里正确地换行并且保证每一行都不会超出屏幕的宽度。" * 2
THAI = "การประชุมวันนี้จะพูดถึงการแบ่งบรรทัดของภาษาที่เขียนโดยไม่มีช่องว่างระหว่างคำอย่างถูกต้อง" * 2
ARABIC_LINE = "مرحبا بكم في المؤتمر"
ENGLISH = "Welcome to the conference: captions in every language"
NO_LINE_START = set("ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶーゝゞヽヾ々、。，．）」』】〕〉》！？：；")
"""Japanese characters no line may start with: small kana and prolonged sound marks (line
breaking class CJ, which CSS line-break: strict keeps at the end of a line) and closing punctuation."""

LINE_STARTS = """element => {
  // Each line box of the element's text: its first character, and its left and right edges.
  const lines = [];
  const range = document.createRange();
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  for (let node; (node = walker.nextNode());) {
    for (let i = 0; i < node.length; i++) {
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const rect = range.getClientRects()[0];
      if (!rect || !node.data[i].trim()) continue;
      const line = lines.at(-1);
      if (!line || rect.top > line.top + rect.height / 2) lines.push({first: node.data[i], top: rect.top,
                                                                         left: rect.left, right: rect.right});
      else Object.assign(line, {left: Math.min(line.left, rect.left), right: Math.max(line.right, rect.right)});
    }
  }
  return lines;
}"""


def publish_lines(server: LiveServer, room: str, *lines: tuple[str, str]) -> None:
    """Publish each (language, text) as a final into ``room``, through the server's own caption state."""
    target = server.app[ROOMS].get(room)
    for language, text in lines:
        segment = target.captions.new_segment()
        event = target.captions.final(segment, (Word(text, 0.0, 1.0, 0.9),), 0.0, 1.0, "test", "1", 1.0,
                                      language=language)
        assert event is not None
        target.publish(event)


@pytest.mark.slow
async def test_lines_without_spaces_wrap_by_their_language_rules(server: LiveServer, browser: Browser,
                                                                 artifacts: Path) -> None:
    """A check of the stylesheets (languages.css), not of recognition: the shared set has no speech
    in Japanese, Chinese or Thai, so the lines are caption events published into a real room
    through the server's own caption state (as tests/test_pages.py does for word confidences),
    and rendered by the real pages from their caption socket."""
    room = "scripts"
    overlay = await browser.new_page(viewport={"width": 1280, "height": 720})
    phone = await browser.new_page(viewport={"width": 390, "height": 844})
    errors = [fail_on_page_errors(overlay), fail_on_page_errors(phone)]
    await overlay.goto(f"{server.base}/overlay/{room}?hold=0&lines=10&size=28")
    await phone.goto(f"{server.base}/view/{room}")
    await expect(overlay.locator("html")).to_have_attribute("data-connection", "open")
    await expect(phone.locator("#status")).to_have_attribute("data-state", "open")
    publish_lines(server, room, ("ar", ARABIC_LINE), ("en", ENGLISH), ("ja", JAPANESE), ("zh", CHINESE), ("th", THAI))
    await expect(overlay.locator("#log .item")).to_have_count(5)
    await expect(phone.locator("#log .item")).to_have_count(5)

    # Japanese in the overlay, at every width from 12 to 40 characters: wrapped inside the box,
    # and no line starts with a small kana, a prolonged sound mark or closing punctuation.
    japanese = overlay.locator('#log .text[lang="ja"]')
    for chars in range(12, 41, 2):
        await overlay.evaluate(f"document.documentElement.style.setProperty('--chars', {chars})")
        box = await overlay.locator("#box").bounding_box()
        assert box
        lines = await japanese.evaluate(LINE_STARTS)
        assert len(lines) > 1, f"{chars} chars: not wrapped"
        bad = [line["first"] for line in lines[1:] if line["first"] in NO_LINE_START]
        assert not bad, f"{chars} chars: lines start with {bad}"
        assert all(box["x"] - 1 <= line["left"] and line["right"] <= box["x"] + box["width"] + 1 for line in lines), \
            f"{chars} chars: a line leaves the box"
    await overlay.screenshot(path=artifacts / "overlay-scripts.png", animations="disabled")

    # The phone view: each line inside the narrow screen (none widens the page), in its language's fonts.
    await phone.screenshot(path=artifacts / "phone-view-scripts.png", animations="disabled", full_page=True)
    assert await phone.evaluate("document.documentElement.scrollWidth <= innerWidth")
    width = await phone.evaluate("innerWidth")
    for language in ("ja", "zh", "th"):
        lines = await phone.locator(f'#log .text[lang="{language}"]').evaluate(LINE_STARTS)
        assert len(lines) > 1 and all(line["left"] >= 0 and line["right"] <= width for line in lines), language

    fonts = {language: await phone.locator(f'#log .text[lang="{language}"]').evaluate(
        "e => getComputedStyle(e).fontFamily") for language in ("en", "ja", "zh", "th", "ar")}
    assert fonts["en"].startswith("system-ui"), fonts
    assert fonts["ja"].startswith('"Hiragino Sans"') and '"Noto Sans CJK JP"' in fonts["ja"], fonts
    assert " SC" not in fonts["ja"], "Japanese glyphs for Japanese (Han unification)"
    assert fonts["zh"].startswith('"PingFang SC", "Noto Sans CJK SC"'), fonts
    assert fonts["th"].startswith('"Noto Sans Thai"'), fonts
    assert fonts["ar"].startswith('"Noto Naskh Arabic"'), fonts

    # English wraps as it always did.
    english = await phone.locator('#log .text[lang="en"]').evaluate(
        "e => { const s = getComputedStyle(e); return [s.overflowWrap, s.wordBreak, s.lineBreak]; }")
    assert english == ["break-word", "normal", "auto"], english
    await overlay.close()
    await phone.close()
    assert not any(errors), errors
