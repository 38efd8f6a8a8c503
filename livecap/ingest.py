"""The publisher's side of the wire protocol, without any I/O.

``IngestProtocol`` turns the frames a publisher sends into events: text frames
are JSON control messages (``start``, ``stop``), binary frames are PCM audio
in the declared format. It validates everything, converts audio to 16 kHz
mono float32 (two channels that cancel are mixed so the speech survives, and
the publisher is warned), stamps each chunk with its arrival time and enforces the
size and rate limits. Violations raise a ``LivecapError`` that the server
reports and closes with; the class never touches a socket, so tests feed it
frames directly (see websockets' ``protocol.py`` for the pattern).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast, get_args

import numpy as np

from livecap.audio import BYTES_PER_SAMPLE, Downmix, Resampler, SampleFormat, decode_pcm
from livecap.errors import (
    InvalidFrame,
    MessageTooBig,
    ProtocolError,
    RateLimited,
    UnsupportedFormat,
    json_object,
    shown,
)
from livecap.language import TRANSLATION_TARGETS, WHISPER_LANGUAGES, supported

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 48_000


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """Per-connection limits; defaults suit a browser or OBS sending live audio."""

    max_message_bytes: int = 512 * 1024
    """Largest accepted frame, text or binary (1 s of 48 kHz stereo s16le is 192 KiB)."""
    max_audio_rate: float = 2.0
    """Sustained audio seconds per wall-clock second; live audio is 1.0."""
    rate_burst_seconds: float = 10.0
    """Audio a publisher may send ahead of the sustained rate (reconnect backlog)."""


@dataclass(frozen=True, slots=True)
class Resend:
    """``start``'s ``resend``: the audio that follows is sent again from ``from_ms`` of the audio of
    publisher session ``session`` (its last ``ack``), whose connection was lost."""

    session: str
    from_ms: int


@dataclass(frozen=True, slots=True)
class StreamFormat:
    sample_format: SampleFormat
    sample_rate: int
    channels: int
    language: str | None
    """A Whisper language code or ``auto``; None: the room's setting."""
    translate: str | None = None
    """``en``: an English translation track; None: the room's setting."""
    candidates: tuple[str, ...] | None = None
    """The languages an ``auto`` stream may be in; None: the room's setting."""
    resend: Resend | None = None
    """The client lost its connection and sends again the audio the server had not acknowledged."""


@dataclass(frozen=True, slots=True)
class Started:
    format: StreamFormat


@dataclass(frozen=True, slots=True)
class AudioReceived:
    samples: np.ndarray
    """16 kHz mono float32."""
    arrival: float
    """Monotonic clock reading when the frame arrived."""


@dataclass(frozen=True, slots=True)
class Stopped:
    pass


@dataclass(frozen=True, slots=True)
class PublisherWarning:
    """Something is wrong with the audio, but captions go on: the publisher is
    told once with a ``warning`` event, and no close follows."""

    code: str
    message: str

    def to_event(self) -> dict[str, str]:
        return {"type": "warning", "code": self.code, "message": self.message}


CHANNELS_CANCEL = PublisherWarning(
    "channels_cancel", "the left and right channels cancel each other out when mixed: one is polarity-inverted, "
    "usually a wiring fault. The right channel is inverted back so that the speech survives; fix the wiring or "
    "send one channel")

IngestEvent = Started | AudioReceived | Stopped | PublisherWarning


class IngestProtocol:
    """State machine of one publisher connection: idle → streaming → idle."""

    def __init__(self, limits: IngestLimits = IngestLimits()) -> None:
        self.limits = limits
        self.format: StreamFormat | None = None
        self._downmix: Downmix | None = None
        self._resampler: Resampler | None = None
        self._rate_tokens = limits.rate_burst_seconds
        self._rate_checked_at: float | None = None

    @property
    def streaming(self) -> bool:
        return self.format is not None

    def receive_text(self, text: str, now: float) -> list[IngestEvent]:
        self._check_size(len(text.encode()))
        message = json_object(text)
        kind = message.get("type")
        if kind == "start":
            return self._start(message)
        if kind == "stop":
            return self._stop(now)
        raise ProtocolError(f"unknown message type {shown(kind)}; expected 'start' or 'stop'")

    def receive_bytes(self, data: bytes, now: float) -> list[IngestEvent]:
        self._check_size(len(data))
        if self.format is None or self._downmix is None or self._resampler is None:
            raise ProtocolError("audio before 'start'")
        frame_bytes = BYTES_PER_SAMPLE[self.format.sample_format] * self.format.channels
        if len(data) % frame_bytes:
            raise InvalidFrame(f"binary frames must hold whole {self.format.sample_format} samples for "
                               f"{self.format.channels} channel(s): {len(data)} is not a multiple of {frame_bytes}")
        if not data:
            return []
        self._spend_rate(len(data) / frame_bytes / self.format.sample_rate, now)
        cancelled = self._downmix.cancelled
        mono = self._downmix.process(decode_pcm(data, self.format.sample_format, self.format.channels))
        events: list[IngestEvent] = [AudioReceived(self._resampler.process(mono), now)]
        return [*events, CHANNELS_CANCEL] if self._downmix.cancelled and not cancelled else events

    def _start(self, message: dict[str, Any]) -> list[IngestEvent]:
        if self.format is not None:
            raise ProtocolError("'start' while already streaming; send 'stop' first")
        sample_format = message.get("format", "s16le")
        sample_rate = message.get("sample_rate", 16_000)
        channels = message.get("channels", 1)
        language = message.get("language")
        translate = message.get("translate")
        candidates = message.get("candidates")
        resend = message.get("resend")
        if not isinstance(sample_format, str) or sample_format not in get_args(SampleFormat):
            raise UnsupportedFormat(f"format must be one of {', '.join(get_args(SampleFormat))}")
        if type(sample_rate) is not int or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise UnsupportedFormat(f"sample_rate must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}")
        if channels not in (1, 2) or type(channels) is not int:
            raise UnsupportedFormat("channels must be 1 or 2")
        if language is not None and not (isinstance(language, str) and supported(language)):
            raise UnsupportedFormat("language must be 'auto' or a Whisper language code: "
                                    + ", ".join(WHISPER_LANGUAGES))
        if translate is not None and translate not in TRANSLATION_TARGETS:
            raise UnsupportedFormat(f"translate must be null or one of {', '.join(TRANSLATION_TARGETS)}")
        if candidates is not None and not (isinstance(candidates, list) and all(
                isinstance(c, str) and c in WHISPER_LANGUAGES for c in candidates)):
            raise UnsupportedFormat("candidates must be a list of Whisper language codes: "
                                    + ", ".join(WHISPER_LANGUAGES))
        self.format = StreamFormat(cast(SampleFormat, sample_format), sample_rate, channels, language, translate,
                                   tuple(dict.fromkeys(candidates)) if candidates is not None else None,
                                   _resend(resend))
        self._downmix = Downmix(channels, sample_rate)
        self._resampler = Resampler(sample_rate)
        return [Started(self.format)]

    def _stop(self, now: float) -> list[IngestEvent]:
        if self.format is None or self._downmix is None or self._resampler is None:
            raise ProtocolError("'stop' without 'start'")
        held = self._downmix.process(np.zeros((0, self.format.channels), dtype=np.float32), last=True)
        tail = self._resampler.process(held, last=True)
        self.format, self._downmix, self._resampler = None, None, None
        events: list[IngestEvent] = [AudioReceived(tail, now)] if len(tail) else []
        return [*events, Stopped()]

    def _check_size(self, size: int) -> None:
        if size > self.limits.max_message_bytes:
            raise MessageTooBig(f"frame of {size} bytes exceeds the limit of {self.limits.max_message_bytes}")

    def _spend_rate(self, seconds: float, now: float) -> None:
        """Token bucket in audio seconds, refilled at ``max_audio_rate`` per second."""
        if self._rate_checked_at is not None:
            refill = (now - self._rate_checked_at) * self.limits.max_audio_rate
            self._rate_tokens = min(self.limits.rate_burst_seconds, self._rate_tokens + refill)
        self._rate_checked_at = now
        self._rate_tokens -= seconds
        if self._rate_tokens < 0:
            raise RateLimited(f"audio arrives faster than {self.limits.max_audio_rate:g}× real time")


def _resend(value: object) -> Resend | None:
    """``start``'s ``resend``: absent/null, or ``{"session": "<id of an ack>", "from_ms": N}``."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"session", "from_ms"} or not isinstance(value["session"], str) \
            or len(value["session"]) > 64 or type(value["from_ms"]) is not int or value["from_ms"] < 0:
        raise ProtocolError('resend must be null or {"session": "<the session of the last ack>", "from_ms": N}')
    return Resend(value["session"], value["from_ms"])
