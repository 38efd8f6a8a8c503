"""The fallback engine: CMU PocketSphinx, natively streaming, CPU only.

PocketSphinx is far less accurate than Whisper (roughly 25–50% WER on our
evaluation set against Whisper tiny.en's ~10%) but it processes audio as it
arrives at a fraction of real time and needs no accelerator, which is what a
fallback must guarantee. The en-us acoustic model, language model and
dictionary ship inside the ``pocketsphinx`` wheel.

A ``Decoder`` loads the model (~0.5 s) and holds one utterance at a time, so
the engine keeps a pool: a stream borrows a decoder and returns it when it
finishes. The registered engine runs this class in worker processes
(``isolation``), because the decoder holds the GIL.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from importlib.metadata import version

import numpy as np
from pocketsphinx import Decoder

from livecap.asr.engine import EngineOptions, Hypothesis, Word, register_engine
from livecap.asr.isolation import ProcessEngine
from livecap.asr.tokenizer import Task
from livecap.audio import float_to_s16le
from livecap.language import ENGLISH

FRAMES_PER_SECOND = 100
"""PocketSphinx's feature frame rate (``-frate``), for converting segment times."""

_FILLER = re.compile(r"^(<.*>|\[.*\])$")
"""Non-words in segmentations: <s>, </s>, <sil>, [NOISE], [SPEECH] …"""
_ALTERNATE = re.compile(r"\(\d+\)$")
"""Pronunciation variants are written word(2), word(3) …"""


class PocketsphinxStream:
    def __init__(self, engine: PocketsphinxEngine, decoder: Decoder) -> None:
        self._engine = engine
        self._decoder = decoder
        self._decoder.start_utt()

    def feed(self, audio: np.ndarray) -> None:
        self._decoder.process_raw(float_to_s16le(audio), False, False)

    def hypothesis(self, settled: str = "") -> Hypothesis:  # decodes incrementally: settled text gains nothing
        return self._engine.hypothesis_of(self._decoder)

    def finish(self) -> Hypothesis:
        try:
            self._decoder.end_utt()
            return self._engine.hypothesis_of(self._decoder)
        finally:
            self._engine.release(self._decoder)


class PocketsphinxEngine:
    name = "pocketsphinx"
    device = "cpu"
    languages = frozenset({ENGLISH})
    """The wheel ships the en-us model only."""
    translates = False

    def __init__(self, options: EngineOptions = EngineOptions()) -> None:
        self.model_version = f"en-us-{version('pocketsphinx')}"
        self._pool: list[Decoder] = []
        self._lock = threading.Lock()
        self.release(self._new_decoder())

    def open_stream(self, prompt: str = "", terms: Sequence[str] = (), language: str | None = ENGLISH,
                    task: Task = "transcribe", candidates: Sequence[str] = ()) -> PocketsphinxStream:
        """``prompt`` and ``terms`` are ignored: PocketSphinx's language model takes no context.
        ``ValueError`` for anything but English transcription."""
        if language != ENGLISH or task != "transcribe":
            raise ValueError(f"pocketsphinx cannot {task} {language!r}: it has the en-us model only")
        with self._lock:
            decoder = self._pool.pop() if self._pool else None
        return PocketsphinxStream(self, decoder or self._new_decoder())

    def release(self, decoder: Decoder) -> None:
        with self._lock:
            self._pool.append(decoder)

    def hypothesis_of(self, decoder: Decoder) -> Hypothesis:
        words = tuple(
            Word(_ALTERNATE.sub("", segment.word), segment.start_frame / FRAMES_PER_SECOND,
                 (segment.end_frame + 1) / FRAMES_PER_SECOND, float(min(1.0, max(0.0, segment.prob))))
            for segment in decoder.seg()
            if not _FILLER.match(segment.word)
        )
        return Hypothesis(words, self.name, self.model_version)

    @staticmethod
    def _new_decoder() -> Decoder:
        return Decoder(loglevel="FATAL")


@register_engine("pocketsphinx")
def create(options: EngineOptions) -> ProcessEngine:
    """PocketSphinx holds the GIL while decoding, so it runs in worker processes."""
    return ProcessEngine(PocketsphinxEngine.name, f"{__name__}:PocketsphinxEngine", options, options.workers)
