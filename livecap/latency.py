"""Latency as people see it, measured inside the server (pure, no I/O).

A room feeds ``RoomLatency`` with the audio it receives, the caption events
it publishes and the acknowledgements its viewers send; it gets back the
samples to export (``livecap.metrics``) and, for the operator dashboard, a
rolling summary of the last minute. Definitions follow shared/DESIGN.md
("Latency — how we measure it") and ``benchmarks/live.py``, so the server's
numbers and the benchmark's can be compared:

- **word lag**: for each word of a final, the first time the same word was
  published at the same position of its segment (in a partial, or else the
  final itself) minus the arrival of the audio where the word ends.
- **final lag**: the final's publication minus the arrival of the
  utterance's last voiced frame (the event's ``latency_ms``).
- **speech to screen**: the time a viewer rendered an event (its ``ack``)
  minus the arrival of the newest audio the event covers. It includes the
  network both ways: the ack travels back to the server, so it is an upper
  bound by the upstream half of the round trip.

All times are ``time.monotonic()`` seconds; audio positions are room seconds.
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from livecap.captions import CaptionEvent

WINDOW_S = 60.0
"""The dashboard's look-back: summaries and charts cover the last minute."""

LatencyKind = Literal["word_lag", "final_lag", "speech_to_screen"]
LATENCY_KINDS: tuple[LatencyKind, ...] = ("word_lag", "final_lag", "speech_to_screen")


class ArrivalClock:
    """When the audio at a room time reached the server.

    Every ingested chunk is recorded as (room start, room end, arrival); all
    samples of a chunk arrive together, so the audio at time ``t`` arrived
    with the first chunk that ends at or after ``t``. Room time only grows
    (sessions continue where the previous one ended), which keeps the record
    sorted; chunks older than ``keep_s`` are forgotten.
    """

    def __init__(self, keep_s: float = 120.0) -> None:
        self.keep_s = keep_s
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._arrivals: list[float] = []

    def __len__(self) -> int:
        return len(self._ends)

    def record(self, start: float, end: float, arrival: float) -> None:
        self._starts.append(start)
        self._ends.append(end)
        self._arrivals.append(arrival)
        if self._ends[0] < end - 2 * self.keep_s:  # amortised: trim once per keep_s of audio
            cut = bisect_left(self._ends, end - self.keep_s)
            del self._starts[:cut], self._ends[:cut], self._arrivals[:cut]

    def arrival(self, t: float) -> float | None:
        """Arrival of the audio at room time ``t``; None when it is not (or no
        longer) recorded. A time just past the newest chunk (engine word times
        round up) maps to the newest chunk."""
        if not self._ends or t < self._starts[0]:
            return None
        i = bisect_left(self._ends, t)
        if i == len(self._ends):
            return self._arrivals[-1] if t - self._ends[-1] < 1.0 else None
        return self._arrivals[i]


def word_key(word: str) -> str:
    """Words match when they agree in letters and digits, case aside (a
    partial's "hello" and the final's "Hello," are the same word)."""
    return re.sub(r"[^\w]+", "", word.lower())


class WordLagTracker:
    """First publication of each (segment, position, word).

    ``shown`` is called for every partial; ``final`` returns, for each word
    of the final, when it was first shown at that position (or the final's
    own time). Like the benchmark, a word that was shown, changed and came
    back counts from its first showing. Bounded: at most ``max_segments``
    open segments of ``max_entries`` entries each.
    """

    def __init__(self, max_segments: int = 8, max_entries: int = 4096) -> None:
        self.max_segments = max_segments
        self.max_entries = max_entries
        self._segments: OrderedDict[int, dict[tuple[int, str], float]] = OrderedDict()

    def shown(self, segment: int, words: Sequence[str], now: float) -> None:
        seen = self._segments.get(segment)
        if seen is None:
            seen = self._segments[segment] = {}
            while len(self._segments) > self.max_segments:
                self._segments.popitem(last=False)
        for position, word in enumerate(words):
            if len(seen) >= self.max_entries:
                break
            seen.setdefault((position, word_key(word)), now)

    def final(self, segment: int, words: Sequence[str], now: float) -> list[float]:
        seen = self._segments.pop(segment, {})
        return [seen.get((position, word_key(word)), now) for position, word in enumerate(words)]


class SeqArrivals:
    """seq → arrival of the newest audio its event covers, for the last
    ``keep`` events (an ack of an older or unknown seq is not measured)."""

    def __init__(self, keep: int = 2048) -> None:
        self.keep = keep
        self._arrivals: OrderedDict[int, float] = OrderedDict()

    def record(self, seq: int, arrival: float) -> None:
        self._arrivals[seq] = arrival
        while len(self._arrivals) > self.keep:
            self._arrivals.popitem(last=False)

    def get(self, seq: int) -> float | None:
        return self._arrivals.get(seq)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation, like numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Summary:
    p50: float | None
    p95: float | None
    count: int
    """Samples in the window (all of them, not only those kept)."""


@dataclass(slots=True)
class _Bin:
    index: int
    values: list[float]
    seen: int = 0


class LatencyWindow:
    """Latency samples of the last ``span_s`` seconds, in bins of ``bin_s``.

    ``summary`` gives p50/p95 over the whole window; ``series`` one point per
    bin, each the p50/p95 of the trailing ``smooth_s`` (a chart of per-bin
    quantiles of two or three words would only show noise). A bin keeps at
    most ``max_per_bin`` samples, a uniform reservoir sample of what it saw
    (Vitter's algorithm R), so a room with thousands of viewers acking costs
    the same memory as one with ten. Closed bins' points are cached.
    """

    def __init__(self, span_s: float = WINDOW_S, bin_s: float = 1.0, smooth_s: float = 5.0,
                 max_per_bin: int = 256, seed: int = 0) -> None:
        self.bin_s = bin_s
        self.span_bins = max(1, round(span_s / bin_s))
        self.smooth_bins = max(1, round(smooth_s / bin_s))
        self.max_per_bin = max_per_bin
        self._bins: deque[_Bin] = deque()
        self._random = random.Random(seed)
        self._points: dict[int, tuple[float | None, float | None]] = {}

    def add(self, value: float, now: float) -> None:
        index = self._index(now)
        if self._bins and index < self._bins[-1].index:  # a caller's clock never goes back; be safe anyway
            index = self._bins[-1].index
        if not self._bins or self._bins[-1].index != index:
            self._bins.append(_Bin(index, []))
            self._prune(index)
        current = self._bins[-1]
        current.seen += 1
        if len(current.values) < self.max_per_bin:
            current.values.append(value)
        elif (slot := self._random.randrange(current.seen)) < self.max_per_bin:
            current.values[slot] = value

    def summary(self, now: float) -> Summary:
        first = self._index(now) - self.span_bins + 1
        kept = [b for b in self._bins if b.index >= first]
        values = [v for b in kept for v in b.values]
        return Summary(percentile(values, 50), percentile(values, 95), sum(b.seen for b in kept))

    def series(self, now: float) -> list[tuple[float, float | None, float | None]]:
        """(bin end time, p50, p95) for every bin of the window, oldest first;
        None where the trailing ``smooth_s`` has no sample."""
        last = self._index(now)
        self._prune(last)
        by_index = {b.index: b.values for b in self._bins}
        points = []
        for index in range(last - self.span_bins + 1, last + 1):
            point = self._points.get(index)
            if point is None:
                values = [v for i in range(index - self.smooth_bins + 1, index + 1) for v in by_index.get(i, ())]
                point = (percentile(values, 50), percentile(values, 95))
                if index < last:  # a closed bin (and those before it) no longer changes
                    self._points[index] = point
            points.append(((index + 1) * self.bin_s, *point))
        return points

    def _index(self, now: float) -> int:
        return math.floor(now / self.bin_s)

    def _prune(self, index: int) -> None:
        oldest = index - self.span_bins - self.smooth_bins
        while self._bins and self._bins[0].index < oldest:
            self._bins.popleft()
        for stale in [i for i in self._points if i < oldest]:
            del self._points[stale]


@dataclass(frozen=True, slots=True)
class Published:
    """The latency samples one published event yields (seconds)."""

    word_lags: tuple[float, ...] = ()
    final_lag: float | None = None


class RoomLatency:
    """The latency bookkeeping of one room (see the module docstring)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.arrivals = ArrivalClock()
        self.words = WordLagTracker()
        self.seqs = SeqArrivals()
        self.windows: dict[LatencyKind, LatencyWindow] = {kind: LatencyWindow(window_s) for kind in LATENCY_KINDS}
        self._finals: deque[tuple[float, str]] = deque()
        """(time, engine) of the finals of the last window, for the fallback share."""

    def audio(self, start: float, end: float, arrival: float) -> None:
        """A chunk of audio covering room times ``start``–``end`` arrived."""
        self.arrivals.record(start, end, arrival)

    def published(self, event: CaptionEvent, now: float) -> Published:
        """An event went out at ``now``. Words shown before their audio ended
        (a guess that turned out right) count as 0, so histogram sums only grow."""
        if event.kind in ("partial", "final"):  # a correction covers no new speech
            self.seqs.record(event.seq, now - event.latency_ms / 1000)
        if event.kind == "partial":
            self.words.shown(event.segment, event.text.split(), now)
            return Published()
        if event.kind != "final":
            return Published()
        self._finals.append((now, event.engine))
        self._forget(now)
        shown = self.words.final(event.segment, [w.text for w in event.words], now)
        word_lags = []
        for word, first_shown in zip(event.words, shown, strict=True):
            audio_end = self.arrivals.arrival(word.end)
            if audio_end is not None:
                word_lags.append(max(0.0, first_shown - audio_end))
        final_lag = event.latency_ms / 1000
        for lag in word_lags:
            self.windows["word_lag"].add(lag, now)
        self.windows["final_lag"].add(final_lag, now)
        return Published(tuple(word_lags), final_lag)

    def acknowledged(self, seq: int, now: float, age_s: float = 0.0) -> float | None:
        """A viewer's ack of event ``seq`` arrived at ``now``, saying it was
        rendered ``age_s`` ago: the speech-to-screen delay, or None for an
        unknown seq or an impossible age."""
        arrival = self.seqs.get(seq)
        if arrival is None or now - age_s < arrival:
            return None
        delay = now - age_s - arrival
        self.windows["speech_to_screen"].add(delay, now)
        return delay

    def engine_share(self, now: float) -> dict[str, int]:
        """Finals of the last window by engine."""
        self._forget(now)
        counts: dict[str, int] = {}
        for _, engine in self._finals:
            counts[engine] = counts.get(engine, 0) + 1
        return counts

    def _forget(self, now: float) -> None:
        while self._finals and self._finals[0][0] < now - self.window_s:
            self._finals.popleft()
