"""The recognizer interface every speech engine implements.

A *stream* recognises one utterance (the audio between a VAD onset and its
endpoint). The caller feeds audio as it arrives, asks for a provisional
hypothesis whenever it wants a partial caption, and asks for the final
hypothesis once at the endpoint. All three calls may be CPU-heavy and are made
from the inference executor, never from the event loop; calls on one stream
are never concurrent.

Engines register themselves by name in ``ENGINES`` so that configuration can
pick them with a string (``"whisper-onnx"``, ``"pocketsphinx"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from livecap.asr.tokenizer import Task

SAMPLE_RATE = 16_000
"""Every engine consumes 16 kHz mono float32 in [-1, 1]; ingest converts to it."""
WARM_UP_S = 3.0
"""Speech an engine decodes at warm-up (``scheduler.warm_up``), unless it names its own lengths
in a ``warm_up_durations_s`` attribute (one utterance per length)."""


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word; times are seconds from the start of the utterance."""

    text: str
    start: float
    end: float
    confidence: float = 1.0


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """What an engine believes the utterance says so far.

    ``words`` joined with spaces is the text. ``no_speech_probability`` is the
    engine's estimate that the audio holds no speech at all (``None`` when the
    engine has no such estimate); guardrails use it to drop hallucinations.
    """

    words: tuple[Word, ...]
    engine: str
    model_version: str
    no_speech_probability: float | None = None
    confidence: float | None = None
    """How sure the engine is of the words, as the guardrails judge it, where it is not the
    geometric mean of the words' confidences (Whisper leaves out the words a glossary bonus
    chose); ``None``: that mean."""
    language: str = "en"
    """What the words are written in: the language spoken, or English for a translation."""
    language_probability: float | None = None
    """How sure the engine was of the language it detected; None when it was told it."""

    @property
    def text(self) -> str:
        return " ".join(word.text for word in self.words)


class RecognizerStream(Protocol):
    """Recognition state for one utterance."""

    def feed(self, audio: np.ndarray) -> None:
        """Append 16 kHz mono float32 samples to the utterance."""

    def hypothesis(self, settled: str = "") -> Hypothesis:
        """Best guess for all audio fed so far; the utterance may continue.

        ``settled`` is the leading text viewers already see as stable (it is
        never retracted): an engine that re-decodes from scratch may take it
        as given and decode only what follows; others ignore it."""

    def finish(self) -> Hypothesis:
        """Final result for the whole utterance; the stream is not used after."""


class Engine(Protocol):
    """A loaded speech model that opens one stream per utterance."""

    name: str
    model_version: str
    device: str
    """Where inference runs, "cpu" or "cuda": the default latency budget depends on it."""

    languages: frozenset[str]
    """Whisper codes of the languages it recognises."""
    translates: bool
    """Whether it can write speech of its languages in English (Whisper's translate task)."""

    def open_stream(self, prompt: str = "", terms: Sequence[str] = (), language: str | None = "en",
                    task: Task = "transcribe", candidates: Sequence[str] = ()) -> RecognizerStream:
        """Start an utterance. ``prompt`` is preceding text (earlier finals,
        room glossary) that an engine may use to bias spelling and style;
        ``terms`` are the room's glossary terms, which an engine may favour
        while decoding (``biasing``). ``language``: what is spoken (None:
        the engine detects it, if it can, among ``candidates`` if any); ``task``:
        ``translate`` writes it in English. ``ValueError`` for a language or task
        the engine lacks."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """What an engine factory may need; engines ignore what they do not use."""

    model: str = "tiny.en"
    device: str = "auto"
    threads: int = 1
    """Threads one call may use."""
    workers: int = 1
    """Calls that may run at once (engines that need processes or pools size them by it)."""
    model_cache: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


EngineFactory = Callable[[EngineOptions], Engine]
ENGINES: dict[str, EngineFactory] = {}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Decorator adding a factory to ``ENGINES`` under ``name``."""

    def add(factory: EngineFactory) -> EngineFactory:
        ENGINES[name] = factory
        return factory

    return add
