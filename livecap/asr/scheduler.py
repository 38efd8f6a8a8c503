"""Where recognition work runs: one shared executor for every room.

CPU-heavy inference never runs on the event loop. Every room's transcriber
asks the scheduler for an utterance recognizer and awaits its steps; the steps
of all rooms share one thread pool sized to the machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from livecap.asr.engine import Engine, Hypothesis, RecognizerStream


class ScheduledUtterance:
    """Async handle on one utterance's recognizer stream."""

    def __init__(self, scheduler: Scheduler, prompt: str) -> None:
        self._scheduler = scheduler
        self._prompt = prompt
        self._stream: RecognizerStream | None = None

    async def step(self, audio: np.ndarray) -> Hypothesis:
        """Feed new audio and return the current hypothesis."""
        return await self._scheduler.run(self._step, audio)

    async def finish(self, audio: np.ndarray) -> Hypothesis:
        """Feed the last audio and return the final hypothesis."""
        return await self._scheduler.run(self._finish, audio)

    def _open(self) -> RecognizerStream:
        if self._stream is None:
            if self._scheduler.engine is None:
                raise RuntimeError("no engine loaded")
            self._stream = self._scheduler.engine.open_stream(self._prompt)
        return self._stream

    def _step(self, audio: np.ndarray) -> Hypothesis:
        stream = self._open()
        if len(audio):
            stream.feed(audio)
        return stream.hypothesis()

    def _finish(self, audio: np.ndarray) -> Hypothesis:
        stream = self._open()
        if len(audio):
            stream.feed(audio)
        return stream.finish()


class Scheduler:
    def __init__(self, workers: int, engine: Engine | None = None) -> None:
        self.engine = engine
        """Set once loaded; the server answers /readyz when it is."""
        self.ready = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")

    def open(self, prompt: str) -> ScheduledUtterance:
        return ScheduledUtterance(self, prompt)

    async def run(self, function: Callable[[np.ndarray], Hypothesis], audio: np.ndarray) -> Hypothesis:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, audio)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
