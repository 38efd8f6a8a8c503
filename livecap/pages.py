"""The browser views: overlay, phone view, speaker page, join QR code.

The pages are static files in ``client/`` (plain HTML, CSS and ES modules, no
build step); each reads its room from the path and talks to the WebSocket
endpoints itself. Only the QR code is made here, because it must point at the
URL attendees can reach: the ``public_url`` setting when set (the server may
sit behind a proxy), else the host the organizer's browser used.
"""

from __future__ import annotations

import io
from html import escape
from pathlib import Path
from string import Template
from urllib.parse import quote, urlencode

import segno
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from livecap.appkeys import OPTIONS
from livecap.auth import presented_key
from livecap.errors import Unauthorized
from livecap.rooms import ROOM_NAME_RULE, is_room_name

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"
PAGES = {"overlay": "overlay.html", "view": "view.html", "speak": "speak.html"}

# Keys travel in ?token= (browser sources cannot set headers): keep them out of
# Referer headers, and let pages load and connect to this origin only.
PAGE_HEADERS = CIMultiDict({
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
})


def add_page_routes(app: web.Application) -> None:
    for path, name in PAGES.items():
        app.router.add_get(f"/{path}/{{room}}", _page(CLIENT_DIR / name))
    app.router.add_get("/qr/{room}", qr_page)
    app.router.add_get("/rooms/{room}/qr.svg", qr_svg)
    app.router.add_static("/static", CLIENT_DIR)


def room_name(request: web.Request) -> str:
    """The ``{room}`` of a route, or 404 for a name that is no room's."""
    room = request.match_info["room"]
    if not is_room_name(room):
        raise web.HTTPNotFound(text=ROOM_NAME_RULE)
    return room


def _page(path: Path) -> Handler:
    async def handler(request: web.Request) -> web.FileResponse:
        room_name(request)
        return web.FileResponse(path, headers=PAGE_HEADERS)

    return handler


def view_url(request: web.Request, room: str) -> str:
    """The phone view of ``room``, carrying the viewer key when one was given
    (bounded, so that the link always fits in a QR code)."""
    base = request.app[OPTIONS].public_url.rstrip("/") or str(request.url.origin())
    try:
        token = presented_key(request)
    except Unauthorized as error:
        raise web.HTTPBadRequest(text=error.message) from None
    return f"{base}/view/{quote(room)}" + (f"?{urlencode({'token': token})}" if token else "")


def qr_code(url: str) -> str:
    """An SVG QR code of ``url`` that scales with CSS (no fixed size), with
    its white quiet zone (ISO/IEC 18004 asks for 4 modules) so it scans on
    dark slides too."""
    buffer = io.BytesIO()
    segno.make(url, error="m").save(buffer, kind="svg", scale=1, border=4, dark="#000", light="#fff",
                                    omitsize=True, xmldecl=False, nl=False, title=f"QR code: {url}")
    return buffer.getvalue().decode()


async def qr_svg(request: web.Request) -> web.Response:
    svg = qr_code(view_url(request, room_name(request)))
    return web.Response(text=svg, content_type="image/svg+xml", headers={"Cache-Control": "no-cache"})


async def qr_page(request: web.Request) -> web.Response:
    """A page to project: the QR code, big, and the link spelled out."""
    room = room_name(request)
    url = view_url(request, room)
    template = Template((CLIENT_DIR / "qr.html").read_text())
    html = template.substitute(room=escape(room), url=escape(url), svg=qr_code(url))
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)
