"""Fault injector: makes an engine slow or failing on demand.

For tests, benchmarks and demos of the latency budget only — never on by
default. It wraps a real engine; the wrapped engine does all the real work,
the injector adds a delay before each decode and raises ``ModelError`` at a
given rate. Settings can change at run time (``POST /operator/faults``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from livecap.asr.engine import Engine, Hypothesis, RecognizerStream
from livecap.asr.tokenizer import Task
from livecap.errors import ModelError
from livecap.language import ENGLISH

MAX_DELAY_S = 60.0
"""Longest delay the injector adds: far past any latency budget, short enough
that a typo cannot hold an inference thread for good."""


@dataclass(frozen=True, slots=True)
class Faults:
    delay_s: float = 0.0
    """Added before every hypothesis/finish call, 0 to ``MAX_DELAY_S`` seconds."""
    failure_rate: float = 0.0
    """Probability that a hypothesis/finish call raises ModelError."""

    def __post_init__(self) -> None:
        # written so that NaN, which fails every comparison, is refused too
        if not 0.0 <= self.delay_s <= MAX_DELAY_S:
            raise ValueError(f"delay_s must be a number of seconds from 0 to {MAX_DELAY_S:g}")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be a number from 0 to 1")

    @property
    def active(self) -> bool:
        return self.delay_s > 0 or self.failure_rate > 0


class FaultInjector:
    """An engine that behaves like ``engine`` plus the current ``faults``."""

    def __init__(self, engine: Engine, faults: Faults = Faults(), seed: int | None = None) -> None:
        self.engine = engine
        self.name = engine.name
        self.model_version = engine.model_version
        self.device = engine.device
        self.languages = engine.languages
        self.translates = engine.translates
        self.faults = faults
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def open_stream(self, prompt: str = "", terms: Sequence[str] = (), language: str | None = ENGLISH,
                    task: Task = "transcribe", candidates: Sequence[str] = ()) -> RecognizerStream:
        return _FaultyStream(self, self.engine.open_stream(prompt, terms, language, task, candidates))

    def close(self) -> None:
        getattr(self.engine, "close", lambda: None)()

    def strike(self) -> None:
        """Apply the current faults to one call."""
        faults = self.faults
        if faults.delay_s:
            time.sleep(faults.delay_s)
        with self._lock:
            failing = faults.failure_rate and self._random.random() < faults.failure_rate
        if failing:
            raise ModelError("fault injector: simulated engine failure")


class _FaultyStream:
    def __init__(self, injector: FaultInjector, stream: RecognizerStream) -> None:
        self._injector = injector
        self._stream = stream

    def feed(self, audio: np.ndarray) -> None:
        self._stream.feed(audio)

    def hypothesis(self, settled: str = "") -> Hypothesis:
        self._injector.strike()
        return self._stream.hypothesis(settled)

    def finish(self) -> Hypothesis:
        self._injector.strike()
        return self._stream.finish()
