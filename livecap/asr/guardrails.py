"""Which hypotheses must not become captions.

Whisper, given silence or noise, often writes something anyway: phrases
common at the end of its subtitled training videos ("Thank you.", "Thanks
for watching!"), sound annotations ("[BLANK_AUDIO]", "♪"), or a phrase
repeated until the token budget ends. The checks below are the ones
openai-whisper's ``transcribe`` applies (no-speech probability together with
low confidence, gzip compression ratio above 2.4) plus a list of known
hallucinations. Pure functions of the hypothesis; the reason string is meant
for a metric label.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

from livecap.asr.engine import Hypothesis

KNOWN_HALLUCINATIONS = frozenset({
    "thank you", "thank you very much", "thanks", "thank you so much", "thanks for watching",
    "thank you for watching", "thanks for listening", "thank you for listening",
    "please subscribe", "like and subscribe", "please like and subscribe", "subscribe to my channel",
    "dont forget to like and subscribe", "see you next time", "see you in the next video", "ill see you next time",
    "you", "bye", "bye bye", "goodbye", "oh", "so", "hmm", "um", "uh", "mm", "huh", "yeah", "okay", "ok",
    "blank audio", "silence", "music", "applause", "laughter", "no audio",
    "subtitles by the amara org community", "transcription by castingwords", "subtitles by", "captions by",
    "translated by", "subtitled by", "the end",
})
"""Normalised (lower case, letters and spaces only) texts Whisper is known to
produce on silence and noise, from openai/whisper issue reports and from our
noise benchmark (``benchmarks/noise.py``: "you" on silence, "Yeah." on babble)."""

_ANNOTATION = re.compile(r"^\s*(\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|♪[^♪]*♪?)\s*$")


@dataclass(frozen=True)
class GuardrailOptions:
    """Thresholds, checked against ``benchmarks/noise.py`` (silence, noise and
    babble must give no caption; no recording of the evaluation set may lose
    its text). Confidence means the geometric mean of the word confidences."""

    no_speech_threshold: float = 0.5
    """openai-whisper uses 0.6 (with the same log-confidence bound); base let
    two sentences through on babble at 0.52 and 0.59. Real recordings stay
    under 0.36."""
    log_confidence_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    """openai-whisper's bound for text that repeats itself."""
    min_confidence: float = 0.2
    """Below this the words are guesses whatever the no-speech probability:
    on babble Whisper writes "and" at 0.04 with a no-speech probability of
    only 0.3-0.4; the least confident recording of the evaluation set scores
    0.55."""
    known_hallucination_confidence: float = 0.7
    known_hallucination_no_speech: float = 0.2
    """A known phrase passes only when spoken clearly: confidence at least
    ``known_hallucination_confidence`` and no-speech probability under this."""
    max_repeats: int = 4
    """More consecutive copies of the same word n-gram than this is a loop."""


def normalise(text: str) -> str:
    """Lower case, letters and digits only, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower().replace("'", "").replace("’", "")).split())


MIN_ECHO_WORDS = 3
"""Shorter texts made of the prompt's words ("and the") occur by chance..."""
SHORT_ECHO_NO_SPEECH = 0.2
"""...so they are suspect only when the model doubts there is speech: a
glossary term written over a breath measured 0.3-0.4, the first words of
real speech 0.0-0.2."""


def echoes_prompt(text: str, prompt: str, no_speech_probability: float) -> bool:
    """Whether ``text`` may be a copy of ``prompt`` rather than of the audio:
    all its words are words of the prompt, and it is long
    (``MIN_ECHO_WORDS``) or the audio doubtful (``SHORT_ECHO_NO_SPEECH``).

    Given context and little or no speech, Whisper copies the context,
    verbatim or shuffled and repeated ("a white dog ... to catch it any to
    catch it any" after "a white and black dog ... trying to catch it"), or
    writes a glossary term. A sentence really said twice looks the same;
    re-decoding without the prompt tells the two apart."""
    words = normalise(text).split()
    if not words or not set(words) <= set(normalise(prompt).split()):
        return False
    return len(words) >= MIN_ECHO_WORDS or no_speech_probability >= SHORT_ECHO_NO_SPEECH


def compression_ratio(text: str) -> float:
    """Bytes over zlib-compressed bytes: high for text that repeats itself."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw))


def longest_repeat(words: list[str], max_ngram: int = 8) -> int:
    """Most consecutive copies of any n-gram (n ≤ ``max_ngram``) in ``words``."""
    best = 1
    for n in range(1, max_ngram + 1):
        for start in range(len(words) - 2 * n + 1):
            copies = 1
            while words[start + copies * n : start + (copies + 1) * n] == words[start : start + n]:
                copies += 1
            best = max(best, copies)
    return best


def suppression_reason(hypothesis: Hypothesis, options: GuardrailOptions = GuardrailOptions()) -> str | None:
    """Why ``hypothesis`` must be dropped (``no_words``, ``annotation``,
    ``no_speech``, ``low_confidence``, ``repetition``, ``known_hallucination``),
    or ``None`` to keep it."""
    text = hypothesis.text.strip()
    if not text:
        return None
    normalised = normalise(text)
    if not normalised:
        return "no_words"
    if _ANNOTATION.match(text):
        return "annotation"
    confidences = [max(word.confidence, 1e-6) for word in hypothesis.words]
    log_confidence = sum(math.log(c) for c in confidences) / len(confidences) if confidences else 0.0
    no_speech = hypothesis.no_speech_probability or 0.0
    if no_speech > options.no_speech_threshold and log_confidence < options.log_confidence_threshold:
        return "no_speech"
    if log_confidence < math.log(options.min_confidence):
        return "low_confidence"
    if (compression_ratio(text) > options.compression_ratio_threshold
            or longest_repeat(normalised.split()) > options.max_repeats):
        return "repetition"
    if normalised in KNOWN_HALLUCINATIONS and (
        no_speech >= options.known_hallucination_no_speech
        or math.exp(log_confidence) < options.known_hallucination_confidence
    ):
        return "known_hallucination"
    return None
