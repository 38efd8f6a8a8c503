"""Labels (corrections, flags, ratings): the store, the export and the per-model figures, on scripted cases
whose figures are computed by hand."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from livecap.asr.engine import Word
from livecap.captions import CaptionEvent, CaptionState
from livecap.cli import main
from livecap.labels import Label, LabelStore, corrected_line_wer, export, stats
from livecap.rooms import TranscriptStore


def final(state: CaptionState, text: str, version: str = "tiny") -> CaptionEvent:
    words = [Word(w, i * 0.5, i * 0.5 + 0.4, 0.9 if i else 0.3) for i, w in enumerate(text.split())]
    event = state.final(state.new_segment(), words, 0.0, 2.0, "whisper-onnx", version, 0.0)
    assert event is not None
    return event


def scripted(state: CaptionState) -> list[Label]:
    """Four lines of "tiny", one of "base"; three corrected (one twice, one emptied), two viewers' flags and
    ratings. Corrected-line WER of "tiny": line A 1 error (jason → json) in 5 words, B 2 (five → 5, + pm) in 5,
    C emptied: its 2 words are errors over no reference words: 5 / 10 = 0.5."""
    a, b, c = final(state, "the jason format is great"), final(state, "call me at five"), final(state, "thank you")
    final(state, "this one was right")
    final(state, "a line of base", "base")
    first = state.correction(a.seq, "the JSON format is grate")
    return [
        Label.about("correction", a, 100.0, "editor1", first.seq, corrected=first.text),
        Label.about("correction", a, 101.0, "editor1", first.seq + 1, corrected="the JSON format is great."),
        Label.about("correction", b, 102.0, "editor2", 0, corrected="call me at 5 pm"),
        Label.about("correction", c, 103.0, "editor2", 0, corrected=""),
        Label.about("flag", a, 104.0, "viewer1", a.seq),
        Label.about("flag", a, 104.5, "viewer1", a.seq),  # the same viewer again: one flag
        Label.about("flag", a, 105.0, "viewer2", a.seq),
        Label("rating", "r", 106.0, "whisper-onnx", "tiny", "viewer1", stars=2),
        Label("rating", "r", 107.0, "whisper-onnx", "tiny", "viewer1", stars=4),  # replaces the 2
        Label("rating", "r", 108.0, "whisper-onnx", "tiny", "viewer2", stars=5),
    ]


def test_stats_per_model_version_on_a_scripted_room() -> None:
    state = CaptionState("r")
    labels = scripted(state)
    figures = stats(labels, state.finals)
    assert figures["tiny"] == {"lines_shown": 4, "lines_corrected": 3, "flags_per_100_lines": 50.0,
                               "mean_rating": 4.5, "ratings": 2, "corrected_line_wer": 0.5}
    assert figures["base"] == {"lines_shown": 1, "lines_corrected": 0, "flags_per_100_lines": 0.0,
                               "mean_rating": None, "ratings": 0, "corrected_line_wer": None}


def test_corrected_line_wer_ignores_case_and_punctuation() -> None:
    assert corrected_line_wer(["Hello, World!"], ["hello world"]) == 0.0
    assert corrected_line_wer(["it's 10:30"], ["its 10 30"]) == pytest.approx(1 / 3, abs=1e-4), "10:30 is 10 30"
    assert corrected_line_wer([""], ["noise"]) is None, "no reference words: no rate"


def test_store_round_trip_filters_and_survives_a_torn_line(tmp_path: Path) -> None:
    state = CaptionState("r")
    store = LabelStore(tmp_path / "labels")
    labels = scripted(state)
    for label in labels:
        store.append(label)
    other = Label("rating", "other-room", 200.0, "pocketsphinx", "ps", "viewer9", stars=1)
    store.append(other)
    with open(store.path, "a") as file:
        file.write('{"kind": "flag", "room": "r", "ti')  # a crash mid-line
    assert list(store.read()) == [*labels, other]
    assert list(store.read(room="other-room")) == [other]
    assert [label.time for label in store.read(room="r", since=105.0)] == [105.0, 106.0, 107.0, 108.0]
    assert labels[0].words[0] == ("the", 0.3), "the model's words keep their confidences"


def test_export_as_json_lines_and_csv() -> None:
    labels = scripted(CaptionState("r"))
    lines = export(labels, "jsonl").splitlines()
    assert [Label.from_record(json.loads(line)) for line in lines] == labels
    rows = list(csv.DictReader(io.StringIO(export(labels, "csv"))))
    assert len(rows) == len(labels) and rows[1]["corrected"] == "the JSON format is great."
    assert rows[1]["words"].startswith("the:0.3 jason:0.9") and rows[7]["stars"] == "2"


def test_labels_command_exports_and_sums_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``livecap labels export|stats`` on a data directory: transcripts give the lines shown."""
    transcripts = TranscriptStore(tmp_path / "transcripts")
    state = CaptionState("r")
    labels = scripted(state)
    for event in [*state.finals, *state.corrections]:
        transcripts.append(event)
    store = LabelStore(tmp_path / "labels")
    for label in labels:
        store.append(label)
    assert main(["labels", "stats", "--data-dir", str(tmp_path)]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["tiny"]["corrected_line_wer"] == 0.5 and figures["tiny"]["lines_shown"] == 4
    assert main(["labels", "export", "--room", "r", "--format", "csv", "--data-dir", str(tmp_path)]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == len(labels)
    assert main(["labels", "export", "--since", "2999-01-01", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "", "nothing given since then"
    assert main(["labels", "stats", "--since", "2999-01-01T00:00", "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == {}, "no line shown, no label given since then"
    assert main(["labels", "stats", "--since", "yesterday", "--data-dir", str(tmp_path)]) == 2
