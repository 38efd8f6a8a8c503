"""Guardrails on hand-made hypotheses: what is dropped, what is kept, and why."""

from __future__ import annotations

import pytest

from livecap.asr.engine import Hypothesis, Word
from livecap.asr.guardrails import compression_ratio, echoes_prompt, longest_repeat, normalise, suppression_reason


def _hypothesis(text: str, confidence: float = 0.9, no_speech: float | None = 0.05,
                engine: str = "whisper-onnx") -> Hypothesis:
    words = tuple(Word(w, 0.0, 1.0, confidence) for w in text.split())
    return Hypothesis(words, engine, "test-1", no_speech)


def test_keeps_ordinary_speech() -> None:
    speech = _hypothesis("And so my fellow Americans, ask not what your country can do for you.")
    assert suppression_reason(speech) is None
    assert suppression_reason(_hypothesis("")) is None  # nothing to caption, nothing to suppress


def test_symbols_and_annotations() -> None:
    assert suppression_reason(_hypothesis("♪ ♪")) == "no_words"
    assert suppression_reason(_hypothesis("...")) == "no_words"
    assert suppression_reason(_hypothesis("[BLANK_AUDIO]")) == "annotation"
    assert suppression_reason(_hypothesis("(upbeat music)")) == "annotation"
    assert suppression_reason(_hypothesis("*sighs*")) == "annotation"
    assert suppression_reason(_hypothesis("[Music] and then we left")) is None


def test_no_speech_needs_low_confidence_too() -> None:
    """As in openai-whisper: a high no-speech probability alone does not drop confident text."""
    assert suppression_reason(_hypothesis("we left early", confidence=0.2, no_speech=0.9)) == "no_speech"
    assert suppression_reason(_hypothesis("we left early", confidence=0.9, no_speech=0.9)) is None
    assert suppression_reason(_hypothesis("we left early", confidence=0.5, no_speech=0.1)) is None


def test_guesses_are_dropped() -> None:
    """Babble gives "and" at confidence 0.04 with a middling no-speech probability,
    and base whole sentences at 0.20-0.30 (benchmarks/noise.py)."""
    assert suppression_reason(_hypothesis("and", confidence=0.04, no_speech=0.3)) == "low_confidence"
    assert suppression_reason(_hypothesis("I hope you enjoyed this video.", confidence=0.25, no_speech=0.35)) \
        == "low_confidence"
    assert suppression_reason(_hypothesis("The mayor wants to fight on the war like this.", confidence=0.21,
                                          no_speech=0.26)) == "low_confidence"


def test_repetition() -> None:
    loop = "I'm going to go to the store. " * 6
    assert compression_ratio(loop) > 2.4
    assert suppression_reason(_hypothesis(loop)) == "repetition"
    assert longest_repeat(["no", "no", "no", "no", "no"]) == 5
    assert suppression_reason(_hypothesis("no no no no no")) == "repetition"
    assert suppression_reason(_hypothesis("no, no, no, that is wrong")) is None


def test_known_hallucinations_unless_clearly_spoken() -> None:
    assert suppression_reason(_hypothesis("Thank you.", no_speech=0.45)) == "known_hallucination"
    assert suppression_reason(_hypothesis("Thanks for watching!", confidence=0.4)) == "known_hallucination"
    assert suppression_reason(_hypothesis("you", confidence=0.45)) == "known_hallucination"
    # a speaker who clearly says it at the end of a talk is captioned
    assert suppression_reason(_hypothesis("Thank you.", confidence=0.95, no_speech=0.01)) is None
    assert suppression_reason(_hypothesis("Thank you for coming tonight.", no_speech=0.3)) is None


@pytest.mark.parametrize(("text", "confidence", "no_speech"), [
    ("Thank you.", 0.82, 0.249), ("Okay", 0.57, 0.172), ("Yeah", 0.67, 0.175), ("Bye bye", 0.58, 0.241),
    ("So...", 0.58, 0.272)])
def test_real_short_utterances_are_kept(text: str, confidence: float, no_speech: float) -> None:
    """What tiny.en gives for these words really said (espeak-ng, confirmed as
    speech by vad.SpeechCheck); the earlier fixed bounds deleted every one."""
    assert suppression_reason(_hypothesis(text, confidence, no_speech)) is None


def test_normalise() -> None:
    assert normalise("Thanks for watching!") == "thanks for watching"
    assert normalise("Don’t  forget") == "dont forget"


def test_echoes_of_the_prompt() -> None:
    """Whisper given context and no speech copies the context, verbatim or shuffled."""
    prompt = "Sintra, OBS. Man in white shirt is standing in the city street. A white dog is jumping to catch it."
    assert echoes_prompt("a white dog is jumping", prompt, 0.0)
    assert echoes_prompt("Standing in the city street!", prompt, 0.0)  # case and punctuation do not matter
    assert echoes_prompt("a white dog to catch it to catch it", prompt, 0.0)
    assert not echoes_prompt("a white dog is running", prompt, 0.9)
    assert not echoes_prompt("white shirts standing", prompt, 0.9)  # whole words only
    assert not echoes_prompt("a white dog is jumping", "", 0.9)
    # short texts of prompt words occur by chance: suspect only where speech is in doubt
    assert not echoes_prompt("in the", prompt, 0.05)
    assert echoes_prompt("Sintra.", prompt, 0.38)


def test_rules_are_calibrated_per_engine() -> None:
    """PocketSphinx's word posteriors are often near zero for words it got
    right: judged by Whisper's confidence rules, a fallback final (a whole
    sentence, under load) was dropped. Its finals face only the rules that
    need no calibration."""
    fallback = _hypothesis("the commission recommends prompt consideration", confidence=0.01, no_speech=None,
                           engine="pocketsphinx")
    assert suppression_reason(fallback) is None
    assert suppression_reason(_hypothesis("Thank you.", confidence=0.01, no_speech=None, engine="pocketsphinx")) \
        is None, "no list of Whisper's phrases for another engine"
    assert suppression_reason(_hypothesis("no no no no no no no no", engine="pocketsphinx")) == "repetition"
    assert suppression_reason(_hypothesis("[NOISE]", engine="pocketsphinx")) == "annotation"
    assert suppression_reason(_hypothesis("the commission recommends", confidence=0.01, engine="unknown")) is None, \
        "an engine nobody calibrated is not judged by confidences"
    assert suppression_reason(_hypothesis("the commission recommends", confidence=0.01)) == "low_confidence"


def test_an_engines_own_confidence_replaces_the_words_mean() -> None:
    """Whisper leaves out the words a glossary bonus chose: rare to the model alone, their low
    probabilities must not make the sentence they are in look like a guess."""
    words = tuple(Word(w, 0, 1, c) for w, c in [("patients", 0.8), ("on", 0.9), ("apixaban", 0.01), ("did", 0.8)])
    assert suppression_reason(Hypothesis(words, "whisper-onnx", "v", 0.1)) == "low_confidence"
    assert suppression_reason(Hypothesis(words, "whisper-onnx", "v", 0.1, confidence=0.83)) is None
    assert suppression_reason(Hypothesis(words, "whisper-onnx", "v", 0.1, confidence=0.2)) == "low_confidence"


# --- other languages and scripts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["東京は日本の首都です。", "واحد، اثنان، ثلاثة", "नमस्ते, आप कैसे हैं?", "Привет, как дела?",
                                  "สวัสดีครับ", "Ça va très bien, merci beaucoup à tous.", "שלום לכולם"])
def test_speech_in_any_script_is_kept(text: str) -> None:
    """``normalise`` once kept [a-z0-9] only: a Japanese or Arabic sentence became no words at all."""
    assert suppression_reason(_hypothesis(text)) is None
    assert normalise(text), text


def test_normalise_keeps_every_script_and_its_marks() -> None:
    assert normalise("नमस्ते दुनिया") == "नमस्ते दुनिया", "Devanagari vowel signs and virama are marks, not spaces"
    assert normalise("ÉCOLE, Straße!") == "école strasse"
    assert normalise("ご視聴ありがとうございました。") == "ご視聴ありがとうございました"


@pytest.mark.parametrize("text", ["Sous-titres réalisés par la communauté d'Amara.org", "ご視聴ありがとうございました",
                                  "字幕由Amara.org社区提供", "Untertitel im Auftrag des ZDF, 2017",
                                  "Subtítulos realizados por la comunidad de Amara.org", "ترجمة نانسي قنقر"])
def test_subtitle_credits_in_other_languages_are_dropped_however_confident(text: str) -> None:
    assert suppression_reason(_hypothesis(text, confidence=0.95, no_speech=0.01)) == "known_hallucination"


def test_short_sign_offs_in_other_languages_are_dropped_only_when_doubted() -> None:
    assert suppression_reason(_hypothesis("Merci.", confidence=0.3, no_speech=0.5)) is not None
    assert suppression_reason(_hypothesis("Merci.", confidence=0.8, no_speech=0.1)) is None, "said for real"


def test_a_loop_in_a_language_without_spaces_is_repetition() -> None:
    assert suppression_reason(_hypothesis("ありがとう" * 20)) == "repetition"


def test_an_echo_of_a_prompt_in_another_script() -> None:
    assert echoes_prompt("東京 大阪 京都", "東京 大阪 京都 名古屋", 0.0)
    assert not echoes_prompt("東京 神戸 京都", "東京 大阪 京都 名古屋", 0.0)
