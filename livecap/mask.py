"""Profanity mask: words on a room's list are masked in its captions.

A guardrail outside the model, at the caption stage: the recognizer hears
what was said, and the room's captions (partials, finals, the transcript and
its downloads) show the word's first letter and asterisks ("f***"). Words
are matched whole, apart from case and punctuation. Pure: ``rooms`` applies
it after the glossary and counts the words masked in finals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from livecap.asr.engine import Word
from livecap.asr.streaming import comparable
from livecap.glossary import AFFIXES


@dataclass(frozen=True)
class WordMask:
    words: frozenset[str] = frozenset()
    """The masked words, in ``comparable`` form."""

    @classmethod
    def of(cls, words: Iterable[str]) -> WordMask:
        return cls(frozenset(key for word in words if (key := comparable(word))))

    def apply(self, words: Sequence[Word]) -> tuple[tuple[Word, ...], int]:
        """``words`` with the masked ones masked, and how many were."""
        if not self.words:
            return tuple(words), 0
        out, masked = [], 0
        for word in words:
            before, core, after = AFFIXES.match(word.text).groups()  # type: ignore[union-attr]
            if core and comparable(core) in self.words:
                word = Word(before + core[0] + "*" * (len(core) - 1) + after, word.start, word.end, word.confidence)
                masked += 1
            out.append(word)
        return tuple(out), masked
