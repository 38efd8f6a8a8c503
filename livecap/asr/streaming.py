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

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
        self.unstable: tuple[Word, ...] = ()
        """The newest hypothesis' words after the stable ones: what else viewers see now."""
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
        self.unstable = tail
        return Agreement(self.stable, tail)

    def finish(self, words: Sequence[Word], confidences: bool = True) -> tuple[Word, ...]:
        """The final words, from the final hypothesis ``words`` (decoded with
        all the utterance's audio) and what the partials showed.

        The two are aligned (``align``). Where they agree, the final's word
        stands (its spelling, punctuation and timing). Where they differ, the
        final hypothesis replaces *settled* words only when it is sure of its
        own (mean confidence ``REPLACE_SETTLED_CONFIDENCE``) and surer than
        the partials were of theirs (by ``SURER_BY``): the evidence changed
        ("for the" settled early, "$45" heard sure at the end). Otherwise the
        final keeps what viewers saw settle ("10.15", not a just as sure
        "10.50"), and a final that skipped settled words keeps them, so a
        settled word is never lost. (Replaying the evaluation set, letting
        any sure final win measured 0.3 points less WER, 4 words in 1,161:
        within what one run differs from the next; a settled word that
        changes without better evidence is the worse failure.) The last partial's *unsettled* words
        give way to the final's unless they were surer ("0199 for details"
        shown, "0.994 details" in the final), and are dropped where the final
        has nothing in their place (guesses at the edge of less audio). After
        the shown text, the rest of the final hypothesis follows. Engines
        whose confidences mean nothing (``confidences=False``) keep every
        settled word and take the final's in place of unsettled ones.
        """
        words = tuple(words)
        shown = (*self.stable, *self.unstable)
        segments, tail = align([comparable(w.text) for w in shown], [comparable(w.text) for w in words])
        final: list[Word] = []
        for old, new, equal in segments:
            before, after = shown[old.start : old.stop], words[new.start : new.stop]
            settled = old.start < len(self.stable)  # the stretch begins among the settled words
            if equal or _final_wins(before, after, settled, confidences):
                final += after
            else:  # viewers' words stay, timed where the final put what it heard instead
                at = final[-1].end if final else 0.0
                start, end = (after[0].start, after[-1].end) if after else (at, at)
                final += [Word(w.text, start + (end - start) * k / len(before),
                               start + (end - start) * (k + 1) / len(before), w.confidence)
                          for k, w in enumerate(before)]
        return (*final, *words[tail:])

    def _tail_after_stable(self, words: Sequence[Word]) -> tuple[Word, ...]:
        """The words of ``words`` that come after the stable prefix.

        Normally the hypothesis starts with the stable words. When it has
        drifted, the two are aligned, so that a replaced stable word
        ("Cintra" for "Stintra") is not followed by its replacement as well."""
        words = tuple(words)
        n = len(self.stable)
        if [comparable(w.text) for w in words[:n]] == [comparable(w.text) for w in self.stable]:
            return words[n:]
        _, tail = align([comparable(w.text) for w in self.stable], [comparable(w.text) for w in words])
        return words[tail:]


REPLACE_SETTLED_CONFIDENCE = 0.5
"""Mean word confidence at which a final hypothesis may replace settled words it disagrees with..."""
SURER_BY = 0.05
"""...if it is also surer of its words than the partials were of the settled ones by this much."""


def _final_wins(shown: Sequence[Word], final: Sequence[Word], settled: bool, confidences: bool) -> bool:
    """Whether the final hypothesis' words replace the differing ``shown`` ones (see ``LocalAgreement.finish``)."""
    if settled:  # also a word the final hears between settled words: the settled text changes only when sure
        if not (confidences and final):
            return False
        sure = _mean_confidence(final)
        return sure >= REPLACE_SETTLED_CONFIDENCE and (not shown or sure >= _mean_confidence(shown) + SURER_BY)
    if not shown or not final or not confidences:
        return True
    return _mean_confidence(final) >= _mean_confidence(shown)


def _mean_confidence(words: Sequence[Word]) -> float:
    return sum(w.confidence for w in words) / len(words)


def align(a: Sequence[str], b: Sequence[str]) -> tuple[list[tuple[range, range, bool]], int]:
    """Align all of ``a`` with a prefix of ``b`` at the least edit distance
    (one per substituted, missing or extra word; the rest of ``b`` is free).

    Returns the alignment as segments ``(range in a, range in b, equal)``, in
    order, covering all of ``a`` and ``b[:tail]``: single equal words, and the
    differing stretches between them; and ``tail``, where the unaligned rest
    of ``b`` begins. A prefix, not a global alignment: ``a`` is what was shown
    of an utterance, ``b`` a hypothesis of all of it, and a word of ``a``
    pairing with a far word of ``b`` ("for" with "for details") would drop
    what lies between.
    """
    n, m = len(a), len(b)
    cost = np.zeros((n + 1, m + 1), dtype=np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j - 1] + (a[i - 1] != b[j - 1]), cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    tail = max(range(m + 1), key=lambda j: (-cost[n, j], j))  # the cheapest end; the longest on a tie
    steps: list[tuple[int, int]] = []
    i, j = n, tail
    while i or j:  # back to the start, preferring pairs (diagonal) over gaps
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (a[i - 1] != b[j - 1]):
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
        steps.append((i, j))
    path = [*reversed(steps), (n, tail)]
    segments: list[tuple[range, range, bool]] = []
    open_a, open_b = 0, 0
    for (i0, j0), (i1, j1) in itertools.pairwise(path):
        if i1 - i0 == 1 and j1 - j0 == 1 and a[i0] == b[j0]:
            if (open_a, open_b) != (i0, j0):
                segments.append((range(open_a, i0), range(open_b, j0), False))
            segments.append((range(i0, i1), range(j0, j1), True))
            open_a, open_b = i1, j1
    if (open_a, open_b) != (n, tail):
        segments.append((range(open_a, n), range(open_b, tail), False))
    return segments, tail


CUT_EDGE_S = 0.3
"""At a cut mid-speech, a word ending this close to the cut may be cut off."""
MAX_CARRY_S = 15.0
"""At most this much audio of a cut utterance is recognised again in the next one: with the VAD's 15 s
cut, an utterance and its carry stay within Whisper's 30 s window."""


def split_at_cut(words: Sequence[Word], duration_s: float, settled: int,
                 edge_s: float = CUT_EDGE_S, max_carry_s: float = MAX_CARRY_S) -> tuple[tuple[Word, ...], float]:
    """The words an utterance cut mid-speech keeps, and the time (seconds
    into it) from which its audio moves into the next utterance.

    A recogniser drops or garbles words at the edge of its audio: a word cut
    in half, or a sentence it has not heard end (Whisper leaves out "The
    Secret Service should not" before a cut rather than guess). So the words
    ending within ``edge_s`` of the cut, and everything after the last word
    kept, are recognised again with the speech that follows; nothing is lost,
    and nothing is said twice. The first ``settled`` words stay (viewers have
    seen them settle), and so does everything more than ``max_carry_s``
    before the cut. Word times are the engine's (``Word.start``/``end``)."""
    words = tuple(words)
    keep = len(words)
    while keep > settled and words[keep - 1].end > duration_s - edge_s:
        keep -= 1
    carry_from = words[keep - 1].end if keep else 0.0
    if duration_s - carry_from > max_carry_s:
        carry_from = duration_s - max_carry_s
        keep = max(settled, sum(1 for word in words if word.end <= carry_from))
        carry_from = max(carry_from, words[keep - 1].end if keep else 0.0)
    return words[:keep], min(carry_from, duration_s)


SKIPPED_HEAD_S = 0.5
"""A final hypothesis of an utterance that continues speech without a pause, whose first word
starts this late, has left out the words before it."""
HEAD_CONTEXT_S = 1.0
"""Audio from before such an utterance decoded with its skipped head: measured on ``runon.wav``,
the head alone is decoded unsure ("For how brother bought.", mean confidence 0.3), after 0.5-1 s of
what came before it sure and right; after 2 s Whisper skips it again."""


def skipped_head(words: Sequence[Word], duration_s: float, suppressed: bool) -> float:
    """Seconds of audio at the start of an utterance that continues speech
    without a pause (a cut, a soft cut at a short pause) that its final
    hypothesis (``words``, of ``duration_s`` of audio) left out, or 0.0.

    Whisper leaves out the fragment of a sentence that opens such an
    utterance once it hears a new sentence start ("for her brother Bob. If
    the reader..." decoded as "If the reader..."), and the partials that
    showed the fragment give way to it; and a short rest of a sentence
    ("to myself") decoded alone is a guess the guardrails suppress ("I will
    do myself.", mean confidence 0.3). Such audio, all of it if the
    hypothesis was ``suppressed``, is decoded again after ``HEAD_CONTEXT_S``
    of the speech before it (``heard_before``)."""
    if suppressed:
        return duration_s
    return words[0].start if words and words[0].start >= SKIPPED_HEAD_S else 0.0


def heard_before(head: Sequence[Word], context_s: float, head_s: float, words: Sequence[Word]) -> tuple[Word, ...]:
    """The words to put before ``words`` from ``head``, a decode of
    ``context_s`` of the preceding utterance's audio, then the ``head_s``
    (``skipped_head``) that ``words`` left out and ``CUT_EDGE_S`` more (so
    that its last word is heard whole): the words heard (mostly) after the
    context that begin before ``words`` do, re-timed to the utterance, less
    one that is ``words``' first word again."""
    first = words[0].start if words else head_s
    kept = [Word(w.text, max(0.0, w.start - context_s), w.end - context_s, w.confidence) for w in head
            if (w.start + w.end) / 2 > context_s and w.start - context_s < first]
    if kept and words and comparable(kept[-1].text) == comparable(words[0].text):
        kept.pop()
    return tuple(kept)
