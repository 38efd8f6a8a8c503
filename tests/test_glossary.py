"""The room glossary: spelling of caption words (pure), and the context it
gives the recognizer, end to end through a real server with Whisper."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from livecap.asr.engine import Word
from livecap.client import stream_audio
from livecap.glossary import Glossary
from tests.conftest import start_server
from tests.speech import audio


def _words(text: str) -> tuple[Word, ...]:
    return tuple(Word(w, float(i), i + 0.5, 0.8) for i, w in enumerate(text.split()))


def _text(words: Sequence[Word]) -> str:
    return " ".join(w.text for w in words)


def test_parse_and_prompt() -> None:
    glossary = Glossary.parse(" Sintra, OBS ,, Claude   Shannon, OBS")
    assert glossary.terms == ("Sintra", "OBS", "Claude Shannon")
    assert glossary.prompt == "Sintra, OBS, Claude Shannon."
    assert Glossary.parse("").prompt == ""


def test_matching_words_take_the_terms_form() -> None:
    glossary = Glossary.parse("OBS, Claude Shannon, Dr., Shannon Airport")
    assert _text(glossary.apply(_words("we stream with obs, to the projector."))) == \
        "we stream with OBS, to the projector."
    assert _text(glossary.apply(_words("as claude shannon said"))) == "as Claude Shannon said"
    assert _text(glossary.apply(_words("land at shannon airport"))) == "land at Shannon Airport"
    assert _text(glossary.apply(_words("ask dr. who"))) == "ask Dr. who"  # no doubled period
    assert _text(glossary.apply(_words("observe the shannons"))) == "observe the shannons"  # whole words only


def test_apply_keeps_timing_and_confidence() -> None:
    words = _words("hello obs")
    applied = Glossary.parse("OBS").apply(words)
    assert [(w.start, w.end, w.confidence) for w in applied] == [(w.start, w.end, w.confidence) for w in words]
    assert Glossary().apply(words) == words


@pytest.mark.slow
async def test_glossary_reaches_the_recognizer(tmp_path_factory: pytest.TempPathFactory) -> None:
    """From the sound alone tiny.en writes "Lenel's pictures" and "Mr. Burkett
    Foster's landscapes"; with the glossary as context, the names as given."""
    server = await start_server(tmp_path_factory.mktemp("glossary"), engine="whisper-onnx",
                                fallback_engine="none", glossary="Linnell, Birket Foster", max_audio_rate=50.0)
    try:
        result = await stream_audio(server.ingest_url("glossary"), audio("librispeech-1272-128104-0004-8k"),
                                    speed=3.0)
    finally:
        await server.runner.cleanup()
    text = " ".join(m["text"] for m in result.finals)
    assert "Linnell's" in text and "Birket Foster" in text, text
