"""One room's audio through the server's own VAD and recognition stage, as
if inference took no time.

``replay`` feeds the audio in 20 ms chunks to the real ``VadSegmenter`` and
``Transcriber`` (with the real scheduler, an unbounded latency budget and no
fallback) and waits for every decoding step before the next chunk: the
policy (steps, LocalAgreement, speech check, guardrails, cuts) runs exactly
as live, but the result is deterministic and free of scheduling effects.
Used by ``benchmarks.streaming`` and ``benchmarks.noise``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from livecap.asr.engine import SAMPLE_RATE, Engine
from livecap.asr.scheduler import Scheduler, SchedulerOptions
from livecap.asr.streaming import StreamingOptions
from livecap.asr.transcriber import FinalUpdate, PartialUpdate, Transcriber, TranscriptUpdate
from livecap.metrics import Metrics
from livecap.vad import VadOptions, VadSegmenter

CHUNK_S = 0.02


@dataclass
class ReplayedUtterance:
    start_s: float
    end_s: float
    partials: list[str] = field(default_factory=list)
    stable: str = ""
    """Words the partials had settled when the utterance ended."""
    final: str = ""
    final_engine: str = ""
    suppressed: str | None = None
    """Why the final hypothesis was dropped (guardrail reason or ``not_speech``)."""
    shown: list[tuple[str, float, bool]] = field(default_factory=list)
    """The last partial's words: (text, confidence, settled)."""
    final_hypothesis: list[tuple[str, float]] = field(default_factory=list)
    """The final decode's own words (text, confidence), before they met what was shown."""


def replay_scheduler(engine: Engine) -> Scheduler:
    """A scheduler that lets ``engine`` take all the time it needs."""
    scheduler = Scheduler(SchedulerOptions(latency_budget_s=1e9, workers=1), Metrics())
    scheduler.primary = engine
    scheduler.ready.set()
    return scheduler


async def replay(scheduler: Scheduler, audio: np.ndarray, options: StreamingOptions = StreamingOptions(),
                 vad_options: VadOptions = VadOptions()) -> list[ReplayedUtterance]:
    """Run 16 kHz mono ``audio`` through VAD and recognition; one entry per utterance, in order."""
    utterances: dict[int, ReplayedUtterance] = {}
    finals: list[str] = []

    def on_update(update: TranscriptUpdate) -> None:
        entry = utterances.setdefault(update.utterance, ReplayedUtterance(update.start / SAMPLE_RATE, 0.0))
        entry.start_s = update.start / SAMPLE_RATE
        match update:
            case PartialUpdate(agreement=agreement, hypothesis=hypothesis):
                entry.partials.append(hypothesis.text)
                entry.stable = " ".join(word.text for word in agreement.stable)
                entry.shown = [(w.text, w.confidence, True) for w in agreement.stable] + \
                              [(w.text, w.confidence, False) for w in agreement.unstable]
            case FinalUpdate(words=words, end=end, hypothesis=hypothesis, suppressed=suppressed):
                entry.end_s = end / SAMPLE_RATE
                entry.final = " ".join(word.text for word in words)
                entry.final_engine = hypothesis.engine
                entry.suppressed = suppressed
                entry.final_hypothesis = [(w.text, w.confidence) for w in hypothesis.words]
                finals.append(entry.final)

    def prompt() -> str:
        return " ".join(" ".join(finals).split()[-options.prompt_words :])

    segmenter = VadSegmenter(vad_options)
    transcriber = Transcriber(scheduler, "replay", on_update, prompt, options=options)
    chunk = int(CHUNK_S * SAMPLE_RATE)
    for i in range(0, len(audio), chunk):
        transcriber.submit(segmenter.feed(audio[i : i + chunk], time.monotonic()))
        await transcriber.flush()
    transcriber.submit(segmenter.flush(time.monotonic()))
    await transcriber.close()
    return [utterances[k] for k in sorted(utterances)]


def replay_sync(scheduler: Scheduler, audio: np.ndarray, options: StreamingOptions = StreamingOptions(),
                vad_options: VadOptions = VadOptions()) -> list[ReplayedUtterance]:
    """``replay`` from synchronous code."""
    return asyncio.run(replay(scheduler, audio, options, vad_options))
