"""The ingest protocol, fed frames directly (no sockets)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livecap.errors import (
    InvalidFrame,
    InvalidJson,
    LivecapError,
    MessageTooBig,
    ProtocolError,
    RateLimited,
    UnsupportedFormat,
)
from livecap.ingest import AudioReceived, IngestLimits, IngestProtocol, Started, Stopped


def start(**fields: object) -> str:
    return json.dumps({"type": "start", "format": "s16le", "sample_rate": 16000, "channels": 1, **fields})


def tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


def s16le(samples: np.ndarray) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def test_start_audio_stop_yields_events_in_order() -> None:
    protocol = IngestProtocol()
    assert protocol.receive_text(start(), 0.0) == [Started(protocol.format)]  # type: ignore[arg-type]
    events = protocol.receive_bytes(s16le(tone(16000, 0.02)), 1.0)
    assert len(events) == 1 and isinstance(events[0], AudioReceived)
    assert events[0].arrival == 1.0 and len(events[0].samples) == 320
    assert protocol.receive_text('{"type": "stop"}', 2.0)[-1] == Stopped()
    assert not protocol.streaming


@pytest.mark.parametrize(("rate", "channels", "sample_format"),
                         [(8000, 1, "s16le"), (44100, 2, "s16le"), (48000, 1, "f32le"), (22050, 2, "f32le")])
def test_any_supported_format_becomes_16k_mono(rate: int, channels: int, sample_format: str) -> None:
    protocol = IngestProtocol()
    protocol.receive_text(start(sample_rate=rate, channels=channels, format=sample_format), 0.0)
    signal = tone(rate, 1.0, channels)
    data = s16le(signal) if sample_format == "s16le" else signal.astype("<f4").tobytes()
    frame = (rate // 50) * channels * (2 if sample_format == "s16le" else 4)
    out = [e.samples for i in range(0, len(data), frame)
           for e in protocol.receive_bytes(data[i : i + frame], 0.0) if isinstance(e, AudioReceived)]
    out += [e.samples for e in protocol.receive_text('{"type":"stop"}', 0.0) if isinstance(e, AudioReceived)]
    audio = np.concatenate(out)
    assert abs(len(audio) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 3, "the tone survives resampling at its pitch"


def test_resampling_does_not_depend_on_frame_size() -> None:
    data = s16le(tone(44100, 0.5))
    outputs = []
    for frame in (2, 882, 4410, len(data)):
        protocol = IngestProtocol()
        protocol.receive_text(start(sample_rate=44100), 0.0)
        chunks = [e.samples for i in range(0, len(data), frame) for e in protocol.receive_bytes(data[i:i + frame], 0.0)
                  if isinstance(e, AudioReceived)]
        chunks += [e.samples for e in protocol.receive_text('{"type":"stop"}', 0.0) if isinstance(e, AudioReceived)]
        outputs.append(np.concatenate(chunks))
    for other in outputs[1:]:
        assert len(other) == len(outputs[0])
        np.testing.assert_allclose(other, outputs[0], atol=1e-5)


@pytest.mark.parametrize(("frames", "error", "close_code"), [
    (["not json"], InvalidJson, 1007),
    (["[1, 2]"], InvalidJson, 1007),
    (['{"type": "hello"}'], ProtocolError, 1008),
    ([b"\x00\x00"], ProtocolError, 1008),
    (['{"type": "stop"}'], ProtocolError, 1008),
    ([start(), start()], ProtocolError, 1008),
    ([start(format="mp3")], UnsupportedFormat, 1003),
    ([start(sample_rate=96000)], UnsupportedFormat, 1003),
    ([start(sample_rate="16000")], UnsupportedFormat, 1003),
    ([start(channels=6)], UnsupportedFormat, 1003),
    ([start(channels=True)], UnsupportedFormat, 1003),
    ([start(language="xx")], UnsupportedFormat, 1003),
    ([start(), b"\x00\x00\x00"], InvalidFrame, 1007),
    ([start(channels=2), b"\x00\x00"], InvalidFrame, 1007),
    ([start(), bytes(600_000)], MessageTooBig, 1009),
    (["x" * 600_000], MessageTooBig, 1009),
])
def test_bad_input_raises_the_documented_error(frames: list[str | bytes], error: type[LivecapError],
                                               close_code: int) -> None:
    protocol = IngestProtocol()
    with pytest.raises(error) as raised:
        for frame in frames:
            if isinstance(frame, str):
                protocol.receive_text(frame, 0.0)
            else:
                protocol.receive_bytes(frame, 0.0)
    assert type(raised.value) is error
    assert raised.value.close_code == close_code
    assert raised.value.to_event()["code"] == error.code


def test_audio_faster_than_the_rate_limit_is_refused() -> None:
    protocol = IngestProtocol(IngestLimits(max_audio_rate=2.0, rate_burst_seconds=1.0))
    protocol.receive_text(start(), 0.0)
    second = s16le(tone(16000, 0.1))
    now = 0.0
    for _ in range(100):  # 0.1 s of audio every 0.05 s: 2× real time, sustained, is allowed
        protocol.receive_bytes(second, now)
        now += 0.05
    with pytest.raises(RateLimited):
        for _ in range(100):  # 0.1 s every 0.025 s: 4× real time, exhausts the 1 s burst
            protocol.receive_bytes(second, now)
            now += 0.025


def test_float_audio_is_sanitised() -> None:
    protocol = IngestProtocol()
    protocol.receive_text(start(format="f32le"), 0.0)
    events = protocol.receive_bytes(np.array([np.nan, np.inf, -np.inf, 3.0, -0.5], dtype="<f4").tobytes(), 0.0)
    assert isinstance(events[0], AudioReceived)
    assert events[0].samples.tolist() == [0.0, 1.0, -1.0, 1.0, -0.5]
