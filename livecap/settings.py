"""Per-room settings an operator changes while a room runs, kept and audited.

A room's glossary (replacing the server-wide one), its profanity mask,
whether its viewers need a key, whether its audio is recorded, its language
and translation, and its outputs (``livecap.outputs``). Kept in
``DATA_DIR/settings/ROOM.json`` (written whole and atomically, so a crash
leaves the old or the new settings, never half), read again whenever the
file changes (``livecap settings`` may change it while the server runs);
every change is appended to ``DATA_DIR/settings/audit.jsonl``: who (the
operator key's id, or ``"cli"``), when, and each field that changed, old →
new. The server-wide flags (``--glossary``, ``--viewer-keys``) are the
defaults of rooms that do not set their own. In a cluster (``--redis``)
every node keeps every room's settings: a change made on one is shared
through Redis (``cluster``) and kept and audited by the others as if made there.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from livecap.errors import InvalidRequest, shown
from livecap.glossary import clean_terms
from livecap.language import ENGLISH, TRANSLATION_TARGETS, WHISPER_LANGUAGES, supported
from livecap.outputs.config import OutputConfig, parse_outputs

log = logging.getLogger(__name__)
NULLABLE = ("glossary", "viewer_keys", "translate")
"""Settings that may be null: the server-wide setting applies."""
MAX_TERMS = 500
MAX_TERM_CHARS = 100


@dataclass(frozen=True, slots=True)
class RoomSettings:
    glossary: tuple[str, ...] | None = None
    """Names and jargon of the room, spelled as wanted; None: the server-wide glossary."""
    profanity: tuple[str, ...] = ()
    """Words masked in the room's captions (partials, finals, transcript); empty: no mask."""
    viewer_keys: bool | None = None
    """Viewers need the room's viewer key; None: as the server says (``--viewer-keys``)."""
    recording: bool = False
    """Each utterance's audio is kept as a WAV beside the labels; off unless an operator turns it on."""
    language: str = ENGLISH
    """What the room speaks: a Whisper language code, or ``auto`` (detected, then locked); a
    publisher's ``start`` may say otherwise. Changed while a publisher streams, it pins the
    language from the next utterance on."""
    translate: str | None = None
    """``en``: every line in another language also gets an English translation (the ``en`` track)."""
    candidates: tuple[str, ...] = ()
    """The languages an ``auto`` room may be in (the event's); empty: any of Whisper's 99."""
    outputs: tuple[OutputConfig, ...] = ()
    """Where else the room's captions go: OBS, YouTube, Zoom, webhooks (``livecap.outputs``)."""

    def to_json(self) -> dict[str, Any]:
        """As kept in the file, secrets included."""
        return {f.name: _shown(getattr(self, f.name)) for f in fields(self)} | {
            "outputs": [output.to_json() for output in self.outputs]}

    def shown(self) -> dict[str, Any]:
        """As the API shows it: outputs' secrets hidden."""
        return self.to_json() | {"outputs": [output.shown() for output in self.outputs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoomSettings:
        """Settings as kept in a file. A field that does not validate (a hand edit) keeps its
        default and is logged: one bad value must not make the room unusable, nor its settings
        impossible to fix through the API."""
        valid: dict[str, Any] = {}
        for name, value in data.items():
            try:
                valid |= changes({name: value})
            except InvalidRequest as error:
                log.error("room settings: %s ignored: %s", name, error.message)
        return cls(**valid)


def changes(data: dict[str, Any], old: RoomSettings | None = None) -> dict[str, Any]:
    """Validated setting values from a client's JSON object (``InvalidRequest`` naming what is wrong):
    ``glossary``: a list of terms, a comma-separated string, or null; ``profanity``: a list of
    words or a comma-separated string; ``viewer_keys``: true, false or null; ``recording``: true or false;
    ``language``: a Whisper language code or "auto"; ``translate``: "en" or null; ``candidates``: a
    list of Whisper language codes or a comma-separated string; ``outputs``: a list of outputs
    (``outputs.config.parse_outputs``; a secret sent back hidden keeps the one in ``old``)."""
    names = {f.name for f in fields(RoomSettings)}
    unknown = [key for key in data if key not in names]
    if unknown:
        raise InvalidRequest(f"unknown setting {shown(unknown[0])}; settings: {', '.join(sorted(names))}")
    valid: dict[str, Any] = {}
    for name, value in data.items():
        if value is None and name in NULLABLE:
            valid[name] = None
        elif name in ("glossary", "profanity"):
            valid[name] = _terms(name, value)
        elif name == "language":
            if not isinstance(value, str) or not supported(value):
                raise InvalidRequest("language must be 'auto' or a Whisper language code: "
                                     + ", ".join(WHISPER_LANGUAGES))
            valid[name] = value
        elif name == "candidates":
            listed = value.split(",") if isinstance(value, str) else value
            codes = [c.strip() for c in listed if c.strip()] if isinstance(listed, list) and all(
                isinstance(c, str) for c in listed) else None
            if codes is None or not set(codes) <= WHISPER_LANGUAGES.keys():
                raise InvalidRequest("candidates must be Whisper language codes: " + ", ".join(WHISPER_LANGUAGES))
            valid[name] = tuple(dict.fromkeys(codes))
        elif name == "outputs":
            valid[name] = parse_outputs(value, old.outputs if old is not None else ())
        elif name == "translate":
            if value not in TRANSLATION_TARGETS:
                raise InvalidRequest(f"translate must be null or one of {', '.join(TRANSLATION_TARGETS)}")
            valid[name] = value
        elif isinstance(value, bool):
            valid[name] = value
        else:
            raise InvalidRequest(f"{name} must be true or false" + (" or null" if name in NULLABLE else ""))
    return valid


def _terms(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(term, str) for term in value):
        raise InvalidRequest(f"{name} must be a list of strings or a comma-separated string")
    terms = clean_terms(value)
    if len(terms) > MAX_TERMS or any(len(term) > MAX_TERM_CHARS or not term.isprintable() for term in terms):
        raise InvalidRequest(f"{name}: at most {MAX_TERMS} terms of at most {MAX_TERM_CHARS} printable characters")
    return terms


class SettingsStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.audit_path = directory / "audit.jsonl"
        directory.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, tuple[tuple[int, int], RoomSettings]] = {}
        self.shared: Callable[[str, dict[str, Any], dict[str, Any], dict[str, Any]], None] | None = None
        """Told of each change made here: the settings changed, as kept in the file, the audit
        entry and all the room's settings (``Cluster.share``), so that every node of a cluster has it."""
        self.node: str | None = None
        """This node's name in a cluster: audit entries say where a change was made."""

    def get(self, room: str) -> RoomSettings:
        """The room's settings (the defaults if it has none), read again when its file changed."""
        path = self._path(room)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return RoomSettings()
        changed = (stat.st_mtime_ns, stat.st_ino)  # a write replaces the file: a new inode, whatever the clock
        cached = self._cache.get(room)
        if cached is None or cached[0] != changed:
            cached = self._cache[room] = (changed, RoomSettings.from_json(json.loads(path.read_text())))
        return cached[1]

    def change(self, room: str, values: dict[str, Any], who: str, wall: float) -> RoomSettings:
        """Apply validated ``values`` (see ``changes``), keep them, and audit what changed."""
        old = self.get(room)
        new = replace(old, **values)
        before, after = old.shown(), new.shown()
        changed = {name: [before[name], after[name]] for name in values if getattr(old, name) != getattr(new, name)}
        if not changed:
            return old
        self._write(room, new)
        entry = {"time": round(wall, 3), "room": room, "who": who, "changes": changed}
        if self.node is not None:
            entry["node"] = self.node
        self._audit(entry)
        if self.shared is not None:
            kept = new.to_json()
            self.shared(room, {name: kept[name] for name in changed}, entry, kept)
        return new

    def adopt(self, room: str, data: dict[str, Any], audit: dict[str, Any] | None) -> None:
        """Settings changed on another node of the cluster (as kept in files), kept here unless
        they are these already, and ``audit``, the change's entry (None: settings read again
        after this node was away from Redis, whose changes it did not see), appended."""
        settings = RoomSettings.from_json({**self.get(room).to_json(), **data})  # what ``data`` lacks stays
        if settings != self.get(room):
            self._write(room, settings)
        if audit is not None:
            self._audit(audit)

    def _audit(self, entry: dict[str, Any]) -> None:
        with open(self.audit_path, "a", opener=_private) as file:
            file.write(json.dumps(entry) + "\n")

    def audit(self, room: str | None = None) -> list[dict[str, Any]]:
        """The audit log (of one room), oldest first."""
        if not self.audit_path.exists():
            return []
        entries = [json.loads(line) for line in self.audit_path.read_text().splitlines(keepends=True)
                   if line.endswith("\n")]
        return [entry for entry in entries
                if isinstance(entry, dict) and (room is None or entry.get("room") == room)]

    def _write(self, room: str, settings: RoomSettings) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{room}.", suffix=".tmp")
        with os.fdopen(fd, "w") as file:
            json.dump(settings.to_json(), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self._path(room))

    def _path(self, room: str) -> Path:
        return self.directory / f"{room}.json"


def _private(path: str, flags: int) -> int:
    """Opens a new file readable by the server's user only (as ``tempfile.mkstemp`` makes the settings files)."""
    return os.open(path, flags, 0o600)


def _shown(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value
