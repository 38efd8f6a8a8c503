"""Word error rate with the normalisation DESIGN.md agreed on.

Both sides are lower-cased, stripped of punctuation, and numbers are written
as spoken, so that "Mr. Quilter" matches "MISTER QUILTER" and "25 to 30"
matches "twenty five to thirty". Used by benchmarks and by the WER bounds in
tests; the same function scores every engine so comparisons are fair.
Other languages are scored by ``error_rate`` after ``normalize_for`` (WER, or
CER where words are not separated by spaces).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import jiwer

from livecap.language import ENGLISH, WITHOUT_SPACES

DEFAULT_MANIFEST = Path(
    os.environ.get("LIVECAP_SPEECH_MANIFEST",
                   Path(__file__).resolve().parents[2] / "shared" / "speech" / "manifest.jsonl")
)
"""The shared evaluation set beside the checkout; ``LIVECAP_SPEECH_MANIFEST`` overrides it."""

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORDINAL_SUFFIXES = {"st", "nd", "rd", "th"}
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "vs": "versus"}
_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "@": " at "}


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> list[str]:
    """Spoken form of a non-negative integer; four-digit years read as years."""
    if 1100 <= n <= 2099 and n % 100 != 0 and not 2000 <= n <= 2009:
        return _below_thousand(n // 100) + (["oh"] if n % 100 < 10 else []) + _below_thousand(n % 100)
    if n < 1000:
        return _below_thousand(n)
    words: list[str] = []
    for scale, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= scale:
            words += [*number_to_words(n // scale), name]
            n %= scale
    if n:
        words += _below_thousand(n)
    return words


def _spell_number(match: re.Match[str]) -> str:
    digits, suffix = match.group(1).replace(",", ""), (match.group(2) or "").lower()
    words = number_to_words(int(digits))
    if suffix in _ORDINAL_SUFFIXES:
        last = words[-1]
        irregular = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                     "nine": "ninth", "twelve": "twelfth"}
        words[-1] = irregular.get(last, last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " " + " ".join(words) + " "


def normalize(text: str) -> str:
    """Lower-case, spell numbers and symbols, drop punctuation, squeeze spaces."""
    text = text.lower()
    for symbol, spoken in _SYMBOLS.items():
        text = text.replace(symbol, spoken)
    text = re.sub(r"(\d+):(\d+)", r"\1 to \2", text)
    text = re.sub(r"\$(\d[\d,]*)", r"\1 dollars", text)
    text = re.sub(r"(\d[\d,]*)(st|nd|rd|th)?\b", _spell_number, text)
    text = re.sub(r"['’]", "", text)
    text = re.sub(r"[^a-z ]+", " ", text)
    words = [_ABBREVIATIONS.get(word, word) for word in text.split()]
    return " ".join(words)


@dataclass(frozen=True)
class Recording:
    """One manifest entry: a WAV file and what it says."""

    id: str
    audio: Path
    text: str
    duration_s: float


R = TypeVar("R", bound=Recording)


def load_manifest(path: Path = DEFAULT_MANIFEST, ids: Iterable[str] | None = None) -> list[Recording]:
    return read_manifest(path, ids, Recording)


def read_manifest(path: Path, ids: Iterable[str] | None, kind: type[R]) -> list[R]:
    """The manifest's entries (those of ``ids``), as ``kind``: a ``Recording`` or a subclass whose
    extra fields are manifest keys of the same name."""
    wanted = set(ids) if ids is not None else None
    recordings = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if wanted is None or entry["id"] in wanted:
            values = {f.name: entry[f.name] for f in fields(kind)}
            recordings.append(kind(**{**values, "audio": path.parent / entry["audio"]}))
    return recordings


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (errors over all reference words), after ``normalize``."""
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not pairs:
        return 0.0
    return float(jiwer.wer([r for r, _ in pairs], [h if h else "<empty>" for _, h in pairs]))


ACCENTLESS_REFERENCES = frozenset({"es"})
"""Languages whose references are written without accents (the Spanish of the multilingual set has
no accents or ñ): both sides are scored with diacritics stripped."""
_ARABIC_MARKS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
"""Arabic harakat, Quranic marks and tatweel (U+0640), which writers use or leave out at will."""
_ARABIC_ALEFS = str.maketrans({"\u0622": "\u0627", "\u0623": "\u0627", "\u0625": "\u0627", "\u0671": "\u0627"})
"""Alef with madda, hamza above or below, and wasla: written as bare alef (ا)."""


def uses_cer(language: str) -> bool:
    """Whether ``language`` is scored by character error rate: it is written without spaces between words."""
    return language in WITHOUT_SPACES


def normalize_for(text: str, language: str) -> str:
    """``normalize`` for English; for other languages (Whisper codes): NFKC, case-folded,
    punctuation and symbols replaced by spaces, spaces squeezed. Diacritics are stripped where the
    references carry none (``ACCENTLESS_REFERENCES``); Arabic loses harakat and tatweel and has
    its alef forms unified; languages scored by CER (``uses_cer``) lose their spaces too.
    Numbers stay as written (no speller for every language)."""
    if language == ENGLISH:
        return normalize(text)
    text = unicodedata.normalize("NFKC", text).casefold()
    if language in ACCENTLESS_REFERENCES:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    if language == "ar":
        text = _ARABIC_MARKS.sub("", text).translate(_ARABIC_ALEFS)
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return ("" if uses_cer(language) else " ").join(text.split())


def error_rate(references: Sequence[str], hypotheses: Sequence[str], language: str) -> float:
    """Corpus error rate in ``language`` after ``normalize_for``: errors over all reference words,
    or characters where ``uses_cer``. English is ``word_error_rate``."""
    if language == ENGLISH:
        return word_error_rate(references, hypotheses)
    pairs = [(r, h) for r, h in ((normalize_for(r, language), normalize_for(h, language))
                                 for r, h in zip(references, hypotheses, strict=True)) if r]
    if not pairs:
        return 0.0
    measure = jiwer.cer if uses_cer(language) else jiwer.wer
    return float(measure([r for r, _ in pairs], [h for _, h in pairs]))


def write_results(path: Path, results: object) -> None:
    """Write a benchmark's JSON (creating ``benchmarks/results/``) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")
