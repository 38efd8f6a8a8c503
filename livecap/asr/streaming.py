"""The streaming policy: which words of a changing hypothesis are settled.

The recognizer re-decodes the growing utterance every step, and its guess
for the latest words changes from step to step. LocalAgreement-2 (Macháček,
Dabre and Bojar, "Turning Whisper into Real-Time Transcription System",
IJCNLP-AACL 2023) treats a word as *stable* once two consecutive hypotheses
agree on it and on everything before it. Stable words are shown as settled and
are never retracted; the rest of the latest hypothesis is *unstable*.

Here the two hypotheses are not the last two but the newest and one decoded
from at least ``agreement_horizon_s`` less audio (and from at least
``agreement_min_audio_s``): with steps of 0.5 s, consecutive hypotheses see
nearly the same audio and agree on the same wrong guess. On the evaluation
set this took the WER cost of committing early from 1.2 to 0.25 points
(``benchmarks/streaming.py``); what is shown, and so the word lag, is
unchanged, only the settling of words comes later.

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
    agreement_horizon_s: float = 1.0
    """A hypothesis settles words by agreeing with one decoded from at least this much less audio."""
    agreement_min_audio_s: float = 1.5
    """Hypotheses of less audio than this settle nothing: their first words are guesses."""


def comparable(word: str) -> str:
    """The form in which two words are compared: lower-case, letters and digits only."""
    return re.sub(r"[^\w]", "", word.lower())


@dataclass(frozen=True, slots=True)
class Agreement:
    stable: tuple[Word, ...]
    unstable: tuple[Word, ...]


class LocalAgreement:
    """Stable prefix of one utterance's successive hypotheses.

    ``horizon_s``: the newest hypothesis is compared with the latest one that
    covered at least this much less audio, not simply the one before it. Two
    hypotheses half a second apart see nearly the same audio and repeat the
    same mistake; one with a second more audio has heard how the word ends.
    ``min_audio_s``: an older hypothesis serves as the reference only if it
    covered this much audio; decoded from less, Whisper guesses the first words.
    """

    def __init__(self, horizon_s: float = 0.0, min_audio_s: float = 0.0) -> None:
        self.horizon_s = horizon_s
        self.min_audio_s = min_audio_s
        self.stable: tuple[Word, ...] = ()
        self._history: list[tuple[float, tuple[Word, ...]]] = []
        """Earlier hypotheses with the audio (seconds) they covered, oldest first."""

    def update(self, words: Sequence[Word], audio_s: float) -> Agreement:
        """Take the newest hypothesis, decoded from ``audio_s`` seconds of the
        utterance; return the stable prefix and unstable tail."""
        words = tuple(words)
        references = [i for i, (seen, _) in enumerate(self._history)
                      if self.min_audio_s - 1e-6 <= seen <= audio_s - self.horizon_s + 1e-6]
        tail = self._tail_after_stable(words)
        if references:
            reference = self._tail_after_stable(self._history[references[-1]][1])
            del self._history[: references[-1]]
            agreed = 0
            for old, new in zip(reference, tail, strict=False):
                if comparable(old.text) != comparable(new.text):
                    break
                agreed += 1
            if agreed and agreed == len(reference):
                # The older hypothesis's last word ended at the edge of its audio, where Whisper
                # often guesses a word that is cut off ("can" for "can fly"): wait for one more.
                agreed -= 1
            self.stable += tail[:agreed]
            tail = tail[agreed:]
        self._history.append((audio_s, words))
        return Agreement(self.stable, tail)

    def finish(self, words: Sequence[Word]) -> tuple[Word, ...]:
        """The final words: the stable prefix (never retracted) followed by the
        rest of the final hypothesis. A stable word takes the timing of the
        final hypothesis' word it stands for, and its spelling and punctuation
        where the two are the same word."""
        words = tuple(words)
        pairs = self._pairing(words)
        settled: list[Word] = []
        for i, word in enumerate(self.stable):
            if i in pairs:
                match = words[pairs[i]]
                same = comparable(match.text) == comparable(word.text)
                settled.append(match if same else Word(word.text, match.start, match.end, word.confidence))
            else:  # the final hypothesis lost this word: it sits where the previous one ended
                at = settled[-1].end if settled else 0.0
                settled.append(Word(word.text, at, at, word.confidence))
        return (*settled, *self._tail_after_stable(words))

    def _tail_after_stable(self, words: Sequence[Word]) -> tuple[Word, ...]:
        """The words of ``words`` that come after the stable prefix."""
        words = tuple(words)
        n = len(self.stable)
        if [comparable(w.text) for w in words[:n]] == [comparable(w.text) for w in self.stable]:
            return words[n:]
        pairs = self._pairing(words)
        return words[max(pairs.values()) + 1 :] if pairs else words[n:]

    def _pairing(self, words: Sequence[Word]) -> dict[int, int]:
        """Stable word index → index of the hypothesis word it stands for.

        Normally the hypothesis starts with the stable words. When it has
        drifted, the two are aligned (difflib): equal words pair up, and so do
        words replaced one for one ("Cintra" for "Stintra"), so that a
        replaced stable word is not followed by its replacement as well."""
        matcher = difflib.SequenceMatcher(
            a=[comparable(w.text) for w in self.stable], b=[comparable(w.text) for w in words], autojunk=False)
        pairs: dict[int, int] = {}
        for tag, a1, a2, b1, b2 in matcher.get_opcodes():
            if tag in ("equal", "replace"):
                pairs.update((a1 + k, b1 + k) for k in range(min(a2 - a1, b2 - b1)))
        return pairs
