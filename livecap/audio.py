"""PCM decoding, resampling and WAV reading.

Everything downstream of ingest sees one format: 16 kHz mono float32 in
[-1, 1]. Resampling uses libsoxr (``soxr``) in streaming mode, so a publisher
may send frames of any size and still get one continuous, alias-free signal.
"""

from __future__ import annotations

import collections
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
    """Little-endian interleaved PCM → float32 frames, shape (frames, channels)."""
    if sample_format == "s16le":
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    else:
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(samples, -1.0, 1.0, out=samples)
    return samples.reshape(-1, channels)


class Downmix:
    """Frames → mono that a polarity-inverted channel cannot silence.

    Averaging two channels (the *mid* signal, (L+R)/2) cancels speech when one
    is polarity-inverted, a common desk or cable wiring fault: L + (−L) = 0.
    Over a sliding window of the last ``WINDOW_BLOCKS`` non-silent 10 ms
    blocks, the energy of mid is compared with that of *side*, (L−R)/2 (the
    two add up to the channels' mean energy). When side holds ``CANCEL_RATIO``
    times more, the channels cancel and side (R inverted) becomes the output;
    when mid holds that much more, mid again. In between (independent
    channels, one silent channel: mid ≈ side) the output stays as it is, the
    plain average unless the channels were found to cancel.

    Until the first decision, the output is held back by one window, so that
    the first words are mixed the way it decides; after ``DECIDE_BLOCKS``
    without a clear answer the average is chosen. Blocks are counted from the
    first frame, so the output does not depend on how the input is cut into
    chunks. One channel passes through; more than two are averaged.
    """

    WINDOW_BLOCKS = 30
    """0.3 s of non-silent audio per decision: more than a few pitch periods, so that speech reaching two
    spaced microphones with a delay does not fake a cancellation."""
    DECIDE_BLOCKS = 100
    """Non-silent audio (1 s) after which an unclear first decision settles on the average."""
    CANCEL_RATIO = 10.0
    """10 dB. Independent channels give mid ≈ side (0 dB); a polarity fault gives side ≫ mid (> 30 dB)."""
    SILENT_POWER = 1e-6
    """Mean power of a block below −60 dBFS is silence (dither, a muted input) and decides nothing."""

    def __init__(self, channels: int, rate: int) -> None:
        self.channels = channels
        self._block = max(1, rate // 100)
        self._filled = 0  # frames of the current block seen so far
        self._energy = np.zeros(2)  # mid and side energy of the current block
        self._window: collections.deque[np.ndarray] = collections.deque(maxlen=self.WINDOW_BLOCKS)
        self._heard = 0  # non-silent blocks so far
        self._side: bool | None = None  # output side instead of mid; None until the first decision
        self._held: list[np.ndarray] = []  # (frames, 2): mid and side of the audio held back until then
        self.cancelled = False
        """The channels were found to cancel (it stays set: the publisher is told once)."""

    def process(self, frames: np.ndarray, last: bool = False) -> np.ndarray:
        """Mono float32 for ``frames`` (shape (n, channels)); ``last`` releases what is held back."""
        if self.channels != 2:
            return frames.mean(axis=1, dtype=np.float32) if self.channels > 1 else frames[:, 0]
        left, right = frames[:, 0], frames[:, 1]
        mid_side = np.stack([(left + right) / 2, (left - right) / 2], axis=1).astype(np.float32)
        out: list[np.ndarray] = []
        start = 0
        while start < len(mid_side):
            part = mid_side[start : start + self._block - self._filled]
            start += len(part)
            self._filled += len(part)
            self._energy += np.einsum("ij,ij->j", part, part)
            if self._side is None:
                self._held.append(part)
            else:
                out.append(part[:, int(self._side)])
            if self._filled == self._block:
                out.extend(self._end_block())
        if last and self._held:  # a clip shorter than a window: the evidence there is
            mid, side = self._window_energy()
            out.append(self._release(bool(side > self.CANCEL_RATIO * mid)))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def _end_block(self) -> list[np.ndarray]:
        """Take the finished block into the window, decide; return audio released from the hold."""
        if self._energy.sum() / self._block >= self.SILENT_POWER:
            self._window.append(self._energy)
            self._heard += 1
        self._filled, self._energy = 0, np.zeros(2)
        mid, side = self._window_energy()
        clear = len(self._window) == self.WINDOW_BLOCKS and max(mid, side) >= self.CANCEL_RATIO * min(mid, side)
        if self._side is None and (clear or self._heard >= self.DECIDE_BLOCKS):
            return [self._release(bool(clear and side > mid))]
        if self._side is None:  # keep one window; older audio goes out as the average
            held = np.concatenate(self._held)
            keep = self.WINDOW_BLOCKS * self._block
            self._held = [held[-keep:]]
            return [held[:-keep, 0]]
        if clear:
            self._side = bool(side > mid)
            self.cancelled |= self._side
        return []

    def _window_energy(self) -> tuple[float, float]:
        mid, side = np.sum(self._window, axis=0) if self._window else (0.0, 0.0)
        return float(mid), float(side)

    def _release(self, side: bool) -> np.ndarray:
        """The first decision: the held audio goes out mixed that way."""
        self._side = side
        self.cancelled |= side
        held, self._held = np.concatenate(self._held), []
        return held[:, int(side)]


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

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    def mono_16k(self, downmix: Downmix | None = None) -> np.ndarray:
        """The whole file as 16 kHz mono; pass a ``Downmix`` to learn whether its channels cancel."""
        downmix = downmix or Downmix(self.channels, self.sample_rate)
        return Resampler(self.sample_rate).process(downmix.process(self.samples, last=True), last=True)


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
