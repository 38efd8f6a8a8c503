"""The shared evaluation recordings, for tests (never copied into the repo)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

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


MULTILINGUAL_MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "speech-multilingual" / "manifest.jsonl"


@cache
def multilingual() -> dict[str, dict[str, Any]]:
    """The multilingual set's manifest rows (``id``, ``audio``, ``language``, ``text``, ``text_en`` …) by id."""
    rows = [json.loads(line) for line in MULTILINGUAL_MANIFEST.read_text().splitlines() if line]
    return {row["id"]: row for row in rows}


@cache
def multilingual_audio(recording_id: str) -> np.ndarray:
    """16 kHz mono float32 of a recording of the multilingual set."""
    return read_wav(MULTILINGUAL_MANIFEST.parent / multilingual()[recording_id]["audio"]).mono_16k()
