"""The streaming policy: which words of a changing hypothesis are settled.

The recognizer re-decodes the growing utterance every step, and its guess
for the latest words changes from step to step. LocalAgreement-2 (Macháček,
Dabre and Bojar, "Turning Whisper into Real-Time Transcription System",
IJCNLP-AACL 2023) treats a word as *stable* once two consecutive hypotheses
agree on it and on everything before it. Stable words are shown as settled and
are never retracted; the rest of the latest hypothesis is *unstable*.

Words are compared after light normalisation (case, punctuation), so that a
word gaining a comma or a capital does not count as a disagreement.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from livecap.asr.engine import Word


@dataclass(frozen=True, slots=True)
class StreamingOptions:
    step_s: float = 0.5
    """Decode the utterance again after this much new audio."""
    first_step_s: float = 0.3
    """The first decode of an utterance waits for this much audio (after the VAD's pre-roll)."""
    prompt_words: int = 40
    """Words of preceding finals passed to the engine as context."""


def comparable(word: str) -> str:
    """The form in which two words are compared: lower-case, letters and digits only."""
    return re.sub(r"[^\w]", "", word.lower())


@dataclass(frozen=True, slots=True)
class Agreement:
    stable: tuple[Word, ...]
    unstable: tuple[Word, ...]


class LocalAgreement:
    """Stable prefix of one utterance's successive hypotheses."""

    def __init__(self) -> None:
        self.stable: tuple[Word, ...] = ()
        self._previous_tail: tuple[Word, ...] = ()

    def update(self, words: Sequence[Word]) -> Agreement:
        """Take the newest hypothesis; return the stable prefix and unstable tail."""
        tail = self._tail_after_stable(words)
        agreed = 0
        for old, new in zip(self._previous_tail, tail, strict=False):
            if comparable(old.text) != comparable(new.text):
                break
            agreed += 1
        if agreed and agreed == len(self._previous_tail):
            # The older hypothesis's last word ended at the edge of its audio, where Whisper
            # often guesses a word that is cut off ("can" for "can fly"): wait for one more.
            agreed -= 1
        self.stable += tail[:agreed]
        self._previous_tail = tail[agreed:]
        return Agreement(self.stable, self._previous_tail)

    def finish(self, words: Sequence[Word]) -> tuple[Word, ...]:
        """The final words: the stable prefix (never retracted, though it takes
        the final hypothesis' spelling and punctuation where the words match)
        followed by the rest of the final hypothesis."""
        words = tuple(words)
        aligned = self._alignment(words)
        settled = tuple(words[aligned[i]] if i in aligned else word for i, word in enumerate(self.stable))
        return settled + tuple(self._tail_after_stable(words))

    def _tail_after_stable(self, words: Sequence[Word]) -> tuple[Word, ...]:
        """The words of ``words`` that come after the stable prefix.

        Normally the hypothesis starts with the stable words; when it has
        drifted, the stable words are aligned to it (difflib) and the tail
        starts after the last aligned one."""
        words = tuple(words)
        n = len(self.stable)
        if not n:
            return words
        if [comparable(w.text) for w in words[:n]] == [comparable(w.text) for w in self.stable]:
            return words[n:]
        aligned = self._alignment(words)
        return words[max(aligned.values()) + 1 :] if aligned else words[n:]

    def _alignment(self, words: Sequence[Word]) -> dict[int, int]:
        """Matching stable word index → hypothesis word index."""
        matcher = difflib.SequenceMatcher(
            a=[comparable(w.text) for w in self.stable], b=[comparable(w.text) for w in words], autojunk=False)
        return {block.a + k: block.b + k for block in matcher.get_matching_blocks() for k in range(block.size)}
