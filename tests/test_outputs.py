"""Room outputs: the pure parts (608 packing, queue and retries, request formats, settings), and
real destinations on loopback that fail on demand while a real recording streams (test_outputs_e2e)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livecap.asr.engine import Word
from livecap.captions import CaptionEvent, CaptionKind
from livecap.errors import InvalidRequest
from livecap.metrics import Metrics
from livecap.outputs.cea608 import COLUMNS, RowMaker, air_time, caption_safe, roll_up
from livecap.outputs.config import SECRET_KEPT, OutputConfig, parse_outputs
from livecap.outputs.delivery import FAILING_AFTER_S, MAX_BACKOFF_S, Item, Outbox
from livecap.outputs.formats import SIGNATURE_HEADER, Formatter
from livecap.outputs.runner import OutputWorker
from livecap.outputs.senders import DeliveryFailed
from livecap.settings import RoomSettings

words = st.lists(st.text("abcdefghij", min_size=1, max_size=45), min_size=1, max_size=40)


def event(seq: int, kind: CaptionKind = "final", text: str = "hello world", segment: int = 1, language: str = "en",
          stable: str | None = None) -> CaptionEvent:
    return CaptionEvent("r", seq, segment, kind, text, text if stable is None else stable, "", 1.0, 2.0,
                        "whisper-onnx", "tiny.en", 100.0, tuple(Word(w, 1.0, 2.0, 0.9) for w in text.split()),
                        language=language, source_language="fr" if kind == "translation" else None)


@given(words, st.sampled_from([2, 3]))
def test_rows_hold_every_word_once_in_order_in_32_columns(sentence: list[str], rows: int) -> None:
    """However the words come (settled words of partials growing, then the final), each row holds
    at most 32 columns, the rows together hold every word once, in order, and rolled up each
    caption adds one row to the one before and shows at most ``rows``."""
    maker, text, made = RowMaker(), " ".join(sentence), []
    for cut in range(1, len(sentence)):
        made += maker.rows(7, " ".join(sentence[:cut]), final=False)
    made += maker.rows(7, text, final=True)
    assert all(0 < len(row) <= COLUMNS for row in made)
    assert "".join(made).replace(" ", "") == text.replace(" ", "")
    assert maker.rows(7, text, final=True) == [], "a final seen twice adds nothing"
    shown: list[str] = []
    for row in made:
        caption = roll_up(shown, row, rows)
        assert caption[-1] == row and caption[:-1] == shown[-(rows - 1):] and len(caption) <= rows
        shown = caption


def test_each_utterance_starts_a_row_of_its_own() -> None:
    maker = RowMaker()
    assert maker.rows(1, "the quick brown fox jumps over the lazy dog", final=True) == [
        "the quick brown fox jumps over", "the lazy dog"]
    assert maker.rows(2, "and then it slept", final=True) == ["and then it slept"]
    assert roll_up(["the quick brown fox jumps over", "the lazy dog"], "and then it slept", 2) == [
        "the lazy dog", "and then it slept"]


def test_caption_text_is_608_safe() -> None:
    assert caption_safe("Café — naïve “quotes” 日本") == "Café ? naïve “quotes” ??"
    assert caption_safe("Zōë Łukasz") == "Zoë ?ukasz", "accents the 608 sets lack are dropped, others become '?'"
    assert air_time("x" * 32 + "\n" + "y" * 32) == pytest.approx((64 + 8 + 12) / 59.94)


def test_outbox_numbers_new_requests_and_repeats_the_number_on_retry() -> None:
    outbox = Outbox()
    for seq in (1, 2):
        outbox.push(Item(f"line {seq}", (seq,), 0.0))
    first = outbox.head()
    assert first is not None and first.number == 1
    assert outbox.failed(1.0, "HTTP 503") == 0.5
    retry = outbox.head()
    assert retry is first and retry.number == 1 and retry.attempts == 2, "a retry keeps its seq"
    assert outbox.failed(2.0, "HTTP 503") == 1.0, "back-off doubles"
    assert outbox.health(2.0) == "retrying" and outbox.health(1.0 + FAILING_AFTER_S) == "failing"
    for attempt in range(20):
        outbox.head()
        assert outbox.failed(3.0 + attempt, "timeout") <= MAX_BACKOFF_S
    outbox.delivered(30.0)
    assert outbox.health(30.0) == "ok" and outbox.last_error == "timeout"
    second = outbox.head()
    assert second is not None and second.number == 2, "the next new request gets the next number"
    assert outbox.state(31.0) | {"last_success_s": None} == {
        "state": "ok", "queued": 1, "sent": 1, "failures": 22, "dropped": 0, "last_error": "timeout",
        "last_success_s": None}


def test_outbox_overflow_drops_the_oldest_waiting_line_and_counts_it() -> None:
    outbox = Outbox(max_queued=3)
    for seq in range(1, 4):
        outbox.push(Item(seq, (seq,), 0.0))
    in_flight = outbox.head()
    assert outbox.push(Item(4, (4,), 0.0)) == 1
    assert [item.payload for item in outbox.queue] == [1, 3, 4], "not the one in flight: the oldest waiting"
    assert outbox.dropped == 1 and outbox.last_error is not None and "dropped" in outbox.last_error
    assert outbox.queue[0] is in_flight


def test_outbox_replaces_a_waiting_text_but_not_the_one_in_flight() -> None:
    outbox = Outbox()
    outbox.push(Item("a", (1,), 1.0, replaces="text"))
    outbox.head()
    outbox.push(Item("b", (2,), 2.0, replaces="text"))
    outbox.push(Item("c", (3,), 3.0, replaces="text"))
    assert [item.payload for item in outbox.queue] == ["a", "c"]
    assert outbox.queue[1].since == 2.0, "lag counts from the oldest text it replaced"


def formatter(**fields: Any) -> Formatter:
    return Formatter(OutputConfig(**{"name": "o", "kind": "youtube", "url": "https://h.test/cc?cid=k", **fields}))


def test_youtube_posts_the_time_spoken_and_the_text_with_seq() -> None:
    out = formatter(offset_s=-2.5)
    spoken = datetime(2026, 11, 30, 12, 0, 5, 250_000, UTC).timestamp()
    [item] = out.items(event(3, text="Hello there."), 10.0, spoken)
    item.number = 7
    request = out.request(item)
    assert request.body.decode() == "2026-11-30T12:00:02.750\nHello there.\n"
    assert parse_qs(urlsplit(request.url).query) == {"cid": ["k"], "seq": ["7"]}
    assert request.headers["Content-Type"].startswith("text/plain")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", request.body.decode().split("\n")[0])


def test_only_whole_lines_of_the_track_go_to_stream_destinations() -> None:
    out = formatter(kind="zoom", url="https://wmcc.zoom.us/closedcaption?id=1&ns=x&seq=99")
    assert out.items(event(1, "partial"), 0.0, 0.0) == [], "partials would repeat text in Zoom's transcript"
    assert out.items(event(2, "correction"), 0.0, 0.0) == []
    assert out.items(event(3, text=""), 0.0, 0.0) == [], "an empty line is not posted"
    assert out.items(event(4, "translation", language="en"), 0.0, 0.0) == [], "the original track"
    [item] = out.items(event(5, text="Bonjour.", language="fr"), 0.0, 0.0)
    item.number = 1
    query = parse_qs(urlsplit(out.request(item).url).query)
    assert query["seq"] == ["1"] and query["lang"] == ["fr-FR"] and query["id"] == ["1"]
    english = formatter(kind="zoom", url="https://z.test/cc", track="en", lang="en-GB")
    assert english.items(event(6, text="Bonjour.", language="fr"), 0.0, 0.0) == []
    [item] = english.items(event(7, "translation", text="Hello.", language="en"), 0.0, 0.0)
    item.number = 2
    assert parse_qs(urlsplit(english.request(item).url).query)["lang"] == ["en-GB"]


def test_webhook_posts_every_line_event_signed() -> None:
    out = formatter(kind="webhook", url="http://h.test/hook", secret="s3cret")
    assert out.items(event(1, "partial"), 0.0, 0.0) == []
    kinds: tuple[tuple[int, CaptionKind], ...] = ((2, "final"), (3, "correction"))
    for seq, kind in kinds:
        [item] = out.items(event(seq, kind), 0.0, 0.0)
        request = out.request(item)
        assert json.loads(request.body)["seq"] == seq and json.loads(request.body)["kind"] == kind
        expected = hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
        assert request.headers[SIGNATURE_HEADER] == f"sha256={expected}"
    unsigned = formatter(kind="webhook", url="http://h.test/hook")
    [item] = unsigned.items(event(4), 0.0, 0.0)
    assert SIGNATURE_HEADER not in unsigned.request(item).headers


def test_obs_text_source_shows_the_last_lines_and_the_partial() -> None:
    out = formatter(kind="obs", url="ws://127.0.0.1:4455", mode="text", lines=2, partials=True)
    texts = [item.payload for e in (event(1, text="one."), event(2, "partial", text="two so", segment=2),
                                    event(3, text="two sofar.", segment=2), event(4, text="three.", segment=3))
             for item in out.items(e, 0.0, 0.0)]
    assert texts == ["one.", "one.\ntwo so", "one.\ntwo sofar.", "two sofar.\nthree."]
    captions = formatter(kind="obs", url="ws://127.0.0.1:4455", partials=True)
    partial = event(5, "partial", text="a b c " * 10, stable="a b c " * 8)
    assert [item.payload for item in captions.items(partial, 0.0, 0.0)] == ["a b c a b c a b c a b c a b c a"], \
        "only complete lines of settled words"


def test_outputs_are_validated_and_secrets_kept_hidden() -> None:
    hook = {"name": "archive", "kind": "webhook", "url": "https://h.test/x", "secret": "abc"}
    [parsed] = parse_outputs([hook])
    assert parsed.shown()["secret"] == SECRET_KEPT and parsed.to_json()["secret"] == "abc"
    [kept] = parse_outputs([{**hook, "secret": SECRET_KEPT, "url": "https://h.test/y"}], (parsed,))
    assert kept.secret == "abc" and kept.url == "https://h.test/y"
    for bad, why in (
        ([{**hook, "kind": "rtmp"}], "kind"),
        ([{**hook, "url": "ftp://h.test/x"}], "url"),
        ([{**hook, "kind": "obs"}], "ws"),
        ([{**hook, "name": "a b"}], "name"),
        ([hook, hook], "different names"),
        ([{**hook, "offset_s": 1e9}], "offset_s"),
        ([{**hook, "kind": "obs", "url": "ws://o:4455", "lines": 4}], "2 or 3"),
        ([{**hook, "colour": "red"}], "unknown output field"),
        ([{**hook, "kind": "youtube", "offset_s": 10**400}], "offset_s"),
        ([{**hook, "url": "http://127.0.0.1:99999/h"}], "url"),
        ([{**hook, "url": "http://127.0.0.1:abc/h"}], "url"),
        ([{**hook, "secret": SECRET_KEPT}], "give the secret"),
        ([hook] * 9, "at most"),
        ({"name": "x"}, "list"),
    ):
        with pytest.raises(InvalidRequest, match=why):
            parse_outputs(bad)


def test_secrets_and_addresses_are_kept_only_for_the_same_output() -> None:
    """A secret or an address sent back as shown keeps what the output of that name and kind had;
    renamed, or of another kind, it is refused rather than silently dropped or moved."""
    old = parse_outputs([{"name": "zoom", "kind": "zoom", "url": "https://z.test/cc?id=1&signature=abc"},
                         {"name": "obs", "kind": "obs", "url": "ws://o.test:4455", "secret": "obs-password"}])
    shown = [output.shown() for output in old]
    assert shown[0]["url"] == f"https://z.test/cc?id={SECRET_KEPT}&signature={SECRET_KEPT}"
    assert shown[1]["secret"] == SECRET_KEPT and "obs-password" not in json.dumps(shown)
    assert parse_outputs(shown, old) == old, "sent back as shown: unchanged"
    for changed, why in (({**shown[0], "name": "zoom2"}, "give the whole address"),
                         ({**shown[1], "name": "obs2"}, "give the secret"),
                         ({**shown[1], "kind": "webhook", "url": "https://h.test/x"}, "give the secret")):
        with pytest.raises(InvalidRequest, match=why):
            parse_outputs([changed], old)
    assert "user:pw" not in OutputConfig("w", "webhook", "https://user:pw@h.test/x").shown()["url"]


def test_a_bad_value_in_a_settings_file_leaves_the_rest_usable(caplog: pytest.LogCaptureFixture) -> None:
    """A hand edit that does not validate keeps that field's default (logged); the room stays usable."""
    settings = RoomSettings.from_json({"profanity": ["zut"], "outputs": [{"name": "w", "kind": "webhook",
                                                                         "url": "https://h.test/x", "lines": 0}]})
    assert settings.profanity == ("zut",) and settings.outputs == ()
    assert "outputs ignored" in caplog.text


class FaultySender:
    """Fault injector standing in for a destination: ``faults`` says, request by request, what goes
    wrong (an exception to raise, or None: taken); records what it took."""

    def __init__(self, faults: list[Exception | None]) -> None:
        self.faults = faults
        self.taken: list[Any] = []

    async def send(self, item: Item) -> None:
        fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            raise fault
        self.taken.append(item.payload)

    async def last_number(self) -> int | None:
        return None

    def pause_after(self, item: Item) -> float:
        return 0.0

    async def close(self) -> None:
        pass


async def delivered(sender: FaultySender, count: int) -> None:
    async with asyncio.timeout(10):
        while len(sender.taken) < count:
            await asyncio.sleep(0.01)


async def test_an_error_no_sender_foresaw_is_retried_and_shown_not_the_end_of_the_output() -> None:
    """Found by a fresh tester: an exception other than DeliveryFailed (a library's KeyError on a
    strange answer) ended the output's task silently, its lines piling up for ever."""
    config = OutputConfig("w", "webhook", "https://h.test/x")
    sender = FaultySender([KeyError("requestStatus"), ValueError("bad digits")])
    worker = OutputWorker("r", config, Formatter(config), sender, Metrics())
    worker.publish(event(1), 0.0, 0.0)
    await delivered(sender, 1)
    state = worker.state(0.0)
    assert state["failures"] == 2 and "unexpected error: ValueError: bad digits" in state["last_error"]
    assert await worker.stop() == 0


async def test_a_disabled_output_holds_its_lines_until_enabled() -> None:
    config = OutputConfig("w", "webhook", "https://h.test/x")
    sender = FaultySender([DeliveryFailed("HTTP 503")] * 2)
    worker = OutputWorker("r", config, Formatter(config), sender, Metrics())
    worker.publish(event(1, text="one"), 0.0, 0.0)
    await asyncio.sleep(0.2)  # a first attempt failed; the next waits its back-off
    worker.replace(replace(config, enabled=False), worker.formatter, sender)
    worker.publish(event(2, text="not queued while off"), 0.0, 0.0)
    await asyncio.sleep(2.0)  # the back-offs ran out: still nothing is sent
    assert sender.taken == [] and len(worker.outbox.queue) == 1
    worker.replace(config, worker.formatter, sender)
    await delivered(sender, 1)
    assert [json.loads(body)["seq"] for body in sender.taken] == [1]
    await worker.stop()
