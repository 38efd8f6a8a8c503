"""Caption events as each destination wants them (pure: events in, requests out).

- **YouTube Live** (support.google.com/youtube/answer/6077032): a POST of
  ``text/plain`` to the ingestion URL with ``&seq=N``, N one more for each new
  post and the same on a retry; the body a UTC time ``YYYY-MM-DDTHH:MM:SS.mmm``
  on one line and the caption on the next. The time is when the words were
  spoken (the final's start, room time mapped to the wall clock) plus the
  operator's offset for the stream's delay.
- **Zoom** (support.zoom.us/hc/en-us/articles/115002212983): a POST of
  ``text/plain`` to the API token URL with ``&seq=N`` (same rule) and
  ``&lang=en-US``; whole lines only, since every post stays in Zoom's saved
  transcript (partials would repeat text there).
- **Webhook**: a POST of each line event (final, correction, translation) as
  the JSON caption event of the protocol; with a secret, ``X-Livecap-Signature:
  sha256=HEX``, the HMAC-SHA256 of the body (as GitHub's webhooks).
- **OBS** stream captions: 608 rows (``cea608.RowMaker``), rolled up by the sender
  over the rows OBS took; OBS text source: the last lines as one text, a newer text
  replacing a waiting one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from livecap.captions import LINE_KINDS, CaptionEvent
from livecap.outputs.cea608 import RowMaker
from livecap.outputs.config import OutputConfig
from livecap.outputs.delivery import Item

ZOOM_LANGUAGES = {"en": "en-US", "de": "de-DE", "ja": "jp-JP", "es": "es-ES", "fr": "fr-FR", "zh": "zh-CN",
                  "it": "it-IT", "pt": "pt-PT", "nl": "nl-NL", "ru": "ru-RU", "ko": "ko-KR"}
"""Zoom's ``lang`` for a Whisper language (Zoom's documented examples, Japanese as Zoom spells it)."""
SIGNATURE_HEADER = "X-Livecap-Signature"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    url: str
    body: bytes
    headers: dict[str, str]


class Formatter:
    """Turns a room's caption events into one output's items, and items into requests."""

    def __init__(self, config: OutputConfig) -> None:
        self.config = config
        self._rows = RowMaker()
        self._lines: deque[str] = deque(maxlen=config.lines)

    def changed(self, config: OutputConfig) -> Formatter:
        """The formatter for the output changed to ``config``: this one (keeping the lines shown so
        far) when only where it goes changed, a new one when what it sends changed."""
        shaping = ("kind", "track", "mode", "lines", "partials")
        if any(getattr(config, name) != getattr(self.config, name) for name in shaping):
            return Formatter(config)
        self.config = config
        return self

    def items(self, event: CaptionEvent, now: float, spoken: float) -> list[Item]:
        """What ``event`` (published at monotonic ``now``, its first word spoken at Unix time
        ``spoken``) gives this output: nothing, or items to queue."""
        config = self.config
        if not event.on_track(config.track):
            return []
        seqs = (event.seq,)
        if config.kind == "webhook":
            return [Item(json.dumps(event.to_message()).encode(), seqs, now)] if event.kind in LINE_KINDS else []
        line = event.kind in ("final", "translation")
        if config.kind == "obs" and config.mode == "text":
            if not line and not (config.partials and event.kind == "partial"):
                return []
            shown = [*self._lines, event.text] if event.text else list(self._lines)
            if line and event.text:
                self._lines.append(event.text)
            return [Item("\n".join(shown[-config.lines:]), seqs, now, replaces="text")]
        if config.kind == "obs":  # one item per 608 row; the sender rolls them up (``cea608.roll_up``)
            if event.kind == "partial" and config.partials:
                return [Item(row, seqs, now) for row in self._rows.rows(event.segment, event.stable, final=False)]
            return [Item(row, seqs, now) for row in self._rows.rows(event.segment, event.text, final=True)] if line \
                else []
        if not line or not event.text:
            return []
        if config.kind == "youtube":
            when = datetime.fromtimestamp(spoken + config.offset_s, UTC)
            stamp = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}"
            return [Item(f"{stamp}\n{event.text}\n", seqs, now)]
        return [Item((event.language, event.text), seqs, now)]  # zoom

    def request(self, item: Item) -> HttpRequest:
        """The POST for ``item`` (numbered, see ``Outbox.head``)."""
        config = self.config
        if config.kind == "webhook":
            body: bytes = item.payload
            headers = {"Content-Type": "application/json"}
            if config.secret is not None:
                digest = hmac.new(config.secret.encode(), body, hashlib.sha256).hexdigest()
                headers[SIGNATURE_HEADER] = f"sha256={digest}"
            return HttpRequest(config.url, body, headers)
        query, text = {"seq": str(item.number)}, item.payload
        if config.kind == "zoom":
            language, text = item.payload
            query["lang"] = config.lang or ZOOM_LANGUAGES.get(language, language)
        return HttpRequest(with_query(config.url, query), text.encode(),
                           {"Content-Type": "text/plain; charset=utf-8"})


def with_query(url: str, values: dict[str, str]) -> str:
    """``url`` with ``values`` set in its query (replacing parameters of those names)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in values]
    return urlunsplit(parts._replace(query=urlencode([*query, *values.items()])))
