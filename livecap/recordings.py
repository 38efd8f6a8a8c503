"""Audio recordings of rooms that an operator switched recording on for.

Privacy by default: nothing of a room's audio touches the disk unless its
``recording`` setting is on (``livecap.settings``). Then the audio of each
utterance that became a caption is kept as a 16 kHz mono WAV,
``DATA_DIR/recordings/ROOM/SEGMENT.wav``, so that a line an editor corrects
is a training example (its label names the file); files older than the
retention (``--recording-retention-days``) are deleted by a sweep at start
and every hour, and ``livecap recordings delete --room R`` deletes a room's
at once.
"""

from __future__ import annotations

import shutil
import time
import wave
from pathlib import Path

import numpy as np

from livecap.asr.engine import SAMPLE_RATE
from livecap.audio import float_to_s16le

SWEEP_INTERVAL_S = 3600.0


class RecordingStore:
    def __init__(self, directory: Path, retention_days: float) -> None:
        self.directory = directory
        self.retention_s = retention_days * 86400

    def path(self, room: str, segment: int) -> Path:
        return self.directory / room / f"{segment:06d}.wav"

    def save(self, room: str, segment: int, audio: np.ndarray) -> Path:
        """Write one utterance (16 kHz float32 samples). Blocking: run it off the event loop."""
        path = self.path(room, segment)
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as file:
            file.setnchannels(1)
            file.setsampwidth(2)
            file.setframerate(SAMPLE_RATE)
            file.writeframes(float_to_s16le(audio))
        return path

    def delete(self, room: str) -> int:
        """Delete the room's recordings now; how many files there were."""
        folder = self.directory / room
        count = len(list(folder.glob("*.wav"))) if folder.is_dir() else 0
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def sweep(self, now: float | None = None) -> int:
        """Delete the recordings older than the retention; how many."""
        limit = (time.time() if now is None else now) - self.retention_s
        deleted = 0
        for path in self.directory.glob("*/*.wav"):
            if path.stat().st_mtime < limit:
                path.unlink(missing_ok=True)
                deleted += 1
        return deleted
