"""What an operator configures for each of a room's outputs, validated.

Outputs are part of the room's settings (``RoomSettings.outputs``), kept and
audited with them. Secrets (a webhook's signing secret, the obs-websocket
password, and the query and user parts of a URL: a Zoom API token and a
YouTube ingestion URL are secrets themselves) are kept in the settings file,
which only the server reads, and are never shown back: the API, the audit log
and error messages show ``SECRET_KEPT`` in their place, and an output sent back
with them so (same name and kind) keeps what it had.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from livecap.captions import TRACKS, Track
from livecap.errors import InvalidRequest, shown

OutputKind = Literal["youtube", "zoom", "webhook", "obs"]
OUTPUT_KINDS: tuple[OutputKind, ...] = get_args(OutputKind)
ObsMode = Literal["captions", "text"]
OBS_MODES: tuple[ObsMode, ...] = get_args(ObsMode)
MAX_OUTPUTS = 8
"""Outputs per room: each is a connection to keep and a queue to hold."""
MAX_OFFSET_S = 600.0
SECRET_KEPT = "(kept)"
"""Stands for a secret that is set, where settings are shown; sent back, it keeps that secret."""
NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """One destination of a room's captions."""

    name: str
    """The operator's name for it, unique in the room (letters, digits, ``_.-``)."""
    kind: OutputKind
    url: str
    """youtube: the ingestion URL from YouTube Studio; zoom: the API token (caption URL); webhook:
    any http(s) URL; obs: the obs-websocket address, ``ws://HOST:4455``."""
    secret: str | None = None
    """webhook: HMAC-SHA256 signing secret (``X-Livecap-Signature``); obs: the obs-websocket password."""
    track: Track = "original"
    """The captions it gets: as spoken, or the English track (``CaptionEvent.on_track``)."""
    offset_s: float = 0.0
    """youtube: seconds added to the captions' times, for the stream's delay (-600..600)."""
    lang: str | None = None
    """zoom: the ``lang`` parameter (``en-US``); None: from the captions' language."""
    mode: ObsMode = "captions"
    """obs: ``captions`` (CEA-608 stream captions) or ``text`` (an OBS text source's text)."""
    source: str = "Captions"
    """obs text mode: the name of the text source."""
    lines: int = 2
    """obs: caption lines shown, 2-3 for 608 roll-up, 1-10 in a text source."""
    partials: bool = False
    """obs: send settled words of the utterance under way too, not only finals."""
    enabled: bool = True

    def shown(self) -> dict[str, Any]:
        """As the API shows it: the secret and the URL's secret parts replaced by ``SECRET_KEPT``."""
        data = asdict(self)
        data["url"] = masked_url(self.url)
        if self.secret is not None:
            data["secret"] = SECRET_KEPT
        return data

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_outputs(value: object, old: tuple[OutputConfig, ...] = ()) -> tuple[OutputConfig, ...]:
    """A room's outputs from a client's JSON list of objects (``InvalidRequest`` naming what is
    wrong); a secret, or a URL, given as shown (``OutputConfig.shown``) is taken from the output of
    that name and kind in ``old``."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidRequest("outputs must be a list of objects")
    if len(value) > MAX_OUTPUTS:
        raise InvalidRequest(f"at most {MAX_OUTPUTS} outputs per room")
    kept: dict[tuple[str, str], OutputConfig] = {(output.name, output.kind): output for output in old}
    outputs = [_output(item, kept) for item in value]
    names = [output.name for output in outputs]
    if len(set(names)) < len(names):
        raise InvalidRequest("outputs must have different names")
    return tuple(outputs)


def _output(item: dict[str, Any], kept: dict[tuple[str, str], OutputConfig]) -> OutputConfig:
    allowed = {f.name for f in fields(OutputConfig)}
    if unknown := [key for key in item if key not in allowed]:
        raise InvalidRequest(f"unknown output field {shown(unknown[0])}; fields: {', '.join(sorted(allowed))}")
    name, kind, url = item.get("name"), item.get("kind"), item.get("url")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidRequest("output name must be 1-40 letters, digits, '_', '.' or '-'")
    if kind not in OUTPUT_KINDS:
        raise InvalidRequest(f"output {name}: kind must be one of {', '.join(OUTPUT_KINDS)}")
    before = kept.get((name, kind))
    if before is not None and url == masked_url(before.url):
        url = before.url
    schemes = ("ws", "wss") if kind == "obs" else ("http", "https")
    if isinstance(url, str) and SECRET_KEPT in url:
        raise InvalidRequest(f"output {name}: its address was shown with parts hidden, and no {kind} output of "
                             f"this name keeps it; give the whole address")
    if not isinstance(url, str) or len(url) > 2000 or not _url_ok(url, schemes):
        raise InvalidRequest(f"output {name}: url must be a {' or '.join(schemes)} URL with a host")
    values: dict[str, Any] = {}
    for field, check, why in (
        ("secret", lambda v: v is None or (isinstance(v, str) and 0 < len(v) <= 256 and v.isprintable()),
         "null or printable text of at most 256 characters"),
        ("track", lambda v: v in TRACKS, f"one of {', '.join(TRACKS)}"),
        ("offset_s", lambda v: _number(v) and abs(v) <= MAX_OFFSET_S, f"seconds from -{MAX_OFFSET_S:g} to "
                                                                      f"{MAX_OFFSET_S:g}"),
        ("lang", lambda v: v is None or (isinstance(v, str) and re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z]{2,4})?", v)),
         "null or a code such as en-US"),
        ("mode", lambda v: v in OBS_MODES, f"one of {', '.join(OBS_MODES)}"),
        ("source", lambda v: isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable(),
         "the name of an OBS source"),
        ("lines", lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 10, "1 to 10"),
        ("partials", lambda v: isinstance(v, bool), "true or false"),
        ("enabled", lambda v: isinstance(v, bool), "true or false"),
    ):
        if field not in item:
            continue
        value = item[field]
        if field == "secret" and value == SECRET_KEPT:
            if before is None or before.secret is None:
                raise InvalidRequest(f"output {name}: no {kind} secret is kept under this name; give the secret")
            value = before.secret
        elif not check(value):
            raise InvalidRequest(f"output {name}: {field} must be {why}")
        values[field] = float(value) if field == "offset_s" else value
    output = OutputConfig(name, kind, url, **values)
    if output.kind == "obs" and output.mode == "captions" and not 2 <= output.lines <= 3:
        raise InvalidRequest(f"output {name}: CEA-608 roll-up captions show 2 or 3 lines")
    return output


def masked_url(url: str) -> str:
    """``url`` with its user part and query values replaced by ``SECRET_KEPT``: what may be shown."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return SECRET_KEPT
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(f"{key}={SECRET_KEPT}" if value else key
                     for key, _, value in (pair.partition("=") for pair in parts.query.split("&") if pair))
    return urlunsplit(parts._replace(netloc=f"{SECRET_KEPT}@{host}" if "@" in parts.netloc else host,
                                     query=query, fragment=""))


def _url_ok(url: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not one)
        return parts.scheme in schemes and bool(parts.hostname) and url.isprintable() and " " not in url
    except ValueError:
        return False


def _number(value: object) -> bool:
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False
