"""Caption state of a room: recognizer results in, numbered caption events out.

Every event gets the room's next ``seq``, so viewers can order events, notice
gaps and resume after a reconnect (``after_seq``). A *segment* is one
utterance on screen: its partials replace one another, its final is
immutable, and only an operator ``correction`` (its own event with its own
seq) may change it afterwards. The state is pure; ``rooms`` feeds it and
broadcasts what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from livecap.asr.engine import Word

CaptionKind = Literal["partial", "final", "correction"]


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
    """Word timings (room seconds) and confidences; finals only."""

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


class CaptionState:
    """Sequence numbers, segment ids and the finals of one room."""

    def __init__(self, room: str, history: Sequence[CaptionEvent] = ()) -> None:
        self.room = room
        self.finals: list[CaptionEvent] = [e for e in history if e.kind == "final"]
        self.corrections: list[CaptionEvent] = [e for e in history if e.kind == "correction"]
        self.seq = max((e.seq for e in history), default=0)
        self._segments = max((e.segment for e in history), default=-1)
        self.current_partial: CaptionEvent | None = None

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
                                           engine, model_version, latency_ms)
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

    def correction(self, segment: int, text: str) -> CaptionEvent:
        """An operator's replacement text for a final (raises KeyError if none)."""
        final = next(e for e in reversed(self.finals) if e.segment == segment)
        event = replace(final, seq=self._next_seq(), kind="correction", text=text, stable=text, unstable="",
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

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _event(self, segment: int, kind: CaptionKind, text: str, stable: str, unstable: str, start: float,
               end: float, engine: str, model_version: str, latency_ms: float,
               words: tuple[Word, ...] = ()) -> CaptionEvent:
        return CaptionEvent(self.room, self._next_seq(), segment, kind, text, stable, unstable, start, end, engine,
                            model_version, latency_ms, words)
