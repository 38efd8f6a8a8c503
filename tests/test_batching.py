"""Encoder micro-batching: the generic batcher, and whisper-onnx with batching on (CPU).

Synchronisation is by batch size, never by sleeping: a batch whose
``max_batch`` callers have all arrived runs at once, so the long windows
below are only a bound on a broken test's wait.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from livecap_models import Manifest

from benchmarks.scoring import word_error_rate
from livecap.asr.batching import MicroBatcher
from livecap.asr.engine import EngineOptions
from livecap.asr.features import log_mel_spectrogram
from livecap.asr.whisper_onnx import MAX_ENCODER_BATCH, WhisperOnnx, WindowPolicy
from livecap.config import ServerOptions, load_options
from tests.conftest import timeout
from tests.speech import audio, recordings

LONG_WINDOW_S = timeout(30.0)
"""A window no batch in these tests waits out: each closes when full."""


class Recorder:
    """A ``run_batch`` that records its batches and the threads that ran them."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.threads: list[int] = []
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.batches.append(list(items))
            self.threads.append(threading.get_ident())
        if self.fail:
            raise ValueError(f"batch {items} failed")
        return [10 * item for item in items]


def call_concurrently(batcher: MicroBatcher[int, int], items: list[int]) -> list[int | BaseException]:
    """``batcher(item)`` for each item from its own thread: results or exceptions, in item order."""

    def call(item: int) -> int | BaseException:
        try:
            return batcher(item)
        except Exception as error:
            return error

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(call, items))


def test_concurrent_callers_share_one_batch() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, LONG_WINDOW_S, max_batch=4)
    assert call_concurrently(batcher, [1, 2, 3, 4]) == [10, 20, 30, 40]
    assert len(run.batches) == 1 and sorted(run.batches[0]) == [1, 2, 3, 4]


def test_max_batch_is_respected() -> None:
    run = Recorder()
    # the window only has to outlast thread start-up; the odd one out waits it out alone
    batcher = MicroBatcher(run, timeout(0.5), max_batch=2)
    assert call_concurrently(batcher, list(range(7))) == [10 * i for i in range(7)]
    assert all(1 <= len(batch) <= 2 for batch in run.batches)
    assert sorted(item for batch in run.batches for item in batch) == list(range(7))
    assert len(run.batches) >= 4


def test_lone_caller_runs_when_the_window_ends() -> None:
    run = Recorder()
    assert MicroBatcher(run, 0.01, max_batch=8)(5) == 50
    assert run.batches == [[5]]


def test_exception_reaches_every_caller() -> None:
    run = Recorder(fail=True)
    results = call_concurrently(MicroBatcher(run, LONG_WINDOW_S, max_batch=3), [1, 2, 3])
    assert len(run.batches) == 1
    assert all(isinstance(r, ValueError) and "failed" in str(r) for r in results)
    # the batcher is usable again after a failed batch
    run.fail = False
    assert call_concurrently(MicroBatcher(run, LONG_WINDOW_S, max_batch=2), [4, 5]) == [40, 50]


def test_wrong_number_of_results_is_an_error() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: items[:1], LONG_WINDOW_S, max_batch=2)
    results = call_concurrently(batcher, [1, 2])
    assert all(isinstance(r, RuntimeError) for r in results)


def test_window_zero_calls_straight_through() -> None:
    both_inside = threading.Barrier(2, timeout=timeout(10.0))
    calls: list[tuple[list[int], int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append((list(items), threading.get_ident()))
        both_inside.wait()  # breaks (and fails the test) if calls were serialised or held back
        return [-item for item in items]

    batcher = MicroBatcher(run, 0.0)
    assert not batcher.enabled
    assert call_concurrently(batcher, [1, 2]) == [-1, -2]
    assert sorted(items for items, _ in calls) == [[1], [2]]
    assert len({thread for _, thread in calls}) == 2  # each in its caller's own thread
    with pytest.raises(ValueError):
        MicroBatcher(run, -1.0)


# The engine. fp16 is what runs on CUDA, where batching is on; on the CPU its
# batched encoder output is bit-identical to one window at a time (checked
# while writing this), so the text must be identical too. int8 never batches
# (one activation scale per batch, see WhisperOnnx).
BATCH = ["librispeech-2412-153948-0002", "librispeech-3752-4944-0001", "vctk-p225_002",
         "commonvoice-en-60683"]
"""Three fit the 15 s window and one (5.5 s + 10 s margin) needs 20 s: all are padded to 20 s."""
PADDED = WindowPolicy((20.0,))


def fp16_engine(window_ms: float | None, window: WindowPolicy | None = None,
                max_encoder_batch: int = MAX_ENCODER_BATCH) -> WhisperOnnx:
    extra = {"precision": "fp16"} | ({} if window_ms is None else {"encoder_batch_window_ms": str(window_ms)})
    return WhisperOnnx(EngineOptions(model="tiny.en", device="cpu", threads=1, extra=extra), window,
                       max_encoder_batch)


@pytest.fixture(scope="module")
def batched_engine(tiny_manifest: Manifest) -> Iterator[WhisperOnnx]:
    yield fp16_engine(LONG_WINDOW_S * 1000, max_encoder_batch=len(BATCH))


def test_concurrent_streams_batch_their_encoder_runs(batched_engine: WhisperOnnx) -> None:
    assert [WindowPolicy().frames(len(audio(i)) / 16_000) for i in BATCH] == [1500, 1500, 1500, 2000]
    alone = fp16_engine(0, window=PADDED)
    assert alone.encoder_batch_window_s == 0.0
    expected = [alone.transcribe(audio(i)).text for i in BATCH]
    assert word_error_rate([recordings()[i].text for i in BATCH], expected) <= 0.15

    before = batched_engine.timings()
    with ThreadPoolExecutor(len(BATCH)) as pool:
        texts = list(pool.map(lambda i: batched_engine.transcribe(audio(i)).text, BATCH))
    after = batched_engine.timings()
    assert texts == expected
    assert after.encoder_calls - before.encoder_calls == 1
    assert after.encoder_batches == before.encoder_batches | {len(BATCH): 1}
    assert after.encoder_windows - before.encoder_windows == len(BATCH)


def test_batch_rows_equal_windows_encoded_alone_at_the_padded_length(batched_engine: WhisperOnnx) -> None:
    n_mels = batched_engine.manifest.dims.n_mels
    short, long = audio(BATCH[0]), audio(BATCH[-1])
    rows = batched_engine._encode_batch([log_mel_spectrogram(short, 1500, n_mels),
                                         log_mel_spectrogram(long, 2000, n_mels)])
    alone = [batched_engine._encode_batch([log_mel_spectrogram(a, 2000, n_mels)])[0] for a in (short, long)]
    for row, reference in zip(rows, alone, strict=True):
        for value, expected in zip(row, reference, strict=True):
            assert value.shape() == expected.shape() == [1, *expected.shape()[1:]]
            # identical on the CPUs tried; the tolerance is one fp16 rounding step
            np.testing.assert_allclose(value.numpy(), expected.numpy(), rtol=2e-3, atol=2e-3)


def test_batching_is_off_on_cpu_and_for_int8(whisper_engine: WhisperOnnx, tiny_manifest: Manifest) -> None:
    assert whisper_engine.encoder_batch_window_s == 0.0  # CPU default
    assert fp16_engine(None).encoder_batch_window_s == 0.0
    assert fp16_engine(10).encoder_batch_window_s == pytest.approx(0.010)
    int8 = WhisperOnnx(EngineOptions(model="tiny.en", device="cpu", extra={"encoder_batch_window_ms": "10"}))
    assert int8.manifest.precision == "int8" and int8.encoder_batch_window_s == 0.0
    before = whisper_engine.timings().encoder_batches.get(1, 0)
    whisper_engine.transcribe(audio(BATCH[0]))
    assert whisper_engine.timings().encoder_batches.get(1, 0) == before + 1


def test_setting_reaches_the_engine_options() -> None:
    assert ServerOptions().engine_extra == {}  # by device: the engine decides
    assert ServerOptions(encoder_batch_window_ms=0).engine_extra == {"encoder_batch_window_ms": "0"}
    options = load_options(environ={"LIVECAP_ENCODER_BATCH_WINDOW_MS": "5"})
    assert options.engine_extra == {"encoder_batch_window_ms": "5.0"}
