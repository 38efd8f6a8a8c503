"""Caption state, viewer queues and exports (pure, no I/O)."""

from __future__ import annotations

import pytest

from livecap.asr.engine import Word
from livecap.captions import CaptionEvent, CaptionState
from livecap.errors import EditConflict, UnknownSeq, ViewerTooSlow
from livecap.export import export
from livecap.fanout import Outgoing, ViewerQueue


def w(text: str, start: float = 0.0, end: float = 0.0) -> tuple[Word, ...]:
    return tuple(Word(t, start, end) for t in text.split())


def test_seq_increases_and_partials_repeat_nothing() -> None:
    state = CaptionState("r")
    segment = state.new_segment()
    first = state.partial(segment, w("hello"), w("wor"), 0, 1, "e", "v", 10)
    assert first is not None and first.seq == 1 and first.text == "hello wor"
    assert state.partial(segment, w("hello"), w("wor"), 0, 1, "e", "v", 10) is None
    final = state.final(segment, w("hello world", 0.1, 0.9), 0, 1.2, "e", "v", 300)
    assert final is not None and final.seq == 2 and final.kind == "final" and state.current_partial is None
    assert state.final(state.new_segment(), (), 2, 3, "e", "v", 0) is None, "nothing shown, nothing said: no event"


def test_an_empty_final_clears_a_shown_partial() -> None:
    state = CaptionState("r")
    segment = state.new_segment()
    state.partial(segment, (), w("thank"), 0, 1, "e", "v", 0)
    final = state.final(segment, (), 0, 1, "e", "v", 0)
    assert final is not None and final.text == "" and state.transcript() == []


def test_history_and_corrections() -> None:
    state = CaptionState("r")
    for i in range(3):
        state.final(state.new_segment(), w(f"line {i}"), i, i + 1, "e", "v", 0)
    correction = state.correction(2, "line one")
    assert [e.seq for e in state.history_after(1)] == [2, 3, 4]
    assert [e.text for e in state.transcript()] == ["line 0", "line one", "line 2"]
    restored = CaptionState("r", [CaptionEvent.from_message(e.to_message()) for e in state.history_after(0)])
    assert restored.seq == correction.seq and restored.new_segment() == 3
    assert [e.text for e in restored.transcript()] == ["line 0", "line one", "line 2"]


def test_viewer_queue_coalesces_partials_and_keeps_finals() -> None:
    state, queue = CaptionState("r"), ViewerQueue(max_backlog=3)
    segment = state.new_segment()
    for text in ("a", "a b", "a b c"):
        event = state.partial(segment, (), w(text), 0, 1, "e", "v", 0)
        assert event is not None
        queue.push(Outgoing.of(event, 0.0))
    assert len(queue) == 1 and queue.coalesced == 2
    final = state.final(segment, w("a b c"), 0, 1, "e", "v", 0)
    assert final is not None
    queue.push(Outgoing.of(final, 0.0))
    taken = queue.take()
    assert taken is not None and taken.event.kind == "final" and queue.take() is None, \
        "a final replaces its segment's queued partial"
    for i in range(3):
        event = state.final(state.new_segment(), w(str(i)), 0, 1, "e", "v", 0)
        assert event is not None
        queue.push(Outgoing.of(event, 0.0))
    extra = state.final(state.new_segment(), w("x"), 0, 1, "e", "v", 0)
    assert extra is not None
    with pytest.raises(ViewerTooSlow):
        queue.push(Outgoing.of(extra, 0.0))
    assert len(queue) == 3, "finals already queued are kept for the writer"


def test_exports() -> None:
    state = CaptionState("r")
    state.final(state.new_segment(), w("Hello there."), 1.5, 3.25, "e", "v", 0)
    state.final(state.new_segment(), w("Second line"), 3661.0, 3662.0, "e", "v", 0)
    finals = state.transcript()
    assert export(finals, "txt") == "Hello there.\nSecond line\n"
    assert export(finals, "vtt").startswith("WEBVTT\n\n00:00:01.500 --> 00:00:03.250\nHello there.\n")
    assert "2\n01:01:01,000 --> 01:01:02,000\nSecond line\n" in export(finals, "srt")
    assert '"text": "Second line"' in export(finals, "json")


def test_a_correction_names_the_version_it_corrects() -> None:
    """Two editors saw the same final: the first correction wins, the second
    is refused with the line as it is now; corrections of corrections chain."""
    state = CaptionState("r")
    final = state.final(state.new_segment(), w("the jason format"), 0, 1, "e", "v", 0)
    assert final is not None
    first = state.correction(final.seq, "the JSON format")
    with pytest.raises(EditConflict) as conflict:
        state.correction(final.seq, "the Jason format")
    assert conflict.value.current == {"seq": first.seq, "segment": final.segment, "text": "the JSON format"}
    second = state.correction(first.seq, "the JSON format.")
    assert state.line(final.seq) == (final, second) and state.line(second.seq)[1] == second
    assert (second.engine, second.model_version, second.words) == ("e", "v", ())
    with pytest.raises(UnknownSeq):
        state.correction(999, "no such line")
    partial = state.partial(state.new_segment(), (), w("not yet"), 1, 2, "e", "v", 0)
    assert partial is not None
    with pytest.raises(UnknownSeq):
        state.line(partial.seq)
    restored = CaptionState("r", [CaptionEvent.from_message(e.to_message()) for e in state.history_after(0)])
    assert restored.line(final.seq)[1].text == "the JSON format." and restored.line(first.seq)[1].seq == second.seq


def test_the_transcript_shows_corrected_lines_without_the_models_words() -> None:
    state = CaptionState("r")
    kept = state.final(state.new_segment(), w("the jason format"), 0, 1, "e", "v", 0)
    noise = state.final(state.new_segment(), w("thank you"), 1, 2, "e", "v", 0)
    assert kept is not None and noise is not None
    state.correction(kept.seq, "the JSON format")
    state.correction(noise.seq, "")
    [line] = state.transcript()
    assert (line.text, line.stable, line.words, line.seq) == ("the JSON format", "the JSON format", (), kept.seq)
    assert "jason" not in export(state.transcript(), "json"), \
        "an emptied line is gone, a corrected one has no stale words"


def test_a_new_viewer_gets_the_recent_lines_as_corrected() -> None:
    state = CaptionState("r")
    finals = [e for i in range(4) if (e := state.final(state.new_segment(), w(f"line {i}"), i, i + 1, "e", "v", 0))]
    old = state.correction(finals[0].seq, "line zero")  # out of the window
    new = state.correction(finals[3].seq, "line three")
    assert state.recent(2) == [finals[2], finals[3], new] and old not in state.recent(2)


class Archived:
    """A room's caption state keeping ``kept`` lines in memory, every final and
    correction stored as it is made (as ``Room.publish`` does)."""

    def __init__(self, kept: int, history: list[CaptionEvent] | None = None) -> None:
        self.stored = list(history or [])
        self.state = CaptionState("r", self.stored, kept_lines=kept)

    def final(self, text: str) -> CaptionEvent:
        event = self.state.final(self.state.new_segment(), w(text), 0, 1, "e", "v1", 0)
        assert event is not None
        self.stored.append(event)
        return event

    def correction(self, seq: int, text: str) -> CaptionEvent:
        event = self.state.correction(seq, text, self.stored)
        self.stored.append(event)
        return event


def test_only_the_recent_lines_stay_in_memory_and_older_ones_come_from_the_archive() -> None:
    room = Archived(kept=3)
    finals = [room.final(f"line {i}") for i in range(10)]
    state, archived = room.state, room.stored
    assert state.finals == finals[-3:], "memory holds the last three lines"
    assert not state.needs_archive(finals[7].seq) and state.history_after(finals[7].seq) == finals[8:]
    assert state.needs_archive(0) and state.history_after(0, archived) == finals, \
        "a viewer resuming from long ago misses nothing"
    assert state.recent(2) == finals[-2:]
    with pytest.raises(UnknownSeq):
        state.line(finals[1].seq)  # without the archive: viewers' flags never read the file
    old = room.correction(finals[1].seq, "line one")
    assert state.needs_archive(old.seq) and state.line(old.seq, room.stored) == (finals[1], old)
    with pytest.raises(UnknownSeq):
        state.line(old.seq)
    with pytest.raises(EditConflict):
        state.correction(finals[1].seq, "an editor who saw the old version", room.stored)
    assert state.needs_archive(finals[9].seq) and state.history_after(finals[9].seq, room.stored) == [old], \
        "a correction of an old line goes to the archive, and reaches viewers who resume"
    assert len(state.corrections) == 0 and len(state.finals) == 3, "memory holds the last three lines only"
    assert [e.text for e in state.transcript(room.stored)] == \
        ["line 0", "line one", *(f"line {i}" for i in range(2, 10))]
    assert state.lines_by_version == {"v1": 10} and state.corrected_by_version == {"v1": 1}
    assert state.corrections_made == 1


def test_a_restored_room_keeps_the_recent_lines_and_counts_every_line() -> None:
    room = Archived(kept=100)
    finals = [room.final(f"line {i}") for i in range(6)]
    first = room.correction(finals[0].seq, "line zero")
    room.correction(first.seq, "line 0")
    room.correction(finals[4].seq, "line four")
    restored = Archived(kept=3, history=room.stored)
    state = restored.state
    assert state.finals == finals[-3:] and len(state.corrections) == 1, "the corrections of old lines left too"
    assert state.corrected_by_version == {"v1": 2} and state.corrections_made == 3
    assert state.lines_by_version == {"v1": 6}
    assert [e.text for e in state.transcript(room.stored)] == \
        ["line 0", "line 1", "line 2", "line 3", "line four", "line 5"]
    assert state.line(first.seq, room.stored)[1].text == "line 0", \
        "the current version of an old line is its last correction"
    assert state.history_after(0, room.stored) == room.stored


def test_without_a_store_every_line_stays_in_memory() -> None:
    state = CaptionState("r")
    for i in range(300):
        state.final(state.new_segment(), w(f"line {i}"), i, i + 1, "e", "v", 0)
    assert len(state.finals) == 300 and not state.needs_archive(0)
