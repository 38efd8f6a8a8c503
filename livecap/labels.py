"""Labels: what people said about the captions, kept to tell how the model
really does in production.

Every correction (an editor's text for a line), flag (an attendee's "Caption
wrong?") and rating (1-5 stars for a room's captions) is appended as one
JSON line to ``DATA_DIR/labels/labels.jsonl``, never rewritten, with the
engine and ``model_version`` that produced the line and the model's words
with their confidences: a corrected line is an evaluation example, and the
flags and ratings say where to look. ``stats`` sums them up per model
version, with the **corrected-line WER**: the word error rate of the model's
text against the editor's, over the lines an editor corrected (a lower bound
of the true WER: uncorrected lines count as right).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import jiwer

from livecap.captions import CaptionEvent

LabelKind = Literal["correction", "flag", "rating"]


@dataclass(frozen=True, slots=True)
class Label:
    kind: LabelKind
    room: str
    time: float
    """Unix seconds when it was given."""
    engine: str
    model_version: str
    """What produced the line (for a rating: the room's latest final)."""
    by: str
    """A correction: the editor's key id (``key_id``) or ``"cli"``; a flag or
    rating: the viewer's anonymous id, one per connection."""
    seq: int | None = None
    """The caption event: a correction's own seq; the version of the line flagged."""
    segment: int | None = None
    start: float | None = None
    """The line's time in the room (seconds since its first audio)."""
    end: float | None = None
    text: str = ""
    """The model's text of the line (its final)."""
    words: tuple[tuple[str, float], ...] = field(default=())
    """The model's words with their confidences."""
    corrected: str | None = None
    """A correction: the editor's text."""
    stars: int | None = None
    """A rating: 1-5."""
    audio: str | None = None
    """The line's audio, when its room records: a path under the data directory (``livecap.recordings``)."""

    @classmethod
    def about(cls, kind: LabelKind, final: CaptionEvent, time: float, by: str, seq: int,
              corrected: str | None = None) -> Label:
        """A label about the line whose final is ``final``."""
        return cls(kind, final.room, time, final.engine, final.model_version, by, seq, final.segment,
                   round(final.start, 3), round(final.end, 3), final.text,
                   tuple((w.text, round(w.confidence, 3)) for w in final.words), corrected)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["words"] = [{"w": w, "conf": conf} for w, conf in self.words]
        return {k: v for k, v in record.items() if v is not None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Label:
        fields = {k: record[k] for k in cls.__dataclass_fields__ if k in record and k != "words"}
        return cls(**fields, words=tuple((w["w"], w["conf"]) for w in record.get("words", ())))


class LabelStore:
    """``DATA_DIR/labels/labels.jsonl``, append-only (a line cut short by a crash is skipped on reading)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "labels.jsonl"
        directory.mkdir(parents=True, exist_ok=True)

    def append(self, label: Label) -> None:
        with open(self.path, "a") as file:
            file.write(json.dumps(label.to_record()) + "\n")

    def read(self, room: str | None = None, since: float | None = None) -> Iterator[Label]:
        """Labels in the order given, of one ``room`` and from ``since`` (Unix seconds) if set."""
        if not self.path.exists():
            return
        with open(self.path) as file:
            for line in file:
                if not line.endswith("\n"):
                    break
                label = Label.from_record(json.loads(line))
                if (room is None or label.room == room) and (since is None or label.time >= since):
                    yield label


def export(labels: Iterable[Label], fmt: Literal["jsonl", "csv"]) -> str:
    """An evaluation set: JSON lines as stored, or CSV with the words as ``word:confidence`` pairs."""
    if fmt == "jsonl":
        return "".join(json.dumps(label.to_record()) + "\n" for label in labels)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(Label.__dataclass_fields__), lineterminator="\n")
    writer.writeheader()
    for label in labels:
        row = asdict(label)
        row["words"] = " ".join(f"{w}:{conf:g}" for w, conf in label.words)
        writer.writerow(row)
    return out.getvalue()


@dataclass(slots=True)
class VersionStats:
    """One model version's figures (``stats``)."""

    lines_shown: int = 0
    lines_corrected: int = 0
    flags: int = 0
    ratings: list[int] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    """The editors' text of the corrected lines..."""
    hypotheses: list[str] = field(default_factory=list)
    """...and the model's."""

    def row(self) -> dict[str, Any]:
        lines = self.lines_shown
        return {
            "lines_shown": lines,
            "lines_corrected": self.lines_corrected,
            "flags_per_100_lines": round(100 * self.flags / lines, 2) if lines else None,
            "mean_rating": round(sum(self.ratings) / len(self.ratings), 2) if self.ratings else None,
            "ratings": len(self.ratings),
            "corrected_line_wer": corrected_line_wer(self.references, self.hypotheses),
        }


def stats(labels: Iterable[Label], finals: Iterable[CaptionEvent]) -> dict[str, dict[str, Any]]:
    """Per model version: lines shown (``finals`` with text), lines
    corrected, flags per 100 lines shown (one per viewer per line), the mean
    rating (each viewer's last in each room) and the corrected-line WER (each
    line's last correction against the model's text)."""
    versions: dict[str, VersionStats] = {}

    def of(version: str) -> VersionStats:
        return versions.setdefault(version, VersionStats())

    for final in finals:
        if final.text:
            of(final.model_version).lines_shown += 1
    corrected: dict[tuple[str, int], Label] = {}
    flags: set[tuple[str, int, str]] = set()
    ratings: dict[tuple[str, str], Label] = {}
    for label in labels:
        if label.kind == "correction" and label.segment is not None:
            corrected[(label.room, label.segment)] = label
        elif label.kind == "flag" and label.segment is not None:
            if (label.room, label.segment, label.by) not in flags:
                flags.add((label.room, label.segment, label.by))
                of(label.model_version).flags += 1
        elif label.kind == "rating" and label.stars is not None:
            ratings[(label.room, label.by)] = label
    for label in corrected.values():
        version = of(label.model_version)
        version.lines_corrected += 1
        version.references.append(label.corrected or "")
        version.hypotheses.append(label.text)
    for label in ratings.values():
        of(label.model_version).ratings.append(label.stars or 0)
    return {version: figures.row() for version, figures in sorted(versions.items())}


def corrected_line_wer(references: list[str], hypotheses: list[str]) -> float | None:
    """Word errors of ``hypotheses`` over the words of ``references``
    (jiwer), after lower-casing and dropping punctuation; None without
    reference words. A line an editor emptied counts its words as insertions."""
    refs, hyps = [_normalized(r) for r in references], [_normalized(h) for h in hypotheses]
    words = sum(len(r.split()) for r in refs)
    if not words:
        return None
    errors = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        if not ref:
            errors += len(hyp.split())
        elif not hyp:
            errors += len(ref.split())
        else:
            output = jiwer.process_words(ref, hyp)
            errors += output.substitutions + output.deletions + output.insertions
    return round(errors / words, 4)


def _normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def key_id(key: str | None) -> str:
    """A short, stable id for the key an editor used, never the key itself."""
    return "anonymous" if key is None else hashlib.sha256(key.encode()).hexdigest()[:8]
