"""Engines that run in worker processes.

PocketSphinx holds Python's GIL while it decodes, so in a thread it would
stall the event loop and every other engine (measured: 470 ms pauses while
decoding 1 s chunks). ``ProcessEngine`` runs such an engine in worker
processes instead: each stream lives in one worker and every call is a
request/response over a pipe, during which the calling thread waits without
holding the GIL. A crashed worker fails its streams with ``ModelError`` and
is replaced on the next ``open_stream``.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing
import signal
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from livecap.asr.engine import WARM_UP_S, Engine, EngineOptions, Hypothesis, RecognizerStream
from livecap.asr.tokenizer import Task
from livecap.errors import ModelError
from livecap.language import ENGLISH


def _load(target: str, options: EngineOptions) -> Engine:
    module, _, name = target.partition(":")
    factory = getattr(importlib.import_module(module), name)
    return factory(options)  # type: ignore[no-any-return]


def _serve(target: str, options: EngineOptions, connection: Connection) -> None:
    """Worker process main loop: (op, stream id, argument) in, (ok, result) out.

    Ctrl-C reaches the whole foreground process group; the parent decides when a
    worker ends (it closes the pipe once the open utterances are final)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine = _load(target, options)
    connection.send((True, (engine.model_version, engine.languages, engine.translates)))
    streams: dict[int, RecognizerStream] = {}
    while True:
        try:
            op, stream_id, argument = connection.recv()
        except EOFError:
            return
        try:
            if op == "open":
                streams[stream_id] = engine.open_stream(*argument)
                result: Any = None
            elif op == "feed":
                streams[stream_id].feed(argument)
                result = None
            elif op == "hypothesis":
                result = streams[stream_id].hypothesis()
            else:
                result = streams.pop(stream_id).finish()
            connection.send((True, result))
        except Exception as error:  # reported to the caller, who owns the decision
            streams.pop(stream_id, None) if op == "finish" else None
            connection.send((False, f"{type(error).__name__}: {error}"))


class _Worker:
    def __init__(self, target: str, options: EngineOptions) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process: BaseProcess = context.Process(target=_serve, args=(target, options, child), daemon=True,
                                                    name=f"engine-{target}")
        self.process.start()
        child.close()
        self.lock = threading.Lock()
        self.open_streams = 0
        self.model_version: str
        self.languages: frozenset[str]
        self.model_version, self.languages, self.translates = self.call("", 0, None, startup=True)

    def call(self, op: str, stream_id: int, argument: Any, startup: bool = False) -> Any:
        with self.lock:
            try:
                if not startup:
                    self.connection.send((op, stream_id, argument))
                ok, result = self.connection.recv()
            except (EOFError, OSError, BrokenPipeError) as error:
                raise ModelError(f"engine worker {self.process.name} died (exit code {self.process.exitcode})") \
                    from error
        if not ok:
            raise ModelError(f"engine worker failed: {result}")
        return result

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def close(self) -> None:
        self.connection.close()
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()


class ProcessStream:
    def __init__(self, worker: _Worker, stream_id: int) -> None:
        self._worker = worker
        self._id = stream_id

    def feed(self, audio: np.ndarray) -> None:
        self._worker.call("feed", self._id, audio)

    def hypothesis(self, settled: str = "") -> Hypothesis:  # incremental engines gain nothing from settled
        return self._worker.call("hypothesis", self._id, None)  # type: ignore[no-any-return]

    def finish(self) -> Hypothesis:
        try:
            return self._worker.call("finish", self._id, None)  # type: ignore[no-any-return]
        finally:
            self._worker.open_streams -= 1


class ProcessEngine:
    """An engine (``module:factory``) served by ``workers`` processes."""

    def __init__(self, name: str, target: str, options: EngineOptions, workers: int) -> None:
        self.name = name
        self.device = "cpu"
        self._target, self._options = target, options
        self._workers = [_Worker(target, options) for _ in range(max(1, workers))]
        self.model_version = self._workers[0].model_version
        self.languages, self.translates = self._workers[0].languages, self._workers[0].translates
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def warm_up_durations_s(self) -> tuple[float, ...]:
        """One utterance per worker for ``scheduler.warm_up``: each worker's first decode is slow
        (PocketSphinx: about a second more CPU), and a live utterance must not pay for it."""
        return (WARM_UP_S,) * len(self._workers)

    def open_stream(self, prompt: str = "", terms: Sequence[str] = (), language: str | None = ENGLISH,
                    task: Task = "transcribe", candidates: Sequence[str] = ()) -> ProcessStream:
        with self._lock:
            for i, worker in enumerate(self._workers):
                if not worker.alive:
                    worker.close()
                    self._workers[i] = _Worker(self._target, self._options)
            worker = min(self._workers, key=lambda w: w.open_streams)
            worker.open_streams += 1
            stream_id = next(self._ids)
        try:
            worker.call("open", stream_id, (prompt, tuple(terms), language, task, tuple(candidates)))
        except ModelError:
            worker.open_streams -= 1
            raise
        return ProcessStream(worker, stream_id)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
