"""The shared evaluation recordings, for tests (never copied into the repo)."""

from __future__ import annotations

from functools import cache

import numpy as np

from benchmarks.scoring import Recording, load_manifest
from livecap.audio import read_wav


@cache
def recordings() -> dict[str, Recording]:
    return {r.id: r for r in load_manifest()}


@cache
def audio(recording_id: str) -> np.ndarray:
    """16 kHz mono float32 of a manifest recording."""
    return read_wav(recordings()[recording_id].audio).mono_16k()
