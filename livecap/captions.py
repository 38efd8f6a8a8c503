"""Caption state of a room: recognizer results in, numbered caption events out.

Every event gets the room's next ``seq``, so viewers can order events, notice
gaps and resume after a reconnect (``after_seq``). A seq is never used twice,
not even after a ``kill -9`` (``SeqCounter``). A *segment* is one utterance
on screen: its partials replace one another, its final is immutable, and
only an operator ``correction`` (its own event with its own seq) may change
it afterwards; a correction names the version of the line the editor saw
(its seq), and one based on an older version is refused (``EditConflict``),
so two editors never silently overwrite each other. A segment cut off by a
crash ends in a final of the words viewers saw settle
(``CaptionState.recovered``). The state is pure; ``rooms`` feeds it, stores
and broadcasts what it returns.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from livecap.asr.engine import Word
from livecap.errors import EditConflict, UnknownSeq

CaptionKind = Literal["partial", "final", "correction", "translation"]
Track = Literal["original", "en"]
TRACKS: tuple[Track, ...] = ("original", "en")
"""What a viewer reads: the words as spoken (every kind but ``translation``), or English: the
events in English (the lines of English speech) and the translations of the others."""
SEQ_BLOCK = 1000
"""Seqs reserved at a time: at most this many are skipped at a restart."""
LINE_KINDS = ("final", "correction", "translation")
"""The kinds kept in the transcript store and replayed to a viewer that resumes."""
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
    language: str = "en"
    """Whisper code of the language ``text`` is in (of a translation: "en")."""
    source_language: str | None = None
    """Of a translation: the language spoken."""

    def on_track(self, track: Track) -> bool:
        """Whether the event belongs to ``track`` (``TRACKS``)."""
        return self.kind != "translation" if track == "original" else self.language == "en"

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "caption", "room": self.room, "seq": self.seq, "segment": self.segment, "kind": self.kind,
            "text": self.text, "stable": self.stable, "unstable": self.unstable,
            "start": round(self.start, 3), "end": round(self.end, 3), "engine": self.engine,
            "model_version": self.model_version, "latency_ms": round(self.latency_ms, 1), "language": self.language,
        }
        if self.source_language is not None:
            message["source_language"] = self.source_language
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

    Half a block before it reaches its ceiling, it has ``reserve`` record a
    ceiling ``block`` higher, durably (and, with ``--redis``, soon in Redis
    too, long before a seq above the old ceiling leaves); a restart or a
    take-over starts above the last ceiling recorded. Seqs sent as partials,
    which are not stored, are below it too. Gaps (at most 1.5 ``block`` per
    restart) are fine; repeats never.
    """

    def __init__(self, last: int = 0, reserve: Callable[[int], None] = lambda ceiling: None,
                 block: int = SEQ_BLOCK) -> None:
        self.last = last
        """The last seq handed out (or, at start, the highest one recorded or reserved)."""
        self.ceiling = last
        self.block = block
        self._reserve = reserve

    def next(self) -> int:
        if self.last >= self.ceiling - self.block // 2:  # half a block ahead: a copy kept elsewhere
            self.reserve_ahead()  # (Redis) has it before the ceiling is reached
        self.last += 1
        return self.last

    def reserve_ahead(self) -> int:
        """Record a ceiling a block above the last seq (or the ceiling), durable before any seq above
        the old ceiling leaves; returns it."""
        ceiling = max(self.ceiling, self.last) + self.block
        self._reserve(ceiling)
        self.ceiling = ceiling
        return ceiling

    def skip_to(self, last: int) -> None:
        """Go on after ``last``, a seq another node handed out or reserved (``CaptionState.apply``,
        a take-over); the next seq reserves a block above it."""
        if last > self.last:
            self.last = self.ceiling = last


@dataclass(frozen=True, slots=True)
class Settled:
    """What a segment without a final had settled when the server stopped:
    its stable words (room times), as checkpointed by the transcript store."""

    segment: int
    words: tuple[Word, ...]
    start: float
    end: float
    model_version: str
    language: str = "en"
    """The language the words are in (checkpoints written before it was kept: English)."""


class CaptionState:
    """Sequence numbers, segment ids and the lines (finals and corrections) of one room.

    A room may caption for days, and a line costs kilobytes in memory (its
    words), so a room with a transcript store keeps only its last
    ``kept_lines`` lines in memory. What asks about an older one (a viewer
    resuming from before them, an edit of an old line, an export) is given
    the *archived* lines, every final and correction the store holds, read by
    the caller (off the event loop); ``needs_archive`` says when. Corrections
    of lines no longer in memory go straight to the archive.
    """

    def __init__(self, room: str, history: Sequence[CaptionEvent] = (), reserved: int = 0,
                 reserve: Callable[[int], None] = lambda ceiling: None, kept_lines: int | None = None) -> None:
        """``history``: the stored finals and corrections; ``reserved``: the
        highest seq ceiling recorded; ``reserve`` records a new one (see ``SeqCounter``);
        ``kept_lines``: lines kept in memory (None: all, for a room without a store)."""
        self.room = room
        self.finals: list[CaptionEvent] = []
        """The finals in memory, in order."""
        self.corrections: list[CaptionEvent] = []
        """The corrections in memory, in order."""
        self.translations: list[CaptionEvent] = []
        """The translations in memory, in order (one per line at most)."""
        self._lines: dict[int, CaptionEvent] = {}
        """Every version in memory of a line (its final and corrections), by seq."""
        self._current: dict[int, CaptionEvent] = {}
        """The version of each line in memory shown now, by segment."""
        self._final: dict[int, CaptionEvent] = {}
        """The finals in memory, by segment."""
        self._kept_lines = kept_lines
        self.archived_seq = 0
        """The highest seq of a version no longer in memory: history after it is all in memory."""
        self.watchers: list[list[CaptionEvent]] = []
        """Lists that receive every version leaving memory: a read of the archive in flight
        keeps, this way, what leaves memory before the read is merged (``Room.archived``)."""
        self.lines_by_version: collections.Counter[str] = collections.Counter()
        """Lines with text shown, by model version (every line, not only those in memory)."""
        self.corrected_by_version: collections.Counter[str] = collections.Counter()
        """Lines corrected at least once, by model version."""
        self.corrections_made = 0
        for event in history:
            if event.kind == "final":
                self._add_final(event, trim=False)
            elif event.kind == "correction":
                self._add_correction(event)
            elif event.kind == "translation":
                self._add_translation(event)
        self._trim()
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
                engine: str, model_version: str, latency_ms: float, language: str = "en") -> CaptionEvent | None:
        """A partial, or None when it would show the same words as the last one."""
        stable_text, unstable_text = join_words(stable), join_words(unstable)
        last = self.current_partial
        if last and last.segment == segment and (last.stable, last.unstable) == (stable_text, unstable_text):
            return None
        text = " ".join(t for t in (stable_text, unstable_text) if t)
        self.current_partial = self._event(segment, "partial", text, stable_text, unstable_text, start, end,
                                           engine, model_version, latency_ms, tuple(stable), language)
        return self.current_partial

    def final(self, segment: int, words: Sequence[Word], start: float, end: float, engine: str,
              model_version: str, latency_ms: float, language: str = "en") -> CaptionEvent | None:
        """The segment's final; None for a segment that showed nothing and says nothing."""
        had_partial = self.current_partial is not None and self.current_partial.segment == segment
        if had_partial:
            self.current_partial = None
        text = join_words(words)
        if not text and not had_partial:
            return None
        event = self._event(segment, "final", text, text, "", start, end, engine, model_version, latency_ms,
                            tuple(words), language)
        self._add_final(event)
        return event

    def translation(self, final: CaptionEvent, text: str, engine: str, model_version: str,
                    latency_ms: float) -> CaptionEvent:
        """The English translation of ``final`` (a line in another language), on the ``en`` track."""
        event = replace(self._event(final.segment, "translation", text, text, "", final.start, final.end, engine,
                                    model_version, latency_ms, language="en"), source_language=final.language)
        self._add_translation(event)
        return event

    def recovered(self, settled: Settled) -> CaptionEvent:
        """The final of a segment cut off by a crash: the words viewers saw
        settle, with ``engine`` ``RECOVERED``; what was still unstable is lost."""
        self._segments = max(self._segments, settled.segment)
        text = join_words(settled.words)
        event = self._event(settled.segment, "final", text, text, "", settled.start, settled.end, RECOVERED,
                            settled.model_version, 0.0, settled.words, settled.language)
        self._add_final(event)
        return event

    def apply(self, event: CaptionEvent) -> bool:
        """An event of this room another node made (``cluster``): kept as if made here; False (and
        nothing changes) for one this state holds already."""
        if event.seq <= self.seqs.last:
            return False
        self.seqs.skip_to(event.seq)
        self._segments = max(self._segments, event.segment)
        if event.kind == "partial":
            self.current_partial = event
        elif event.kind == "final":
            if self.current_partial is not None and self.current_partial.segment == event.segment:
                self.current_partial = None
            self._add_final(event)
        elif event.kind == "correction":
            self._add_correction(event)
        elif event.kind == "translation":
            self._add_translation(event)
        return True

    def current_version(self, segment: int) -> CaptionEvent | None:
        """The version of the line shown now (its final, or its last correction), if in memory."""
        return self._current.get(segment)

    def has_final(self, segment: int) -> bool:
        """Whether the segment's final is in memory."""
        return segment in self._final

    def needs_archive(self, seq: int) -> bool:
        """Whether a question about event ``seq`` or those after it (``line``,
        ``history_after``, ``transcript`` with 0) needs lines no longer in memory."""
        version = self._lines.get(seq)
        if version is None:
            return 0 < self.archived_seq >= seq
        return seq < self.archived_seq or version.segment not in self._final

    def line(self, seq: int, archived: Sequence[CaptionEvent] = ()) -> tuple[CaptionEvent, CaptionEvent]:
        """The final and the current version of the line that event ``seq``
        (a final or a correction) showed; ``UnknownSeq`` if it showed none,
        or if it is no longer in memory and not among the ``archived`` lines."""
        version = self._lines.get(seq)
        if version is None:
            version = next((e for e in archived if e.seq == seq), None)
        if version is None or version.kind not in ("final", "correction"):
            raise UnknownSeq(f"no line of room {self.room!r} has seq {seq}")
        final = self._final.get(version.segment)
        if final is not None:
            return final, self._current[version.segment]
        older = [e for e in archived if e.segment == version.segment]  # in seq order
        final = next((e for e in older if e.kind == "final"), None)
        if final is None:
            raise UnknownSeq(f"line {version.segment} of room {self.room!r} is no longer in memory")
        return final, self._current.get(version.segment, older[-1])

    def translated(self, seq: int) -> CaptionEvent | None:
        """The translation that is event ``seq``, if it is one in memory."""
        version = self._lines.get(seq)
        return version if version is not None and version.kind == "translation" else None

    def correction(self, seq: int, text: str, archived: Sequence[CaptionEvent] = ()) -> CaptionEvent:
        """An editor's text for the line whose version ``seq`` they saw; ``EditConflict``
        if it has been corrected since (``UnknownSeq`` if there is no such line; see ``line``)."""
        _, current = self.line(seq, archived)
        if current.seq != seq:
            raise EditConflict(f"line {current.segment} was corrected since version {seq}",
                               {"seq": current.seq, "segment": current.segment, "text": current.text})
        event = replace(current, seq=self.seqs.next(), kind="correction", text=text, stable=text, unstable="",
                        latency_ms=0.0, words=())
        self._add_correction(event, current)
        return event

    def history_after(self, seq: int, archived: Sequence[CaptionEvent] = ()) -> list[CaptionEvent]:
        """Finals and corrections with a seq above ``seq``, in order: what a
        reconnecting viewer missed (partials are transient and not kept);
        ``archived`` when ``needs_archive(seq)``."""
        return [e for e in self._every_line(archived) if e.seq > seq]

    def recent(self, lines: int) -> list[CaptionEvent]:
        """The last ``lines`` finals with their corrections and translations, in seq order: what a
        viewer that did not say where it was (no ``after_seq``) is sent first."""
        finals = self.finals[-lines:]
        segments = {e.segment for e in finals}
        return sorted([*finals, *(e for e in (*self.corrections, *self.translations) if e.segment in segments)],
                      key=lambda e: e.seq)

    def transcript(self, archived: Sequence[CaptionEvent] = (), track: Track = "original") -> list[CaptionEvent]:
        """The ``track``'s lines: finals with corrections applied (their words, timed for the model's
        text, left out); on the ``en`` track a line in another language is its translation (left out
        until it has one). Empty lines (nothing heard, or emptied by an editor) left out;
        ``archived`` when ``needs_archive(0)``."""
        events = self._every_line(archived)
        corrected = {e.segment: e.text for e in events if e.kind == "correction"}  # the last one of each line
        lines = [replace(e, text=corrected[e.segment], stable=corrected[e.segment], words=())
                 if e.segment in corrected else e for e in events if e.kind == "final"]
        if track == "en":
            translated = {e.segment: e for e in events if e.kind == "translation"}
            lines = [line if line.language == "en" else translated.get(line.segment, replace(line, text=""))
                     for line in lines]
        return [line for line in lines if line.text]

    def _add_final(self, event: CaptionEvent, trim: bool = True) -> None:
        self.finals.append(event)
        self._lines[event.seq] = self._current[event.segment] = self._final[event.segment] = event
        if event.text:
            self.lines_by_version[event.model_version] += 1
        if trim:
            self._trim()

    def _add_correction(self, event: CaptionEvent, current: CaptionEvent | None = None) -> None:
        """``current``: the version it replaces (default: the one in memory). The correction
        of a line no longer in memory does not come into memory either (it is in the archive)."""
        current = current or self._current.get(event.segment)
        if current is None or current.kind == "final":
            self.corrected_by_version[event.model_version] += 1
        self.corrections_made += 1
        if self._kept_lines is not None and event.segment not in self._final:
            self._departed([event])
            return
        self.corrections.append(event)
        self._lines[event.seq] = self._current[event.segment] = event

    def _add_translation(self, event: CaptionEvent) -> None:
        """Like a correction, the translation of a line no longer in memory goes to the archive alone."""
        if self._kept_lines is not None and event.segment not in self._final:
            self._departed([event])
            return
        self.translations.append(event)
        self._lines[event.seq] = event

    def _trim(self) -> None:
        """The oldest lines beyond ``kept_lines`` leave memory (they are in the archive)."""
        if self._kept_lines is None:
            return
        while len(self.finals) > self._kept_lines:
            self._forget(self.finals.pop(0))

    def _forget(self, final: CaptionEvent) -> None:
        segment = final.segment
        versions = [final, *(e for e in (*self.corrections, *self.translations) if e.segment == segment)]
        if len(versions) > 1:
            self.corrections = [e for e in self.corrections if e.segment != segment]
            self.translations = [e for e in self.translations if e.segment != segment]
        for version in versions:
            del self._lines[version.seq]
        del self._current[segment], self._final[segment]
        self._departed(versions)

    def _departed(self, versions: Sequence[CaptionEvent]) -> None:
        self.archived_seq = max(self.archived_seq, *(v.seq for v in versions))
        for watcher in self.watchers:
            watcher.extend(versions)

    def _every_line(self, archived: Sequence[CaptionEvent]) -> list[CaptionEvent]:
        """Every final, correction and translation, from ``archived`` and memory, in seq order."""
        events = {e.seq: e for e in archived if e.kind in LINE_KINDS}
        events.update(self._lines)
        return sorted(events.values(), key=lambda e: e.seq)

    def _event(self, segment: int, kind: CaptionKind, text: str, stable: str, unstable: str, start: float,
               end: float, engine: str, model_version: str, latency_ms: float,
               words: tuple[Word, ...] = (), language: str = "en") -> CaptionEvent:
        return CaptionEvent(self.room, self.seqs.next(), segment, kind, text, stable, unstable, start, end, engine,
                            model_version, latency_ms, words, language)
