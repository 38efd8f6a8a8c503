"""The soak benchmark's verdicts (``benchmarks.soak``), on hand-made event lists:
the benchmark runs on demand, but what it calls lost must be what was lost."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from benchmarks.live import RoomPlan
from benchmarks.soak import Room, Session, Viewer, trend, utterances
from livecap.client import StreamResult


def caption(seq: int, segment: int, kind: str = "partial", text: str = "words", engine: str = "whisper-onnx"
            ) -> dict[str, Any]:
    return {"type": "caption", "room": "r", "seq": seq, "segment": segment, "kind": kind, "text": text,
            "engine": engine}


def session(*messages: dict[str, Any], killed: bool = False) -> Session:
    return Session(StreamResult(messages=[{"type": "ready", "session": "s", "offset": 0.0}, *messages]), 0, killed)


def test_every_utterance_is_accounted_for() -> None:
    killed = session(caption(1, 0), caption(2, 0, "final"),  # finalised while the publisher watched
                     caption(3, 1),  # finalised after it left (in the store only)
                     caption(4, 2), caption(5, 3), caption(6, 4, "final"),  # 2 and 3 skipped before 4's final
                     caption(7, 5), killed=True)  # the utterance in flight at the kill
    stopped = session(caption(20, 6), caption(21, 7), caption(22, 7, "final"))  # 6 never finalised, no kill
    recovered = session(caption(30, 8), killed=True)
    stored = [caption(2, 0, "final"), caption(9, 1, "final"), caption(6, 4, "final"), caption(22, 7, "final"),
              caption(1040, 8, "final", engine="recovered")]
    counts, lost = utterances([killed, stopped, recovered], stored)
    assert counts == {"final": 3, "final after the session": 1, "in flight at a kill": 1,
                      "recovered after a kill": 1, "without a final": 3}
    assert [entry.split(":")[0] for entry in lost] == ["r segment 2 (seq 4)", "r segment 3 (seq 5)",
                                                       "r segment 6 (seq 20)"]


def test_viewers_see_what_a_page_would_show() -> None:
    room = Room(RoomPlan("r", np.zeros(0, np.float32), []))
    viewer, other = Viewer(room, slow=False), Viewer(room, slow=False)
    other.receive(json.dumps(caption(3, 1)))
    for message in (caption(1, 0), caption(2, 0, "final"), caption(2, 0, "final"),  # a replay does no harm
                    caption(5, 1, "final"),
                    caption(3, 1, text="other words"),  # seq 3 used twice
                    caption(4, 1),  # new to the room, but below the last seq: a page drops it
                    caption(1, 2, "final", "after a restart"),  # seq 1 used twice: dropped too
                    caption(6, 2, "final")):
        assert viewer.receive(json.dumps(message)) is None
    assert viewer.receive(json.dumps({"type": "error", "code": "viewer_too_slow"})) == "viewer_too_slow"
    assert viewer.finals == {(2, 0), (5, 1), (6, 2)} and viewer.last_seq == 6
    assert room.repeated == {1, 3} and room.skipped == 3


def test_rss_trend_is_the_slope_in_mb_per_minute() -> None:
    assert trend([(0.0, 100.0), (30.0, 100.5), (60.0, 101.0)]) == 1.0
    assert trend([(0.0, 100.0), (30.0, 100.0)]) is None
