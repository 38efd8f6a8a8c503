"""Room keys: who may publish, operate and (optionally) view.

Keys are derived from one server secret with HMAC-SHA256, so every room has
its own publisher key without any key database, and an operator can print
any room's key with ``livecap keys ROOM``. Clients present a key as
``Authorization: Bearer KEY`` or as a ``token`` query parameter (browser
WebSockets and OBS browser sources cannot set headers). Comparison is
constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Literal

from aiohttp import web

from livecap.errors import LivecapError, Unauthorized

Role = Literal["publisher", "operator", "viewer"]
MAX_KEY_CHARS = 256
"""Keys are 24 characters; anything presented as a key that is longer than
this is refused before it is used anywhere."""


class Keys:
    def __init__(self, secret: str, viewer_keys_required: bool = False) -> None:
        self._secret = secret.encode()
        self.viewer_keys_required = viewer_keys_required

    def key(self, role: Role, room: str = "") -> str:
        scope = "operator" if role == "operator" else f"{role}:{room}"
        digest = hmac.new(self._secret, scope.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def check(self, role: Role, room: str, presented: str | None, viewer_keys: bool | None = None) -> None:
        """Raise ``Unauthorized`` unless ``presented`` is the key for ``role``. Viewers need one if
        ``viewer_keys`` (the room's setting) says so, or, where it says nothing, the server."""
        if role == "viewer" and not self.viewers_need_keys(viewer_keys):
            return
        if presented is None:
            raise Unauthorized(f"{'an' if role[0] in 'aeiou' else 'a'} {role} key is required")
        accepted = [self.key(role, room)] + ([self.key("operator")] if role != "operator" else [])
        if not any(hmac.compare_digest(presented.encode(), key.encode()) for key in accepted):
            raise Unauthorized(f"wrong {role} key for room {room!r}")

    def viewers_need_keys(self, room_setting: bool | None) -> bool:
        return self.viewer_keys_required if room_setting is None else room_setting

    def require_operator(self, request: web.Request) -> None:
        """The operator key (one for the whole server) or 401."""
        try:
            self.check("operator", "", presented_key(request))
        except LivecapError as error:
            raise web.HTTPUnauthorized(text=error.message, headers={"WWW-Authenticate": "Bearer"}) from None


def presented_key(request: web.Request) -> str | None:
    """The key a client presents, ``Authorization: Bearer KEY`` or ``?token=KEY``.
    One longer than ``MAX_KEY_CHARS`` or not ASCII is no key (``Unauthorized``)
    and goes no further, into a QR code, say."""
    header = request.headers.get("Authorization", "")
    key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else request.query.get("token")
    if key is not None and (len(key) > MAX_KEY_CHARS or not key.isascii()):
        raise Unauthorized(f"keys are at most {MAX_KEY_CHARS} ASCII characters")
    return key


def load_or_create_secret(path: Path) -> str:
    """The server secret kept in the data directory (mode 0600), so that keys
    printed for speakers and QR codes survive restarts."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret
