"""Rooms in every language Whisper speaks: language given or detected and locked, the
multilingual model loaded on first need, the English translation track, and what is refused."""

from __future__ import annotations

import asyncio
import json
import re
import unicodedata
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jiwer
import pytest
import websockets
from livecap_models import ensure_model
from livecap_models.build import TOKENIZER_FILE

from livecap.appkeys import ROOMS
from livecap.asr.engine import EngineOptions
from livecap.asr.scheduler import Scheduler, SchedulerOptions
from livecap.asr.tokenizer import WhisperTokenizer
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.client import stream_audio
from livecap.errors import InvalidRequest, UnsupportedFormat
from livecap.ingest import IngestProtocol
from livecap.language import WHISPER_LANGUAGES, LanguageLock, LockOptions
from livecap.metrics import Metrics
from livecap.settings import changes
from tests.conftest import LiveServer, start_server, timeout
from tests.speech import audio, multilingual
from tests.speech import multilingual_audio as speech
from tests.test_server import drain
from tests.test_settings import patch

MULTILINGUAL = Path(__file__).resolve().parents[2] / "shared" / "speech-multilingual"


def words(text: str) -> str:
    """Lower case, no punctuation, no accents (the Spanish references have none)."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


# --- the language lock (pure) ---------------------------------------------------------------------------------------

def test_a_pinned_language_never_changes() -> None:
    lock = LanguageLock("fr")
    assert lock.locked and lock.language == "fr"
    assert not lock.observe("es", 0.99, 10.0)
    assert lock.language == "fr"


def test_auto_locks_on_enough_speech_and_confidence_only() -> None:
    lock = LanguageLock(None, LockOptions(min_speech_s=2.0, min_probability=0.5))
    assert not lock.observe("it", 0.95, 1.0), "too little speech to trust"
    assert not lock.observe("es", 0.40, 3.0), "too unsure"
    assert not lock.locked and lock.guess == "es"
    lock.utterance_ended(3.0)
    assert lock.observe("es", 0.8, 2.5)
    assert (lock.language, lock.locked_after_s) == ("es", 5.5)
    assert not lock.observe("pt", 0.99, 20.0), "locked: an accent or a name does not flip it"
    assert lock.language == "es"
    lock.pin(None)
    assert not lock.locked, "an operator may let it detect again"


def test_detection_without_a_language_code_keeps_nothing() -> None:
    lock = LanguageLock(None)
    assert not lock.observe(None, None, 5.0)
    assert lock.guess is None


# --- the supported set ----------------------------------------------------------------------------------------------

def test_the_languages_are_those_of_the_multilingual_vocabulary() -> None:
    tokenizer = WhisperTokenizer(ensure_model("base", "int8").path(TOKENIZER_FILE), multilingual=True)
    assert set(tokenizer.languages) == set(WHISPER_LANGUAGES)
    assert len(set(tokenizer.languages.values())) == 99
    assert tokenizer.sot_sequence("fr", "translate")[1:] == (tokenizer.languages["fr"], tokenizer.special.translate)


@pytest.mark.parametrize("language", ["xx", "EN", "english", "", 7, None])
def test_an_unsupported_language_names_the_supported_set(language: object) -> None:
    message = {"type": "start", "format": "s16le", "sample_rate": 16000, "channels": 1, "language": language}
    if language is None:
        IngestProtocol().receive_text(json.dumps(message), 0.0)  # absent: the room's setting
        return
    with pytest.raises(UnsupportedFormat) as refused:
        IngestProtocol().receive_text(json.dumps(message), 0.0)
    assert "auto" in refused.value.message and "fr" in refused.value.message and "ja" in refused.value.message


@pytest.mark.parametrize("language", ["fr", "ja", "haw", "auto", "en"])
def test_every_whisper_language_and_auto_are_accepted(language: str) -> None:
    message = {"type": "start", "language": language, "translate": "en"}
    [started] = IngestProtocol().receive_text(json.dumps(message), 0.0)
    assert started.format.language == language  # type: ignore[union-attr]


def test_translation_is_into_english_only() -> None:
    with pytest.raises(UnsupportedFormat, match="translate"):
        IngestProtocol().receive_text(json.dumps({"type": "start", "language": "fr", "translate": "de"}), 0.0)


# --- real rooms -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """tiny.en for English, base loaded on first need; pages of speech sent at twice real time."""
    live = await start_server(tmp_path_factory.mktemp("languages"), max_audio_rate=4.0)
    yield live
    await live.runner.cleanup()


async def read_until(ws: websockets.ClientConnection, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Messages up to the first one ``done`` says ends it."""
    messages: list[dict[str, Any]] = []
    while not messages or not done(messages[-1]):
        messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout(60))))
    return messages


def texts(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == "caption" and m["kind"] == kind and m["text"]]


@pytest.mark.slow
async def test_a_french_room_is_captioned_in_french_with_an_english_track(server: LiveServer) -> None:
    recording = multilingual()["asterisk-fr-demo-nogo"]
    async with websockets.connect(server.captions_url("salle", track="en")) as english, \
            websockets.connect(server.captions_url("salle")) as original:
        result = await stream_audio(server.ingest_url("salle"), speech(recording["id"]), speed=2.0,
                                    language="fr", translate="en")
        assert result.error is None, result.error
        finals, translations = texts(result.messages, "final"), texts(result.messages, "translation")
        assert finals and {f["language"] for f in finals} == {"fr"}
        assert {f["model_version"].split("-")[0] for f in finals} == {"base"}, "the multilingual model serves"
        said = words(" ".join(f["text"] for f in finals))
        assert jiwer.wer(words(recording["text"]), said) < 0.4, said
        assert {t["segment"] for t in translations} == {f["segment"] for f in finals}, "every line is translated"
        assert all(t["language"] == "en" and t["source_language"] == "fr" for t in translations)
        english_words = set(words(" ".join(t["text"] for t in translations)).split())
        assert {"sorry", "server"} <= english_words, english_words
        seen_english = await read_until(english, lambda m: m.get("seq") == translations[-1]["seq"])
        assert texts(seen_english, "translation") and not texts(seen_english, "final"), \
            "the en track carries the translations of French lines, not the French"
        seen_original = await read_until(original, lambda m: m.get("seq") == finals[-1]["seq"])
        assert texts(seen_original, "final") and not texts(seen_original, "translation")
    async with aiohttp.ClientSession() as http:
        for suffix, expected in (("txt", finals), ("en.txt", translations)):
            async with http.get(f"{server.base}/rooms/salle/transcript.{suffix}") as response:
                assert response.status == 200
                exported = await response.text()
            assert all(line["text"] in exported for line in expected), (suffix, exported)


@pytest.mark.slow
async def test_auto_detects_and_locks_the_language(server: LiveServer) -> None:
    recording = multilingual()["asterisk-fr-demo-echotest"]
    result = await stream_audio(server.ingest_url("auto"), speech(recording["id"]), speed=2.0, language="auto")
    assert result.error is None, result.error
    captions = [m for m in result.messages if m.get("type") == "caption" and m["text"]]
    assert captions and {m["language"] for m in captions} == {"fr"}, "detected, and never changed"
    told = [m for m in result.messages if m.get("type") == "room"]
    assert told and told[-1]["language"]["language"] == "fr" and told[-1]["language"]["locked"]
    assert not told[-1]["language"]["pinned"]
    assert 2.0 <= told[-1]["language"]["locked_after_s"] < recording["duration_s"]


@pytest.mark.slow
async def test_english_rooms_stay_on_the_english_model(server: LiveServer) -> None:
    result = await stream_audio(server.ingest_url("english"), audio("librispeech-2412-153948-0000"), speed=2.0)
    finals = texts(result.messages, "final")
    assert finals and all(f["model_version"].startswith("tiny.en") and f["language"] == "en" for f in finals)


async def test_an_unknown_track_is_refused(server: LiveServer) -> None:
    async with websockets.connect(server.captions_url("salle", track="de")) as viewer:
        messages = await drain(viewer)
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == "protocol_error"
    async with aiohttp.ClientSession() as http, http.get(f"{server.base}/rooms/salle/transcript.de.txt") as response:
        assert response.status == 404


@pytest.mark.slow
async def test_an_operator_pins_the_language_of_a_running_room(server: LiveServer) -> None:
    """The dashboard's language setting: pinned for the room's next utterances, told to its pages;
    a code Whisper does not know is refused with the set it knows."""
    status, answer = await patch(server, "pinned", {"language": "xx"})
    assert status == 400 and "auto" in answer["message"] and "fr" in answer["message"]
    room = server.app[ROOMS].get("pinned")
    async with websockets.connect(server.captions_url("pinned")) as viewer:
        status, answer = await patch(server, "pinned", {"language": "es", "translate": "en"})
        assert status == 200 and answer["settings"]["language"] == "es"
        told = json.loads(await asyncio.wait_for(viewer.recv(), timeout(10)))
    assert told["type"] == "room" and told["language"]["language"] == "es" and told["language"]["pinned"]
    assert told["translate"] == "en" and room.language.language == "es"
    result = await stream_audio(server.ingest_url("pinned"), speech("asterisk-es-queue-periodic-announce"),
                                speed=2.0)
    assert {m["language"] for m in texts(result.messages, "final")} == {"es"}, "start without a language: the room's"
    assert texts(result.messages, "translation"), "and its translation track"


# --- candidate languages ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_engine() -> WhisperOnnx:
    return WhisperOnnx(EngineOptions(model="base", threads=2))


def test_candidates_restrict_detection(base_engine: WhisperOnnx) -> None:
    """Whisper base takes this Spanish speaker for Italian or Latin (p up to 0.93) over all 99
    languages; told the event's languages, it picks Spanish."""
    first = speech("asterisk-es-demo-abouttotry")[: 16000 * 3]
    anywhere = base_engine.transcribe(first, language=None)
    among = base_engine.transcribe(first, language=None, candidates=("en", "es", "fr", "de", "ar"))
    assert anywhere.language != "es", "the case the candidates exist for (else this test tells nothing)"
    assert among.language == "es" and among.language_probability is not None
    assert base_engine.transcribe(first, language=None, candidates=("de", "en")).language in ("de", "en")


def test_candidates_are_validated_everywhere() -> None:
    with pytest.raises(UnsupportedFormat, match="candidates"):
        IngestProtocol().receive_text(json.dumps({"type": "start", "language": "auto", "candidates": ["es", "xx"]}),
                                      0.0)
    [started] = IngestProtocol().receive_text(
        json.dumps({"type": "start", "language": "auto", "candidates": ["es", "en", "es"]}), 0.0)
    assert started.format.candidates == ("es", "en")  # type: ignore[union-attr]
    assert changes({"candidates": "es, en"}) == {"candidates": ("es", "en")}
    with pytest.raises(InvalidRequest, match="candidates"):
        changes({"candidates": ["es", 3]})


def test_detection_does_not_hear_the_prompt(base_engine: WhisperOnnx) -> None:
    """The room's earlier captions are the decoder's prompt; detection must not read them (as
    openai-whisper's detect_language does not), or one wrong guess decides every later one."""
    french = speech("asterisk-fr-tt-allbusy")[: 16000 * 3]
    alone = base_engine.transcribe(french, language=None)
    prompted = base_engine.transcribe(french, language=None, prompt="One. Two. Three. Thank you all for coming today.")
    assert (alone.language, prompted.language) == ("fr", "fr")
    assert prompted.language_probability == pytest.approx(alone.language_probability, abs=1e-4)


def test_a_publisher_in_another_language_takes_its_models_share_of_the_capacity(
        whisper_engine: WhisperOnnx, base_engine: WhisperOnnx) -> None:
    """Base's steps cost about twice tiny.en's: counted as one English publisher, French rooms
    would be admitted beyond what the executor serves within the budget."""
    scheduler = Scheduler(SchedulerOptions(max_publishers=4), Metrics())
    try:
        scheduler.primary, scheduler.multilingual = whisper_engine, base_engine
        assert scheduler.weight("fr") == 1.0, "unmeasured: counted as one"
        scheduler.measured(0.25, whisper_engine)
        scheduler.measured(0.5, base_engine)
        assert (scheduler.weight("en"), scheduler.weight("fr"), scheduler.weight(None)) == (1.0, 2.0, 2.0)
        assert scheduler.admits(2.0, 2.0) and not scheduler.admits(3.0, 2.0) and scheduler.admits(3.0, 1.0)
        assert scheduler.admits(0.0, 8.0), "the first publisher always fits"
    finally:
        scheduler.close()
