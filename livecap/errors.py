"""One exception root for everything livecap reports to a client.

Each error carries a machine-readable ``code`` (sent in the ``error`` event)
and the WebSocket close code that follows it. The table in README.md is
generated from this module's classes (see ``tests/test_errors.py``)::

    LivecapError
    ├── ProtocolError            1008  the client broke the ingest protocol
    │   ├── FramingError         1002  frames that break RFC 6455 (reserved bits, opcodes …)
    │   ├── InvalidJson          1007  a text frame that is not a JSON object
    │   ├── InvalidFrame         1007  binary audio that is not whole samples
    │   ├── UnsupportedFormat    1003  audio format we cannot decode
    │   └── MessageTooBig        1009  a frame over the size limit
    ├── Unauthorized             4401  missing or wrong key
    ├── RateLimited              4429  audio faster than allowed, too many connections
    ├── IdleTimeout              4408  no audio from a publisher for too long
    ├── PublisherReplaced        4409  another publisher took over the room
    ├── ViewerTooSlow            4100  a viewer fell too far behind; resume with after_seq
    ├── RoomEnded                4410  an operator ended the room (do not reconnect)
    ├── ServerBusy               1013  at capacity or still loading; try again later
    ├── ShuttingDown             1001  the server is stopping; open utterances were made final
    ├── InternalError            1011  a bug or a failed component; details go to the log
    └── Refused                        one request refused; the connection stays open
        ├── InvalidRequest       400   a correction, flag or rating with a bad field
        ├── UnknownSeq           404   no line of the room has that seq
        ├── EditConflict         409   the line was corrected since the editor saw it
        ├── RoomElsewhere        409   the room moved to another node meanwhile (--redis); try again
        └── TooManyRequests      429   flags and ratings faster than allowed

Close codes come from RFC 6455 §7.4.1 (1001, 1002, 1003, 1007, 1008, 1009, 1011), RFC
6455's registry (1013 "try again later") and the private range 4000–4999,
where livecap mirrors HTTP status codes where one fits (4401, 4408, 4409,
4410, 4429).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class LivecapError(Exception):
    """Base class: an error that is reported to the client, then closes it."""

    code: ClassVar[str] = "error"
    close_code: ClassVar[int] = 1011

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        """When a retry makes sense: how long the client should wait first (a hint, not a promise)."""

    def to_event(self) -> dict[str, Any]:
        """The ``error`` event sent before the close frame; ``retry_after_ms``
        only when the error says when to retry (the clients honour it)."""
        event: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.retry_after_s is not None:
            event["retry_after_ms"] = round(self.retry_after_s * 1000)
        return event


class ProtocolError(LivecapError):
    """A well-formed frame that breaks the protocol (unknown type, bad field,
    audio before ``start`` …)."""

    code = "protocol_error"
    close_code = 1008


class FramingError(ProtocolError):
    """Frames that break RFC 6455 itself (reserved bits or opcodes, a stray
    continuation, a bad control frame, compressed data that does not inflate):
    the WebSocket library finds these before livecap sees a message."""

    code = "framing_error"
    close_code = 1002


class InvalidJson(ProtocolError):
    code = "invalid_json"
    close_code = 1007


class InvalidFrame(ProtocolError):
    code = "invalid_frame"
    close_code = 1007


class UnsupportedFormat(ProtocolError):
    code = "unsupported_format"
    close_code = 1003


class MessageTooBig(ProtocolError):
    code = "message_too_big"
    close_code = 1009


class Unauthorized(LivecapError):
    code = "unauthorized"
    close_code = 4401


class RateLimited(LivecapError):
    code = "rate_limited"
    close_code = 4429


class IdleTimeout(LivecapError):
    code = "idle_timeout"
    close_code = 4408


class PublisherReplaced(LivecapError):
    code = "publisher_replaced"
    close_code = 4409


class ViewerTooSlow(LivecapError):
    code = "viewer_too_slow"
    close_code = 4100


class RoomEnded(LivecapError):
    """An operator ended the room: its publisher and viewers are closed."""

    code = "room_ended"
    close_code = 4410


class ServerBusy(LivecapError):
    """The server cannot take this connection now (capacity, room count, models
    loading); it always says when to try again."""

    code = "server_busy"
    close_code = 1013

    def __init__(self, message: str, retry_after_s: float = 10.0) -> None:
        # A slot frees when a publisher stops, which takes minutes in a talk: retrying
        # much sooner than this mostly costs both sides a refused handshake.
        super().__init__(message, retry_after_s)


class ShuttingDown(LivecapError):
    """The server is stopping (SIGINT/SIGTERM): every connection is told, after
    the open utterances became final and viewers received them. RFC 6455
    §7.4.1: 1001 "going away", as when a server goes down."""

    code = "shutting_down"
    close_code = 1001


class InternalError(LivecapError):
    code = "internal_error"
    close_code = 1011


class Refused(LivecapError):
    """One request refused on its own: the client gets a ``refused`` event
    (not ``error``, which always comes before a close; over HTTP, the
    ``http_status`` with the event as its JSON body) and the connection
    stays open, so a viewer's bad flag costs it no caption."""

    code = "refused"
    close_code = 0
    """Nothing is closed."""
    http_status: ClassVar[int] = 400

    def to_event(self) -> dict[str, Any]:
        return {"type": "refused", "code": self.code, "message": self.message}


class InvalidRequest(Refused):
    code = "invalid_request"
    http_status = 400


class UnknownSeq(Refused):
    code = "unknown_seq"
    http_status = 404


class EditConflict(Refused):
    """Two editors corrected the same line: the later one, based on the
    version both saw, is refused with the line as it is now (``current``)."""

    code = "edit_conflict"
    http_status = 409

    def __init__(self, message: str, current: dict[str, Any]) -> None:
        super().__init__(message)
        self.current = current

    def to_event(self) -> dict[str, Any]:
        return {**super().to_event(), "current": self.current}


class RoomElsewhere(Refused):
    """With ``--redis``, a correction on a node while the room moved to another: only the node
    with its publisher gives out the room's seqs, and corrections go there (``Cluster.forward``);
    this is left when the room moved while one was being made."""

    code = "room_elsewhere"
    http_status = 409


class TooManyRequests(Refused):
    code = "too_many_requests"
    http_status = 429


def json_object(text: str) -> dict[str, Any]:
    """The JSON object a client sent, or ``InvalidJson``.

    Every way the parser can fail on client text is the client's fault, not
    a bug: ``ValueError`` (bad syntax, an integer over Python's 4300-digit
    limit) and ``RecursionError`` (deep nesting such as 1,000 ``[``)."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidJson("expected a JSON object") from None
    if not isinstance(message, dict):
        raise InvalidJson("expected a JSON object")
    return message


def shown(value: object) -> str:
    """A client's value quoted in an error message: a short string as it is,
    anything else by its type, so a message never echoes (nor has to
    render) a huge or deeply nested value."""
    return repr(value[:40]) if isinstance(value, str) else type(value).__name__


class ModelError(Exception):
    """An engine failed (missing model, onnxruntime error, lost GPU).

    Never sent to clients: the scheduler answers it by switching engines."""
