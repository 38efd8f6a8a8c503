"""The multilingual benchmark's scoring: normalisation per language, WER/CER, and what it reads from a stream
(translation lags, the language lock), on hand-made messages."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.multilingual import language_seen, translation_track, unfinished_segments, without_translations
from benchmarks.scoring import error_rate, normalize, normalize_for, uses_cer
from livecap.client import StreamResult


def test_english_is_the_agreed_normalisation() -> None:
    assert normalize_for("Mr. Quilter, 25 to 30!", "en") == normalize("Mr. Quilter, 25 to 30!")


@pytest.mark.parametrize(("language", "text", "expected"), [
    ("fr", "Je suis désolé, d'Asterisk.", "je suis désolé d asterisk"),
    ("es", "Está bloqueada — ¡Intentaré la conexión!", "esta bloqueada intentare la conexion"),
    ("de", "Was der Mensch SÄT, das…", "was der mensch sät das"),
    ("ar", "واحد، إثنان، ثَلاثة، أربعـة، آخر", "واحد اثنان ثلاثة اربعة اخر"),
    ("ja", "今日は、いい 天気です。", "今日はいい天気です"),
])
def test_normalize_for(language: str, text: str, expected: str) -> None:
    assert normalize_for(text, language) == expected


def test_spanish_is_scored_without_accents_and_french_with_them() -> None:
    assert error_rate(["Esta bloqueada, sera repetido"], ["Está bloqueada. Será repetido."], "es") == 0.0
    assert error_rate(["déjà vu"], ["deja vu"], "fr") == 0.5


def test_languages_without_spaces_are_scored_by_characters() -> None:
    assert uses_cer("zh") and uses_cer("th") and not uses_cer("fr")
    assert error_rate(["今日はいい天気"], ["今日は 天気"], "ja") == pytest.approx(2 / 7)
    assert error_rate(["un deux", ""], ["un", "bruit"], "fr") == 0.5  # empty references are left out


def stream(*timed: tuple[float, dict[str, Any]]) -> StreamResult:
    return StreamResult([m for _, m in timed], [t for t, _ in timed], audio_started=100.0)


def caption(kind: str, segment: int, text: str, language: str = "fr", **extra: Any) -> dict[str, Any]:
    return {"type": "caption", "kind": kind, "segment": segment, "text": text, "language": language, **extra}


def room(language: str | None, locked: bool, detected: str | None = None) -> dict[str, Any]:
    return {"type": "room", "language": {"language": language, "detected": detected or language, "pinned": False,
                                         "locked": locked, "locked_after_s": 2.5 if locked else None}}


def test_translation_lag_is_measured_from_its_final() -> None:
    result = stream(
        (101.0, caption("partial", 1, "bonjour")),
        (101.5, caption("final", 1, "bonjour à tous")),
        (102.25, caption("translation", 1, "hello everyone", "en", source_language="fr")),
        (103.0, caption("final", 2, "merci")),
        (104.0, caption("final", 3, "")),  # nothing to translate
        (104.5, caption("translation", 9, "orphan", "en", source_language="fr")),
        (105.0, caption("final", 4, "au revoir")),
        (105.5, caption("translation", 4, "goodbye", "en", source_language="es")),
        (106.0, {"type": "stopped"}),
    )
    seen = translation_track(result)
    assert seen.added_lags == [0.75, 0.5]
    assert (seen.untranslated, seen.orphans, seen.mislabelled) == (1, 1, 1)
    assert seen.text == "hello everyone orphan goodbye"
    assert [m["kind"] for m in without_translations(result).finals] == ["final"] * 4
    assert not any(m.get("kind") == "translation" for m in without_translations(result).messages)


def test_language_lock_and_a_change_after_it() -> None:
    result = stream(
        (100.5, room(None, False)),
        (101.0, caption("partial", 1, "hallo", "de")),
        (102.5, room("fr", True, "fr")),
        (103.0, caption("final", 1, "bonjour")),
        (104.0, caption("partial", 2, "hello", "en")),
    )
    seen = language_seen(result)
    assert (seen.language, seen.detected, seen.locked_at_s, seen.locked_after_s) == ("fr", "fr", 2.5, 2.5)
    assert seen.captions == {"de": 1, "fr": 1, "en": 1}
    assert seen.after_lock == {"fr": 1, "en": 1}
    assert seen.changed


def test_a_room_that_never_locks() -> None:
    seen = language_seen(stream((101.0, room(None, False, "nn")), (102.0, caption("final", 1, "hallo", "de"))))
    assert (seen.language, seen.detected, seen.locked_at_s, seen.changed) == (None, "nn", None, False)


def test_language_switches_within_an_utterance_are_counted() -> None:
    seen = language_seen(stream(
        (101.0, caption("partial", 1, "toros", "es")),
        (101.5, caption("partial", 1, "トールス", "ja")),
        (102.0, caption("partial", 2, "hola", "es")),
        (102.5, caption("final", 1, "todos", "es")),
    ))
    assert seen.switches_in_segments == 2


def test_a_segment_left_with_a_partial_on_a_track() -> None:
    english_track = [caption("partial", 1, "what damage", "en"), caption("partial", 2, "hello", "en"),
                     caption("final", 2, "hello there", "en"), caption("translation", 3, "thanks", "en")]
    assert unfinished_segments(english_track) == 1
