"""The pure latency bookkeeping (livecap.latency), the viewer inbox and the
room label bound: no sockets, exact times."""

from __future__ import annotations

import numpy as np
import pytest

from livecap.asr.engine import Word
from livecap.captions import CaptionState
from livecap.errors import InvalidJson, ProtocolError, RateLimited
from livecap.fanout import Broadcaster, Subscriber, ViewerAck, ViewerInbox
from livecap.latency import ArrivalClock, LatencyWindow, RoomLatency, WordLagTracker, percentile
from livecap.metrics import MAX_ROOM_LABELS, Metrics


def split(text: str) -> list[str]:
    return text.split()


def words(text: str, start: float = 0.0, step: float = 0.5) -> tuple[Word, ...]:
    return tuple(Word(w, start + i * step, start + (i + 1) * step) for i, w in enumerate(text.split()))


def test_arrival_clock_maps_room_time_to_the_chunk_that_brought_it() -> None:
    clock = ArrivalClock(keep_s=10.0)
    for i in range(50):  # 20 ms chunks of room time 0-1 s arriving at 100.0, 100.02, …
        clock.record(i * 0.02, (i + 1) * 0.02, 100.0 + i * 0.02)
    assert clock.arrival(0.0) == 100.0
    assert clock.arrival(0.03) == pytest.approx(100.02), "inside the second chunk"
    assert clock.arrival(0.04) == pytest.approx(100.02), "a chunk's end arrives with it"
    assert clock.arrival(1.2) == pytest.approx(100.98), "just past the newest chunk: the newest"
    assert clock.arrival(5.0) is None, "audio that never came"
    assert clock.arrival(-1.0) is None
    # Old chunks are forgotten, lookups stay right.
    for i in range(50, 2000):
        clock.record(i * 0.02, (i + 1) * 0.02, 100.0 + i * 0.02)
    assert len(clock) < 1200
    assert clock.arrival(0.5) is None
    assert clock.arrival(39.0) == pytest.approx(100.0 + 1949 * 0.02)


def test_word_lag_counts_each_word_from_its_first_showing_at_its_position() -> None:
    tracker = WordLagTracker()
    tracker.shown(0, split("the cat"), 1.0)
    tracker.shown(0, split("the cat sad"), 2.0)
    tracker.shown(0, split("the hat sat"), 3.0)  # "cat" changed, then came back below
    tracker.shown(1, split("other segment"), 3.5)
    tracker.shown(0, split("The cat, sat"), 4.0)
    assert tracker.final(0, ["the", "cat", "sat", "down."], 5.0) == [1.0, 1.0, 3.0, 5.0]
    assert tracker.final(0, ["the"], 6.0) == [6.0], "a segment's record goes with its final"
    assert tracker.final(1, ["segment", "other"], 7.0) == [7.0, 7.0], "position matters"


def test_word_lag_tracker_is_bounded() -> None:
    tracker = WordLagTracker(max_segments=2, max_entries=3)
    for segment in range(3):
        tracker.shown(segment, split("a b c d e"), float(segment))
    assert tracker.final(0, ["a"], 9.0) == [9.0], "the oldest open segment was dropped"
    assert tracker.final(2, split("a b c d"), 9.0) == [2.0, 2.0, 2.0, 9.0]


def test_percentile_matches_numpy() -> None:
    values = list(np.random.default_rng(1).exponential(1.0, 101))
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None


def test_latency_window_keeps_the_last_minute() -> None:
    window = LatencyWindow(span_s=60, bin_s=1, smooth_s=5)
    for t in range(100):
        window.add(float(t), 1000.0 + t)
    summary = window.summary(1099.5)
    assert summary.count == 60 and summary.p50 == pytest.approx(69.5) and summary.p95 == pytest.approx(96.05)
    series = window.series(1099.5)
    assert len(series) == 60 and series[-1][0] == 1100.0
    assert series[-1][1] == pytest.approx(97.0), "each point: median of the trailing 5 s"
    assert window.summary(1200.0).count == 0
    assert all(p50 is None for _, p50, _ in window.series(1200.0))


def test_latency_window_samples_a_flood_within_bounds() -> None:
    window = LatencyWindow(max_per_bin=256)
    rng = np.random.default_rng(2)
    values = rng.uniform(0, 1, 20000)
    for value in values:
        window.add(float(value), 5.5)
    summary = window.summary(5.5)
    assert summary.count == 20000
    assert summary.p50 == pytest.approx(0.5, abs=0.08) and summary.p95 == pytest.approx(0.95, abs=0.04)
    assert sum(len(b.values) for b in window._bins) == 256


def test_room_latency_from_audio_to_final_and_ack() -> None:
    state, latency = CaptionState("r"), RoomLatency()
    for i in range(200):  # 4 s of audio in 20 ms chunks, arriving in real time from t=10
        latency.audio(i * 0.02, (i + 1) * 0.02, 10.0 + (i + 1) * 0.02)
    segment = state.new_segment()
    final_words = words("one two three", start=1.0)  # ends at 1.5, 2.0, 2.5 s of room time
    partial = state.partial(segment, final_words[:1], final_words[1:2], 1.0, 2.0, "e", "v", 100.0)
    assert partial is not None
    assert latency.published(partial, 12.3).word_lags == ()
    final = state.final(segment, final_words, 1.0, 3.2, "e", "v", 700.0)
    assert final is not None
    published = latency.published(final, 13.0)
    assert published.word_lags == pytest.approx((12.3 - 11.5, 12.3 - 12.0, 13.0 - 12.5))
    assert published.final_lag == pytest.approx(0.7)
    assert latency.windows["word_lag"].summary(13.0).count == 3
    # A viewer rendered the final 50 ms before its ack arrived at 13.3: 13.25 - (13.0 - 0.7).
    assert latency.acknowledged(final.seq, 13.3, age_s=0.05) == pytest.approx(0.95)
    assert latency.acknowledged(999, 13.3) is None, "unknown seq"
    assert latency.acknowledged(final.seq, 13.3, age_s=5.0) is None, "rendered before the audio came"
    assert latency.windows["speech_to_screen"].summary(13.3).count == 1
    correction = state.correction(final.seq, "one two free")
    latency.published(correction, 14.0)
    assert latency.acknowledged(correction.seq, 14.2) is None, "a correction covers no speech"
    assert latency.engine_share(13.5) == {"e": 1}
    assert latency.engine_share(100.0) == {}


def test_a_word_shown_before_its_audio_ended_counts_as_zero() -> None:
    state, latency = CaptionState("r"), RoomLatency()
    latency.audio(0.0, 2.0, 10.0)
    latency.audio(2.0, 4.0, 12.0)
    segment = state.new_segment()
    partial = state.partial(segment, (), words("guess", start=1.0, step=2.0), 0.0, 2.0, "e", "v", 0.0)
    assert partial is not None
    latency.published(partial, 10.5)  # the word's audio ends at 3.0 s, which arrived at 12.0
    final = state.final(segment, words("guess", start=1.0, step=2.0), 0.0, 4.0, "e", "v", 0.0)
    assert final is not None
    assert latency.published(final, 12.5).word_lags == (0.0,)


def test_viewer_inbox_accepts_only_well_formed_acks() -> None:
    inbox = ViewerInbox(live_from=10)
    assert inbox.receive_text('{"type": "ack", "seq": 12, "age_ms": 40}', 0.0, sent_seq=15) == ViewerAck(12, 0.04)
    assert inbox.receive_text('{"type": "ack", "seq": 12}', 0.1, sent_seq=15) is None, "a repeat measures nothing"
    assert inbox.receive_text('{"type": "ack", "seq": 11}', 0.2, sent_seq=15) is None, "older"
    assert inbox.receive_text('{"type": "ack", "seq": 16}', 0.3, sent_seq=15) is None, "never sent"
    assert inbox.receive_text('{"type": "ack", "seq": 15}', 0.4, sent_seq=15) == ViewerAck(15, 0.0)
    assert ViewerInbox(live_from=10).receive_text('{"type": "ack", "seq": 9}', 0, 15) is None, "replayed on connect"
    bad: list[tuple[str, type[Exception]]] = [
        ("{not json", InvalidJson), ("[1]", InvalidJson), ('"ack"', InvalidJson),
        ('{"type": "hello"}', ProtocolError), ('{"seq": 1}', ProtocolError),
        ('{"type": "ack", "seq": "1"}', ProtocolError), ('{"type": "ack", "seq": true}', ProtocolError),
        ('{"type": "ack", "seq": -1}', ProtocolError), ('{"type": "ack", "seq": 1, "age_ms": -5}', ProtocolError),
        ('{"type": "ack", "seq": 1, "age_ms": NaN}', ProtocolError),
    ]
    for text, error in bad:
        with pytest.raises(error):
            ViewerInbox(0).receive_text(text, 0.0, sent_seq=5)
    with pytest.raises(ProtocolError):
        ViewerInbox(0).receive_bytes(b"\x00", 0.0)


def test_viewer_inbox_limits_the_message_rate() -> None:
    inbox = ViewerInbox(live_from=0, rate=4.0, burst=10.0)
    for i in range(10):
        inbox.receive_text(f'{{"type": "ack", "seq": {i + 1}}}', 0.0, sent_seq=100)
    with pytest.raises(RateLimited):
        inbox.receive_text('{"type": "ack", "seq": 50}', 0.0, sent_seq=100)
    steady = ViewerInbox(live_from=0, rate=4.0, burst=10.0)
    for i in range(200):  # a page acking twice a second for 100 s is never limited
        steady.receive_text(f'{{"type": "ack", "seq": {i + 1}}}', i * 0.5, sent_seq=1000)


async def test_publishing_reports_the_partials_it_coalesced() -> None:
    state, broadcaster = CaptionState("r"), Broadcaster()
    subscribers = [Subscriber() for _ in range(3)]
    broadcaster.subscribers.update(subscribers)
    segment = state.new_segment()
    coalesced = []
    for text in ("a", "a b", "a b c"):
        event = state.partial(segment, (), words(text), 0, 1, "e", "v", 0)
        assert event is not None
        coalesced.append(broadcaster.publish(event, 0.0))
    assert coalesced == [0, 3, 3]


def test_room_labels_are_bounded() -> None:
    metrics = Metrics()
    labels = [metrics.room(f"room-{i}") for i in range(MAX_ROOM_LABELS + 5)]
    assert labels[:MAX_ROOM_LABELS] == [f"room-{i}" for i in range(MAX_ROOM_LABELS)]
    assert set(labels[MAX_ROOM_LABELS:]) == {"other"}
    assert metrics.room("room-3") == "room-3"
