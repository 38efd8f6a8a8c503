"""Room glossary: names and jargon spelled as the organiser wrote them.

Whisper spells a rare name the way it sounds ("Stintra" for "Sintra"). The
glossary's terms are given to it as context ahead of the room's recent
captions, which biases its spelling; then caption words that match a term
apart from case and punctuation take the term's form ("obs" becomes "OBS").
Pure: ``rooms`` applies it to every partial and final.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from livecap.asr.engine import Word
from livecap.asr.streaming import comparable

AFFIXES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
"""A word's leading punctuation, its core and its trailing punctuation."""


def clean_terms(terms: Iterable[str]) -> tuple[str, ...]:
    """Terms with their spaces collapsed; blanks and repeats dropped, order kept."""
    return tuple(dict.fromkeys(" ".join(term.split()) for term in terms if term.strip()))


@dataclass(frozen=True)
class Glossary:
    terms: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Glossary:
        """Comma-separated terms (see ``clean_terms``)."""
        return cls(clean_terms(text.split(",")))

    @property
    def prompt(self) -> str:
        """The terms as a sentence of context for the recognizer ("" if none)."""
        return ", ".join(self.terms) + "." if self.terms else ""

    def apply(self, words: Sequence[Word]) -> tuple[Word, ...]:
        """``words`` with each run that matches a term (longest terms first)
        spelled as the term, keeping the punctuation around each word."""
        if not self.terms:
            return tuple(words)
        keys = [comparable(w.text) for w in words]
        out = list(words)
        terms = sorted((term.split() for term in self.terms), key=len, reverse=True)
        term_keys = [[comparable(t) for t in term] for term in terms]
        i = 0
        while i < len(out):
            for term, term_key in zip(terms, term_keys, strict=True):
                if keys[i : i + len(term)] == term_key:
                    for k, spelling in enumerate(term):
                        word = out[i + k]
                        before, _, after = AFFIXES.match(word.text).groups()  # type: ignore[union-attr]
                        own = AFFIXES.match(spelling).group(3)  # type: ignore[union-attr]
                        after = after[len(own):] if after.startswith(own) else after  # "Dr." + "." once
                        out[i + k] = Word(before + spelling + after, word.start, word.end, word.confidence)
                    i += len(term) - 1
                    break
            i += 1
        return tuple(out)
