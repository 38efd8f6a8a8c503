"""The recognition stage of one publisher session (async shell).

VAD events go in; partial and final transcript updates come out through a
callback. The loop drains every event that is waiting before it decodes, so
when recognition is slower than speech it decodes less often instead of
falling behind: audio is never skipped, only intermediate partials are.
Which words of a partial are settled is decided by the pure
``LocalAgreement`` policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from livecap.asr.engine import SAMPLE_RATE, Hypothesis, Word
from livecap.asr.guardrails import suppression_reason
from livecap.asr.scheduler import ScheduledUtterance, Scheduler, StepSkipped
from livecap.asr.streaming import Agreement, LocalAgreement, StreamingOptions
from livecap.vad import UtteranceAudio, UtteranceEnded, UtteranceStarted, VadEvent

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
    last_voiced_arrival: float


TranscriptUpdate = PartialUpdate | FinalUpdate


@dataclass(slots=True)
class _Flush:
    done: asyncio.Future[None]


@dataclass(slots=True)
class _Utterance:
    index: int
    start: int
    recognizer: ScheduledUtterance
    agreement: LocalAgreement
    pending: list[np.ndarray]
    received: int = 0
    decoded: int = 0
    newest_arrival: float = 0.0


class Transcriber:
    def __init__(self, scheduler: Scheduler, room: str, on_update: Callable[[TranscriptUpdate], None],
                 prompt: Callable[[], str], options: StreamingOptions = StreamingOptions()) -> None:
        self._scheduler = scheduler
        self._room = room
        self._on_update = on_update
        self._prompt = prompt
        self.options = options
        self._queue: asyncio.Queue[VadEvent | _Flush] = asyncio.Queue()
        self._current: _Utterance | None = None
        self._task = asyncio.create_task(self._run(), name="transcriber")

    def submit(self, events: list[VadEvent]) -> None:
        for event in events:
            self._queue.put_nowait(event)

    async def flush(self) -> None:
        """Wait until every event submitted so far has been recognised."""
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
            for item in batch:
                await self._handle(item)
            if self._current is not None and self._step_due(self._current):
                await self._step(self._current)

    async def _handle(self, item: VadEvent | _Flush) -> None:
        match item:
            case UtteranceStarted(index, start):
                agreement = LocalAgreement(self.options.agreement_horizon_s, self.options.agreement_min_audio_s)
                self._current = _Utterance(index, start, self._scheduler.open(self._room, self._prompt()),
                                           agreement, [])
            case UtteranceAudio(_, samples, arrival) if self._current is not None:
                self._current.pending.append(samples)
                self._current.received += len(samples)
                self._current.newest_arrival = arrival
            case UtteranceEnded(_, end, last_voiced_arrival, _) if self._current is not None:
                utterance, self._current = self._current, None
                await self._finish(utterance, end, last_voiced_arrival)
            case _Flush(done):
                done.set_result(None)
            case _:
                log.warning("transcriber got %r outside an utterance", item)

    def _step_due(self, utterance: _Utterance) -> bool:
        if utterance.decoded == 0:
            return utterance.received >= self.options.first_step_s * SAMPLE_RATE
        interval = self._scheduler.step_interval_s(self.options.step_s)
        return utterance.received - utterance.decoded >= interval * SAMPLE_RATE

    async def _step(self, utterance: _Utterance) -> None:
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
        if self._suppressed(hypothesis):
            return
        agreement = utterance.agreement.update(hypothesis.words, utterance.received / SAMPLE_RATE)
        self._on_update(PartialUpdate(utterance.index, agreement, hypothesis, utterance.start,
                                      utterance.start + utterance.received, utterance.newest_arrival))

    async def _finish(self, utterance: _Utterance, end: int, last_voiced_arrival: float) -> None:
        try:
            hypothesis = await utterance.recognizer.finish(_take(utterance.pending))
            words = utterance.agreement.finish(() if self._suppressed(hypothesis) else hypothesis.words)
        except Exception:
            log.exception("recognizer failed at the endpoint; the final keeps the stable words")
            words = utterance.agreement.stable
            hypothesis = Hypothesis(words, "none", "none")
        self._on_update(FinalUpdate(utterance.index, words, hypothesis, utterance.start, end, last_voiced_arrival))


    def _suppressed(self, hypothesis: Hypothesis) -> bool:
        """Guardrails: hallucinations on silence or noise never become captions."""
        reason = suppression_reason(hypothesis)
        if reason is not None:
            self._scheduler.metrics.suppressed.labels(reason).inc()
            log.debug("suppressed %r (%s)", hypothesis.text, reason)
        return reason is not None


def _take(chunks: list[np.ndarray]) -> np.ndarray:
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    chunks.clear()
    return audio
