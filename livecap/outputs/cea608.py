"""CEA-608 caption packing (pure): words into 32-column roll-up lines, paced to the channel.

Stream captions in an H.264 stream (what OBS sends with ``SendStreamCaption``)
are CEA-608: at most 32 characters a row, a small character set, and a data
channel of two bytes a video frame (about 60 bytes a second at 29.97 fps,
CEA-608 §4.2 / CEA-708 §4.3). A caption of more than 32 columns is cut or
wrapped by the encoder wherever it happens to, and captions sent faster than
the channel carries pile up in the encoder's queue and fall ever further
behind the picture. So lines are made here: words wrapped at 32 columns (a
longer word is split), the last 2 or 3 lines shown as one caption that gains a
line at a time (roll-up as the viewer sees it), each caption held for the
time its bytes take on the channel.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

COLUMNS = 32
CHANNEL_BYTES_PER_S = 59.94
"""Field 1 of line 21: two bytes per frame at 29.97 frames a second."""
CONTROL_BYTES_PER_ROW = 4
"""A preamble address code before each row, sent twice (608 doubles control codes)."""
CONTROL_BYTES_PER_CAPTION = 12
"""Resume caption loading, erase displayed memory, end of caption: each doubled."""
BASIC = set(" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz|")
"""Characters that are themselves in 608's basic set (a few codes there are accented letters instead)."""
EXTENDED = set("áéíóúçñÑ÷■®°½¿™¢£♪àèâêîôûÁÉÓÚÜüÀÂÇÈÊËëÎÏïÔÙùÛ«»¡€©℠•“”‘’")
"""Accented letters and signs 608 carries through its special and extended sets."""


def caption_safe(text: str) -> str:
    """``text`` in characters a 608 decoder shows: others lose their accents (NFKD), else become '?'."""
    out = []
    for char in " ".join(text.split()):
        if char in BASIC or char in EXTENDED:
            out.append(char)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        out.append(base if base and all(c in BASIC for c in base) else "?")
    return "".join(out)


def pieces(text: str, columns: int = COLUMNS) -> list[str]:
    """The words of ``text``, a word longer than a line split into pieces that fit."""
    return [word[i:i + columns] for word in text.split() for i in range(0, len(word), columns)]


def wrap(words: list[str], columns: int = COLUMNS) -> list[list[str]]:
    """``words`` (each at most ``columns`` long, see ``pieces``) in lines of at most ``columns``
    characters, broken between words."""
    lines: list[list[str]] = []
    for word in words:
        if lines and len(" ".join(lines[-1])) + 1 + len(word) <= columns:
            lines[-1].append(word)
        else:
            lines.append([word])
    return lines


def air_time(caption: str) -> float:
    """Seconds a caption of these rows takes on the 608 channel."""
    rows = caption.split("\n")
    return (sum(map(len, rows)) + CONTROL_BYTES_PER_ROW * len(rows) + CONTROL_BYTES_PER_CAPTION) / CHANNEL_BYTES_PER_S


@dataclass
class RowMaker:
    """The rows of 608 captions as an utterance's words come: a row once it is full, and at the
    final the last, partly filled one. Words are only ever added (finals, and the settled words of
    partials, which a later partial keeps), so a row once made is never taken back; each utterance
    starts a row of its own."""

    columns: int = COLUMNS

    def __post_init__(self) -> None:
        self._segment: int | None = None
        self._used = 0
        """Words (pieces) of the current segment already in a row."""

    def rows(self, segment: int, text: str, final: bool) -> list[str]:
        """The rows completed by the words of ``segment`` so far (``text``); with ``final``, the
        last, partly filled row too."""
        if segment != self._segment:
            self._segment, self._used = segment, 0
        lines = wrap(pieces(caption_safe(text), self.columns)[self._used:], self.columns)
        if not final:
            lines = lines[:-1]  # the last row may still grow
        self._used += sum(map(len, lines))
        return [" ".join(line) for line in lines]


def roll_up(shown: list[str], row: str, rows: int) -> list[str]:
    """The caption on screen once ``row`` is added below ``shown`` (the rows on screen, oldest
    first): the last ``rows`` of them, as roll-up captions read."""
    return [*shown, row][-rows:]
