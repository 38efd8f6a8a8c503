"""Which hypotheses must not become captions.

Whisper, given silence or noise, often writes something anyway: phrases
common at the end of its subtitled training videos ("Thank you.", "Thanks
for watching!", and in other languages the subtitlers' credits: "Sous-titres
réalisés par la communauté d'Amara.org", "ご視聴ありがとうございました"),
sound annotations ("[BLANK_AUDIO]", "♪"), or a phrase repeated until the
token budget ends. Every check works on any script: text is compared after
``normalise``, which keeps the letters, marks and digits of every script. The checks below are the ones
openai-whisper's ``transcribe`` applies (no-speech probability together with
low confidence, gzip compression ratio above 2.4) plus a list of known
hallucinations. Pure functions of the hypothesis; the reason string is meant
for a metric label.

These checks are the second line. The first is ``vad.SpeechCheck``: an
utterance that holds no speech (a tone, a chime, music, noise) shows nothing
at all, whatever the engine makes of it. So the checks here can afford to be
lenient with what was really said, and are calibrated per engine
(``ENGINE_GUARDRAILS``): confidence-based rules only apply to an engine
whose confidences mean something. ``benchmarks/noise.py`` measures both
directions (non-speech captioned, real utterances suppressed) per engine.
"""

from __future__ import annotations

import math
import re
import unicodedata
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
"""Normalised (``normalise``) texts Whisper is known to produce on silence and noise, from
openai/whisper issue reports and from our noise benchmark (``benchmarks/noise.py``: "you" on
silence, "Yeah." on babble)."""

HALLUCINATED_CREDITS = (
    "amara org", "sous titres réalisés par", "sous titrage société radio canada", "untertitel im auftrag des",
    "untertitel der amara", "subtítulos realizados por", "sottotitoli creati dalla", "legendas pela comunidade",
    "napisy stworzone przez", "ondertiteling door de", "редактор субтитров", "субтитры сделал",
    "субтитры создавал", "字幕由", "字幕志愿者", "ご視聴ありがとうございました", "チャンネル登録",
    "시청해주셔서 감사합니다", "구독과 좋아요", "اشتركوا في القناة", "ترجمة نانسي قنقر",
)
"""Normalised pieces of the subtitle credits and sign-offs that Whisper writes on silence in other
languages (openai/whisper discussions #928 and #1606 list them): a caption holding one is never
speech at a live event, whatever the confidence."""

NON_ENGLISH_HALLUCINATIONS = frozenset({
    "merci", "merci d avoir regardé", "merci de votre attention", "vielen dank", "danke",
    "vielen dank fürs zuschauen", "gracias", "gracias por ver", "gracias por ver el video", "obrigado",
    "obrigado por assistir", "grazie", "grazie per la visione", "продолжение следует", "спасибо",
    "спасибо за просмотр", "谢谢", "谢谢观看", "ありがとうございました", "감사합니다", "شكرا",
})
"""Short sign-offs, dropped only where the model doubts them, like ``KNOWN_HALLUCINATIONS``."""

_ANNOTATION = re.compile(r"^\s*(\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|♪[^♪]*♪?)\s*$")


@dataclass(frozen=True)
class GuardrailOptions:
    """Thresholds, checked against ``benchmarks/noise.py`` (silence, noise and
    babble must give no caption; no recording of the evaluation set may lose
    its text). Confidence means the geometric mean of the word confidences."""

    calibrated: bool = True
    """The engine's word confidences and no-speech probability are probabilities worth a threshold
    (Whisper's are). Otherwise the rules that use them (``no_speech``, ``low_confidence``,
    ``known_hallucination``) are off: PocketSphinx's segment posteriors are often near 0 for words
    it recognised right, and those rules would drop its finals, a whole sentence lost under load."""

    no_speech_threshold: float = 0.5
    """openai-whisper uses 0.6 (with the same log-confidence bound); base let
    two sentences through on babble at 0.52 and 0.59. Real recordings stay
    under 0.36."""
    log_confidence_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    """openai-whisper's bound for text that repeats itself."""
    min_confidence: float = 0.4
    """Below this the words are guesses whatever the no-speech probability.
    Babble (many voices at once: speech to ``vad.SpeechCheck``, words to
    nobody) is where it matters: base writes whole sentences on it at 0.20-0.30
    with a no-speech probability of only 0.26-0.42 (``benchmarks/noise.py``);
    the least confident final of the evaluation set, streamed, scores 0.71."""
    known_hallucination_confidence: float = 0.5
    known_hallucination_no_speech: float = 0.4
    """A known phrase is dropped only where the model doubts it: confidence under
    ``known_hallucination_confidence`` or no-speech probability at least this. Said for real (and so
    confirmed as speech by ``vad.SpeechCheck``, which keeps silence and noise out before this),
    "Thank you.", "Okay.", "Yeah.", "So." measured confidence 0.57-0.83 and no-speech 0.17-0.27,
    which the earlier bounds (0.7 and 0.2) deleted."""
    max_repeats: int = 4
    """More consecutive copies of the same word n-gram than this is a loop."""


def normalise(text: str) -> str:
    """Lower case (casefolded), the letters, combining marks and digits of every script, single
    spaces; apostrophes joined ("don't" → "dont"), other punctuation a space."""
    text = text.casefold().replace("'", "").replace("’", "")
    return " ".join("".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in text).split())


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


TRANSLATION_GUARDRAILS = GuardrailOptions(calibrated=False)
"""A translation is of a final that passed the guardrails (it is speech): only what no speech turns
into is checked. Its words' confidences are lower than a transcription's (a sentence has many right
translations): 0.3-0.45 on correct translations, which ``min_confidence`` deleted."""

ENGINE_GUARDRAILS: dict[str, GuardrailOptions] = {
    "whisper-onnx": GuardrailOptions(),
    "pocketsphinx": GuardrailOptions(calibrated=False),
}
"""Per engine; an engine not listed gets the uncalibrated rules."""


def guardrails_for(engine: str) -> GuardrailOptions:
    return ENGINE_GUARDRAILS.get(engine, GuardrailOptions(calibrated=False))


def suppression_reason(hypothesis: Hypothesis, options: GuardrailOptions | None = None) -> str | None:
    """Why ``hypothesis`` must be dropped (``no_words``, ``annotation``,
    ``no_speech``, ``low_confidence``, ``repetition``, ``known_hallucination``),
    or ``None`` to keep it. ``options`` default to the hypothesis' engine's."""
    options = options or guardrails_for(hypothesis.engine)
    text = hypothesis.text.strip()
    if not text:
        return None
    normalised = normalise(text)
    if not normalised:
        return "no_words"
    if _ANNOTATION.match(text):
        return "annotation"
    if (compression_ratio(text) > options.compression_ratio_threshold
            or longest_repeat(normalised.split()) > options.max_repeats):
        return "repetition"
    if any(credit in normalised for credit in HALLUCINATED_CREDITS):
        return "known_hallucination"
    if not options.calibrated:
        return None
    confidences = [max(word.confidence, 1e-6) for word in hypothesis.words]
    log_confidence = sum(math.log(c) for c in confidences) / len(confidences) if confidences else 0.0
    if hypothesis.confidence is not None:
        log_confidence = math.log(max(hypothesis.confidence, 1e-6))
    no_speech = hypothesis.no_speech_probability or 0.0
    if no_speech > options.no_speech_threshold and log_confidence < options.log_confidence_threshold:
        return "no_speech"
    if log_confidence < math.log(options.min_confidence):
        return "low_confidence"
    if (normalised in KNOWN_HALLUCINATIONS or normalised in NON_ENGLISH_HALLUCINATIONS) and (
        no_speech >= options.known_hallucination_no_speech
        or math.exp(log_confidence) < options.known_hallucination_confidence
    ):
        return "known_hallucination"
    return None
