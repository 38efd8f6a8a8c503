"""The recognition stage of one publisher session (async shell).

VAD events go in; partial and final transcript updates come out through a
callback. The loop drains every event that is waiting before it decodes, so
when recognition is slower than speech it decodes less often instead of
falling behind: audio is never skipped, only intermediate partials are.
Which words of a partial are settled is decided by the pure
``LocalAgreement`` policy; where a cut mid-speech leaves the final's last
words, by ``split_at_cut``.

Nothing is shown of an utterance until ``SpeechCheck`` has heard speech in
it: tones, chimes and music pass webrtcvad, and the recognizer writes
something for them. The check runs off the event loop, and only until the
utterance is confirmed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from livecap.asr.engine import SAMPLE_RATE, Hypothesis, Word
from livecap.asr.guardrails import guardrails_for, suppression_reason
from livecap.asr.scheduler import ScheduledUtterance, Scheduler, StepSkipped
from livecap.asr.streaming import (
    CUT_EDGE_S,
    HEAD_CONTEXT_S,
    Agreement,
    LocalAgreement,
    StreamingOptions,
    heard_before,
    skipped_head,
    split_at_cut,
)
from livecap.language import ENGLISH, LanguageLock
from livecap.vad import SpeechCheck, SpeechCheckOptions, UtteranceAudio, UtteranceEnded, UtteranceStarted, VadEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartialUpdate:
    utterance: int
    agreement: Agreement
    hypothesis: Hypothesis
    start: int
    """Utterance start, samples since the session's first sample."""
    end: int
    """End of the audio this hypothesis covers."""
    newest_arrival: float


@dataclass(frozen=True, slots=True)
class FinalUpdate:
    utterance: int
    words: tuple[Word, ...]
    hypothesis: Hypothesis
    start: int
    end: int
    """End of the audio the words cover; at a cut mid-speech, where the next utterance takes over."""
    last_voiced_arrival: float
    suppressed: str | None = None
    """Why the final hypothesis was dropped (a guardrail's reason, ``not_speech``), or None."""
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """The utterance's audio up to ``end`` (16 kHz), for rooms that record it."""


TranscriptUpdate = PartialUpdate | FinalUpdate


@dataclass(slots=True)
class _Flush:
    done: asyncio.Future[None]


@dataclass(slots=True)
class _Carry:
    """Audio at the end of an utterance cut mid-speech that the next utterance recognises again."""

    audio: np.ndarray
    end: int
    """Sample where the cut utterance ended: the next one must start there to take the carry."""
    arrival: float


@dataclass(slots=True)
class _Utterance:
    index: int
    start: int
    recognizer: ScheduledUtterance
    agreement: LocalAgreement
    pending: list[np.ndarray]
    """Audio not yet given to the recognizer."""
    unchecked: list[np.ndarray] = field(default_factory=list)
    """Audio not yet given to the speech check (empty once it is confirmed)."""
    context: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """The last ``HEAD_CONTEXT_S`` of the utterance before, if this one starts where it ended (speech
    went on across the cut); empty otherwise."""
    received: int = 0
    decoded: int = 0
    newest_arrival: float = 0.0


class Transcriber:
    def __init__(self, scheduler: Scheduler, room: str, on_update: Callable[[TranscriptUpdate], None],
                 prompt: Callable[[], str], terms: Callable[[], Sequence[str]] = tuple,
                 options: StreamingOptions = StreamingOptions(),
                 speech_check: SpeechCheckOptions = SpeechCheckOptions(), language: LanguageLock | None = None) -> None:
        """``language``: the room's language (detected and locked here when it is ``auto``)."""
        self._scheduler = scheduler
        self.language = language or LanguageLock(ENGLISH)
        self._room = room
        self._on_update = on_update
        self._prompt = prompt
        self._terms = terms
        self.options = options
        self._speech = SpeechCheck(speech_check)
        self._queue: asyncio.Queue[VadEvent | _Flush] = asyncio.Queue()
        self._current: _Utterance | None = None
        self._carry: _Carry | None = None
        self._last_end: int | None = None
        self._context = np.zeros(0, dtype=np.float32)
        """The end of the last utterance's audio (``_Utterance.context``)."""
        self._task = asyncio.create_task(self._run(), name="transcriber")

    def submit(self, events: list[VadEvent]) -> None:
        for event in events:
            self._queue.put_nowait(event)

    async def flush(self) -> None:
        """Wait until every event submitted so far has been recognised,
        including the decoding step they made due."""
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Flush(done))
        await asyncio.shield(done)

    async def close(self) -> None:
        await self.flush()
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            flushes = [item for item in batch if isinstance(item, _Flush)]
            for item in batch:
                if not isinstance(item, _Flush):
                    await self._handle(item)
            if self._current is not None and self._step_due(self._current):
                await self._step(self._current)
            for flush in flushes:
                flush.done.set_result(None)

    async def _handle(self, event: VadEvent) -> None:
        match event:
            case UtteranceStarted(index, start):
                pending, arrival = [], 0.0
                carry, self._carry = self._carry, None
                if carry is not None and carry.end == start:
                    pending, start, arrival = [carry.audio], start - len(carry.audio), carry.arrival
                agreement = LocalAgreement(self.options.agreement_horizon_s, self.options.agreement_min_audio_s)
                self._speech.begin()
                continued = self._last_end is not None and start <= self._last_end
                context = self._context if continued else np.zeros(0, dtype=np.float32)
                recognizer = self._scheduler.open(self._room, self._prompt(), self._terms(), self.language.language,
                                                  candidates=self.language.candidates)
                self._current = _Utterance(index, start, recognizer, agreement, pending, list(pending), context,
                                           received=sum(len(p) for p in pending), newest_arrival=arrival)
            case UtteranceAudio(_, samples, arrival) if self._current is not None:
                self._current.pending.append(samples)
                if not self._speech.confirmed:
                    self._current.unchecked.append(samples)
                self._current.received += len(samples)
                self._current.newest_arrival = arrival
            case UtteranceEnded(_, end, last_voiced_arrival, reason) if self._current is not None:
                utterance, self._current = self._current, None
                self._last_end = end
                await self._finish(utterance, end, last_voiced_arrival, cut=reason == "max_length")
            case _:
                log.warning("transcriber got %r outside an utterance", event)

    def _step_due(self, utterance: _Utterance) -> bool:
        if utterance.decoded == 0:
            return utterance.received >= self.options.first_step_s * SAMPLE_RATE
        interval = self._scheduler.step_interval_s(self.options.step_s)
        return utterance.received - utterance.decoded >= interval * SAMPLE_RATE

    async def _is_speech(self, utterance: _Utterance) -> bool:
        """Run the speech check over the audio it has not seen (off the event loop)."""
        if self._speech.confirmed:
            return True
        return await asyncio.to_thread(self._speech.feed, _take(utterance.unchecked))

    async def _step(self, utterance: _Utterance) -> None:
        if not await self._is_speech(utterance):
            # Nothing to show yet; the audio waits in `pending`, and the step stays due, so the
            # first decode comes as soon as speech is confirmed, not a whole step interval later.
            return
        audio = _take(utterance.pending)
        try:
            settled = " ".join(word.text for word in utterance.agreement.stable)
            hypothesis = await utterance.recognizer.step(audio, utterance.newest_arrival, settled)
        except StepSkipped:
            return
        except Exception:
            log.exception("recognizer step failed; the partial is skipped")
            return
        finally:
            utterance.decoded = utterance.received
        if self._suppression(hypothesis, "partial") is not None:
            return
        self._detect(utterance, hypothesis, utterance.received)
        unsure = (hypothesis.language_probability or 1.0) < self.language.options.min_probability
        if unsure and not self.language.locked:  # a guess in the wrong script would flash on every screen
            self._count("language_unsure", "partial")
            return
        agreement = utterance.agreement.update(hypothesis.words, utterance.received / SAMPLE_RATE)
        self._on_update(PartialUpdate(utterance.index, agreement, hypothesis, utterance.start,
                                      utterance.start + utterance.received, utterance.newest_arrival))

    async def _finish(self, utterance: _Utterance, end: int, last_voiced_arrival: float, cut: bool) -> None:
        """The utterance's final. At a ``cut`` mid-speech, words at the cut
        and the audio after the last word kept go to the next utterance."""
        self._context = np.zeros(0, dtype=np.float32)
        if not await self._is_speech(utterance):
            utterance.recognizer.abandon()
            self._count("not_speech", "final")
            self._on_update(FinalUpdate(utterance.index, (), Hypothesis((), "none", "none"), utterance.start, end,
                                        last_voiced_arrival, "not_speech"))
            return
        stable = utterance.agreement.stable
        suppressed: str | None = None
        try:
            hypothesis = await utterance.recognizer.finish(_take(utterance.pending))
            self._detect(utterance, hypothesis, utterance.received)
            if len(utterance.context):
                hypothesis = await self._with_head(utterance, hypothesis)
            suppressed = self._suppression(hypothesis, "final")
            words = utterance.agreement.finish(() if suppressed else hypothesis.words,
                                               guardrails_for(hypothesis.engine).calibrated)
        except Exception:
            log.exception("recognizer failed at the endpoint; the final keeps the stable words")
            words = stable
            hypothesis = Hypothesis(words, "none", "none")
        audio = utterance.recognizer.audio()
        self.language.utterance_ended(len(audio) / SAMPLE_RATE)
        kept = len(audio)
        if cut:
            words, carry_from = split_at_cut(words, len(audio) / SAMPLE_RATE, len(stable))
            kept = min(len(audio), round(carry_from * SAMPLE_RATE))
            self._carry = _Carry(audio[kept:], end, last_voiced_arrival)
            end = utterance.start + kept
        self._context = audio[max(0, kept - round(HEAD_CONTEXT_S * SAMPLE_RATE)) : kept]
        self._on_update(FinalUpdate(utterance.index, words, hypothesis, utterance.start, end, last_voiced_arrival,
                                    suppressed, audio[:kept]))

    async def _with_head(self, utterance: _Utterance, hypothesis: Hypothesis) -> Hypothesis:
        """``hypothesis`` with the words it left out at the start (``skipped_head``), decoded again
        after the end of the utterance before; unchanged if that decode fails or its words are
        suppressed."""
        audio = utterance.recognizer.audio()
        duration_s = len(audio) / SAMPLE_RATE
        head_s = skipped_head(hypothesis.words, duration_s, suppression_reason(hypothesis) is not None)
        if not head_s:
            return hypothesis
        context_s = len(utterance.context) / SAMPLE_RATE
        try:
            head = await self._scheduler.open(self._room, self._prompt(), self._terms(),
                                              self.language.language or hypothesis.language).finish(
                np.concatenate([utterance.context, audio[: round((head_s + CUT_EDGE_S) * SAMPLE_RATE)]]))
        except Exception:
            log.exception("decoding the skipped head failed; the final goes without it")
            return hypothesis
        words = hypothesis.words if head_s < duration_s else ()
        added = heard_before(head.words, context_s, head_s, words)
        if not added or suppression_reason(replace(head, words=added)) is not None:
            return hypothesis
        return replace(hypothesis, words=(*added, *words))

    def _detect(self, utterance: _Utterance, hypothesis: Hypothesis, samples: int) -> None:
        """Feed a detection to the room's language lock; when it locks, the utterance (decoded so
        far to detect) goes on in the language locked."""
        if not self.language.observe(hypothesis.language, hypothesis.language_probability, samples / SAMPLE_RATE):
            return
        language = self.language.language
        assert language is not None
        utterance.recognizer.detected(language)
        metrics = self._scheduler.metrics
        metrics.languages_locked.labels(language).inc()
        metrics.language_lock_speech_seconds.observe(self.language.locked_after_s or 0.0)
        log.info("room %s: language %s locked (p=%.2f after %.1f s of speech)", self._room, language,
                 hypothesis.language_probability or 0.0, self.language.locked_after_s or 0.0,
                 extra={"room": self._room})

    def _suppression(self, hypothesis: Hypothesis, kind: Literal["partial", "final"]) -> str | None:
        """Guardrails: hallucinations on silence or noise never become captions."""
        reason = suppression_reason(hypothesis)
        if reason is not None:
            self._count(reason, kind)
            log.debug("suppressed %r (%s)", hypothesis.text, reason)
        return reason

    def _count(self, reason: str, kind: Literal["partial", "final"]) -> None:
        self._scheduler.metrics.suppressed.labels(reason, kind).inc()


def _take(chunks: list[np.ndarray]) -> np.ndarray:
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    chunks.clear()
    return audio
