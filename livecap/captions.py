"""Caption state of a room: recognizer results in, numbered caption events out.

Every event gets the room's next ``seq``, so viewers can order events, notice
gaps and resume after a reconnect (``after_seq``). A seq is never used twice,
not even after a ``kill -9`` (``SeqCounter``). A *segment* is one utterance
on screen: its partials replace one another, its final is immutable, and
only an operator ``correction`` (its own event with its own seq) may change
it afterwards. A segment cut off by a crash ends in a final of the words
viewers saw settle (``CaptionState.recovered``). The state is pure;
``rooms`` feeds it, stores and broadcasts what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from livecap.asr.engine import Word

CaptionKind = Literal["partial", "final", "correction"]
SEQ_BLOCK = 1000
"""Seqs reserved at a time: at most this many are skipped at a restart."""
RECOVERED = "recovered"
"""The ``engine`` of a final made at start-up from a crashed segment's settled words."""


@dataclass(frozen=True, slots=True)
class CaptionEvent:
    room: str
    seq: int
    segment: int
    kind: CaptionKind
    text: str
    stable: str
    """Settled words: a later partial of the segment starts with them."""
    unstable: str
    """Words that may still change."""
    start: float
    """Seconds since the room's first audio."""
    end: float
    engine: str
    model_version: str
    latency_ms: float
    """Time from the newest audio covered by the event reaching the server to
    the event being created (for finals: from the last voiced frame)."""
    words: tuple[Word, ...] = ()
    """Word timings (room seconds) and confidences: all words of a final; of a
    partial its stable words, kept for the crash checkpoint and not sent."""

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "caption", "room": self.room, "seq": self.seq, "segment": self.segment, "kind": self.kind,
            "text": self.text, "stable": self.stable, "unstable": self.unstable,
            "start": round(self.start, 3), "end": round(self.end, 3), "engine": self.engine,
            "model_version": self.model_version, "latency_ms": round(self.latency_ms, 1),
        }
        if self.kind == "final":
            message["words"] = [{"w": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                                 "conf": round(w.confidence, 3)} for w in self.words]
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> CaptionEvent:
        words = tuple(Word(w["w"], w["start"], w["end"], w["conf"]) for w in message.get("words", ()))
        fields = {k: message[k] for k in cls.__dataclass_fields__ if k in message and k != "words"}
        return cls(**fields, words=words)


def join_words(words: Iterable[Word]) -> str:
    return " ".join(w.text for w in words)


class SeqCounter:
    """A room's ``seq``, never repeated, even across a ``kill -9``.

    Before it hands out a seq above its ceiling, it has ``reserve`` record a
    ceiling ``block`` higher, durably; a restart starts above the last
    ceiling recorded. Seqs sent as partials, which are not stored, are below
    it too. Gaps (at most ``block`` per restart) are fine; repeats never.
    """

    def __init__(self, last: int = 0, reserve: Callable[[int], None] = lambda ceiling: None,
                 block: int = SEQ_BLOCK) -> None:
        self.last = last
        """The last seq handed out (or, at start, the highest one recorded or reserved)."""
        self.ceiling = last
        self.block = block
        self._reserve = reserve

    def next(self) -> int:
        if self.last >= self.ceiling:
            ceiling = self.last + self.block
            self._reserve(ceiling)  # durable before any seq above the old ceiling leaves
            self.ceiling = ceiling
        self.last += 1
        return self.last


@dataclass(frozen=True, slots=True)
class Settled:
    """What a segment without a final had settled when the server stopped:
    its stable words (room times), as checkpointed by the transcript store."""

    segment: int
    words: tuple[Word, ...]
    start: float
    end: float
    model_version: str


class CaptionState:
    """Sequence numbers, segment ids and the finals of one room."""

    def __init__(self, room: str, history: Sequence[CaptionEvent] = (), reserved: int = 0,
                 reserve: Callable[[int], None] = lambda ceiling: None) -> None:
        """``history``: the stored finals and corrections; ``reserved``: the
        highest seq ceiling recorded; ``reserve`` records a new one (see ``SeqCounter``)."""
        self.room = room
        self.finals: list[CaptionEvent] = [e for e in history if e.kind == "final"]
        self.corrections: list[CaptionEvent] = [e for e in history if e.kind == "correction"]
        self.seqs = SeqCounter(max(reserved, *(e.seq for e in history), 0), reserve)
        self._segments = max((e.segment for e in history), default=-1)
        self.current_partial: CaptionEvent | None = None

    @property
    def seq(self) -> int:
        """The last seq handed out."""
        return self.seqs.last

    def new_segment(self) -> int:
        self._segments += 1
        return self._segments

    def partial(self, segment: int, stable: Sequence[Word], unstable: Sequence[Word], start: float, end: float,
                engine: str, model_version: str, latency_ms: float) -> CaptionEvent | None:
        """A partial, or None when it would show the same words as the last one."""
        stable_text, unstable_text = join_words(stable), join_words(unstable)
        last = self.current_partial
        if last and last.segment == segment and (last.stable, last.unstable) == (stable_text, unstable_text):
            return None
        text = " ".join(t for t in (stable_text, unstable_text) if t)
        self.current_partial = self._event(segment, "partial", text, stable_text, unstable_text, start, end,
                                           engine, model_version, latency_ms, tuple(stable))
        return self.current_partial

    def final(self, segment: int, words: Sequence[Word], start: float, end: float, engine: str,
              model_version: str, latency_ms: float) -> CaptionEvent | None:
        """The segment's final; None for a segment that showed nothing and says nothing."""
        had_partial = self.current_partial is not None and self.current_partial.segment == segment
        if had_partial:
            self.current_partial = None
        text = join_words(words)
        if not text and not had_partial:
            return None
        event = self._event(segment, "final", text, text, "", start, end, engine, model_version, latency_ms,
                            tuple(words))
        self.finals.append(event)
        return event

    def recovered(self, settled: Settled) -> CaptionEvent:
        """The final of a segment cut off by a crash: the words viewers saw
        settle, with ``engine`` ``RECOVERED``; what was still unstable is lost."""
        self._segments = max(self._segments, settled.segment)
        text = join_words(settled.words)
        event = self._event(settled.segment, "final", text, text, "", settled.start, settled.end, RECOVERED,
                            settled.model_version, 0.0, settled.words)
        self.finals.append(event)
        return event

    def correction(self, segment: int, text: str) -> CaptionEvent:
        """An operator's replacement text for a final (raises KeyError if none)."""
        final = next(e for e in reversed(self.finals) if e.segment == segment)
        event = replace(final, seq=self.seqs.next(), kind="correction", text=text, stable=text, unstable="",
                        words=(), latency_ms=0.0)
        self.corrections.append(event)
        return event

    def history_after(self, seq: int) -> list[CaptionEvent]:
        """Finals and corrections with a seq above ``seq``, in order: what a
        reconnecting viewer missed (partials are transient and not kept)."""
        kept = [e for e in self.finals if e.seq > seq] + [e for e in self.corrections if e.seq > seq]
        return sorted(kept, key=lambda e: e.seq)

    def transcript(self) -> list[CaptionEvent]:
        """Finals with corrections applied and empty ones left out."""
        corrected = {e.segment: e for e in self.corrections}
        return [replace(f, text=corrected[f.segment].text) if f.segment in corrected else f
                for f in self.finals if f.text or f.segment in corrected]

    def _event(self, segment: int, kind: CaptionKind, text: str, stable: str, unstable: str, start: float,
               end: float, engine: str, model_version: str, latency_ms: float,
               words: tuple[Word, ...] = ()) -> CaptionEvent:
        return CaptionEvent(self.room, self.seqs.next(), segment, kind, text, stable, unstable, start, end, engine,
                            model_version, latency_ms, words)
