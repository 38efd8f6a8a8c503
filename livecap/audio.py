"""PCM decoding, resampling and WAV reading.

Everything downstream of ingest sees one format: 16 kHz mono float32 in
[-1, 1]. Resampling uses libsoxr (``soxr``) in streaming mode, so a publisher
may send frames of any size and still get one continuous, alias-free signal.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soxr

TARGET_RATE = 16_000
SampleFormat = Literal["s16le", "f32le"]
BYTES_PER_SAMPLE: dict[SampleFormat, int] = {"s16le": 2, "f32le": 4}


def decode_pcm(data: bytes, sample_format: SampleFormat, channels: int) -> np.ndarray:
    """Little-endian interleaved PCM → mono float32 (channels averaged)."""
    if sample_format == "s16le":
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    else:
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(samples, -1.0, 1.0, out=samples)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples


class Resampler:
    """Streaming converter from ``rate`` to 16 kHz; a no-op at 16 kHz."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._stream = None if rate == TARGET_RATE else soxr.ResampleStream(rate, TARGET_RATE, 1, dtype="float32")

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples
        return np.asarray(self._stream.resample_chunk(samples, last=last), dtype=np.float32)


def float_to_s16le(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] → 16-bit little-endian PCM (what webrtcvad and most clients use)."""
    return bytes((np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


@dataclass(frozen=True)
class WavAudio:
    samples: np.ndarray
    """float32, shape (frames, channels)."""
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def mono_16k(self) -> np.ndarray:
        mono = self.samples.mean(axis=1, dtype=np.float32)
        return Resampler(self.sample_rate).process(mono, last=True)


_WAVE_FORMAT_PCM, _WAVE_FORMAT_FLOAT, _WAVE_FORMAT_EXTENSIBLE = 1, 3, 0xFFFE


def read_wav(path: str | Path) -> WavAudio:
    """Read a RIFF WAVE file: integer PCM (8/16/24/32-bit) or float32/64.

    The standard library's ``wave`` module rejects float and extensible
    files, which browsers and DAWs commonly write, hence this small parser.
    """
    data = Path(path).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = data[offset + 8 : offset + 8 + size]
        if chunk_id == b"fmt ":
            tag, channels, rate = struct.unpack_from("<HHI", body)
            bits = struct.unpack_from("<H", body, 14)[0]
            if tag == _WAVE_FORMAT_EXTENSIBLE:
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError(f"{path}: data chunk before fmt chunk")
            return WavAudio(_decode_wav_samples(body, *fmt), fmt[2])
        offset += 8 + size + (size & 1)
    raise ValueError(f"{path}: no data chunk")


def _decode_wav_samples(body: bytes, tag: int, channels: int, rate: int, bits: int) -> np.ndarray:
    width = bits // 8
    body = body[: len(body) - len(body) % (width * channels)]
    if tag == _WAVE_FORMAT_FLOAT and bits in (32, 64):
        samples = np.frombuffer(body, dtype=f"<f{width}").astype(np.float32)
    elif tag == _WAVE_FORMAT_PCM and bits == 8:
        samples = (np.frombuffer(body, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _WAVE_FORMAT_PCM and bits in (16, 32):
        samples = np.frombuffer(body, dtype=f"<i{width}").astype(np.float32) / float(2 ** (bits - 1))
    elif tag == _WAVE_FORMAT_PCM and bits == 24:
        raw = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        samples = (np.where(ints >= 1 << 23, ints - (1 << 24), ints)).astype(np.float32) / float(1 << 23)
    else:
        raise ValueError(f"unsupported WAV encoding: format tag {tag}, {bits} bits")
    return samples.reshape(-1, channels)
