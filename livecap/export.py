"""Transcript exports: plain text, WebVTT, SubRip and JSON.

Organizers download these after (or during) a talk for the recording's
subtitles and the minutes. Only finals are exported, with operator
corrections applied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from livecap.captions import CaptionEvent

ExportFormat = Literal["txt", "vtt", "srt", "json"]
MEDIA_TYPES: dict[ExportFormat, str] = {"txt": "text/plain", "vtt": "text/vtt", "srt": "application/x-subrip",
                                        "json": "application/json"}


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def export(finals: Sequence[CaptionEvent], fmt: ExportFormat) -> str:
    if fmt == "txt":
        return "".join(f"{e.text}\n" for e in finals)
    if fmt == "json":
        return json.dumps([e.to_message() for e in finals], indent=1) + "\n"
    separator = "." if fmt == "vtt" else ","
    cues = [f"{_timestamp(e.start, separator)} --> {_timestamp(max(e.end, e.start + 0.5), separator)}\n{e.text}\n"
            for e in finals]
    if fmt == "vtt":
        return "WEBVTT\n\n" + "\n".join(cues)
    return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, 1))
