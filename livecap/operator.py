"""Operator routes: the dashboard and the editor pages, and the operator's
endpoints (rooms and their quality, ending a room, corrections, room
settings, glossary and proposed glossary terms, the fault injector).

The pages (``client/dashboard.html``, ``client/edit.html``) hold no data and
no secret, so they are served to anyone; everything they show comes from
``GET /operator/rooms`` (polled every second) and the caption socket, and
their actions go to the endpoints here. These need the **operator key**:
one key for the whole server (derived from the server secret like the rooms'
keys, printed by ``livecap keys ROOM``), given as ``Authorization: Bearer
KEY`` or ``?token=KEY``. A request body that is not a JSON object of the
expected fields is refused with a JSON ``refused`` body (``Refused``).

Latency figures are the room's own rolling window of the last minute
(``livecap.latency``), not a Prometheus query: the dashboard works without
a Prometheus server, and Grafana (``livecap/monitoring/``) is there for
history.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from redis.exceptions import RedisError

from livecap.appkeys import KEYS, METRICS, OPTIONS, ROOMS, SCHEDULER
from livecap.asr.faults import MAX_DELAY_S, FaultInjector, Faults
from livecap.auth import presented_key
from livecap.cluster import merged
from livecap.errors import InvalidRequest, LivecapError, Refused, json_object
from livecap.glossary import propose_terms
from livecap.labels import key_id
from livecap.latency import LATENCY_KINDS, WINDOW_S
from livecap.pages import CLIENT_DIR, PAGE_HEADERS, room_name
from livecap.rooms import Room, correction
from livecap.settings import changes

RECENT_FINALS = 4
"""Finals shown per room card."""


log = logging.getLogger(__name__)
AUDIT_SHOWN = 20
"""Changes of a room's settings shown with them (``livecap settings ROOM --audit`` prints all)."""
MAX_SOURCE_CHARS = 100_000
"""Text to propose glossary terms from: a programme or a talk's slides."""


def add_operator_routes(app: web.Application) -> None:
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/edit/{room}", editor_page)
    app.router.add_get("/operator/rooms", operator_rooms)
    app.router.add_post("/operator/rooms/{room}/end", end_room)
    app.router.add_post("/operator/faults", set_faults)
    app.router.add_post("/operator/rooms/{room}/corrections", correct_line)
    app.router.add_get("/operator/rooms/{room}/settings", room_settings)
    app.router.add_patch("/operator/rooms/{room}/settings", change_room_settings)
    app.router.add_post("/operator/rooms/{room}/glossary", teach_room)
    app.router.add_post("/operator/rooms/{room}/glossary/candidates", propose_glossary)


async def dashboard_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CLIENT_DIR / "dashboard.html", headers=PAGE_HEADERS)


async def editor_page(request: web.Request) -> web.FileResponse:
    """The live editor (``client/edit.html``): like the dashboard, it holds no data and asks for the operator key."""
    room_name(request)
    return web.FileResponse(CLIENT_DIR / "edit.html", headers=PAGE_HEADERS)


async def correct_line(request: web.Request) -> web.Response:
    """``{"seq": N, "text": "..."}``: the editor's text for the line whose
    version (final or correction) ``N`` they saw. The correction goes to
    every viewer as a ``correction`` event with its own seq, into the
    transcript and into the labels; the answer is that event. Refusals are
    JSON ``error`` bodies: 400 ``invalid_request``, 404 ``unknown_seq``, 409
    ``edit_conflict`` (another editor corrected the line first; ``current``
    is the line now, to edit again). With ``--redis``, on any node: the node
    that captions the room makes it (the request is forwarded, ``Cluster.forward``;
    503 if that node does not answer within 5 s)."""
    keys = request.app[KEYS]
    keys.require_operator(request)
    name = room_name(request)
    try:
        seq, text = correction(await json_request(request))
        status, body = await request.app[ROOMS].on_owner(
            "correct", name, {"seq": seq, "text": text, "by": key_id(presented_key(request))})
    except Refused as refusal:
        return _refusal(request, refusal)
    except LivecapError as error:  # the registry is full, or the node captioning the room did not answer (ServerBusy)
        raise web.HTTPServiceUnavailable(text=error.message) from None
    return web.json_response(body, status=status)


async def room_settings(request: web.Request) -> web.Response:
    """The room's own settings, what applies (its own, else the server's), and its last changes."""
    request.app[KEYS].require_operator(request)
    return _settings_answer(request, room_name(request))


async def change_room_settings(request: web.Request) -> web.Response:
    """``PATCH`` with a JSON object of the settings to change (``livecap.settings.changes``);
    audited with the operator key's id. Answers as ``GET``; 400 ``invalid_request``."""
    request.app[KEYS].require_operator(request)
    name = room_name(request)
    rooms = request.app[ROOMS]
    store, old = rooms.settings, rooms.settings_of(name)
    try:
        values = changes(await json_request(request), old)
    except Refused as refusal:
        return _refusal(request, refusal)
    room = rooms.rooms.get(name)
    new = replace(old, **values)
    if room is not None and {"language", "translate", "candidates"} & values.keys():
        try:  # the model the room will need is loaded first (minutes, the very first time)
            await room.scheduler.prepare(new.language, new.translate)
        except LivecapError as error:
            return _refusal(request, InvalidRequest(error.message))
    if store is not None:
        store.change(name, values, key_id(presented_key(request)), time.time())
    rooms.apply_settings(name, new, values.keys())
    return _settings_answer(request, name)


async def teach_room(request: web.Request) -> web.Response:
    """``{"terms": ["Dr. Smith"]}``: add terms to the room's glossary (from an editor's
    correction), starting from the server's glossary if the room has none of its own.
    Later captions of the room spell them so. Answers as ``GET`` settings."""
    request.app[KEYS].require_operator(request)
    name = room_name(request)
    rooms = request.app[ROOMS]
    try:
        added = (await json_request(request)).get("terms")
    except InvalidRequest:
        added = None
    if not isinstance(added, list) or not added:
        return _refusal(request, InvalidRequest('expected {"terms": ["term", ...]}'))
    current = rooms.settings_of(name).glossary
    terms = list(rooms.defaults.glossary.terms if current is None else current)
    try:
        glossary = changes({"glossary": [*terms, *added]})["glossary"]
    except Refused as refusal:
        return _refusal(request, refusal)
    if rooms.settings is not None:
        rooms.settings.change(name, {"glossary": glossary}, key_id(presented_key(request)), time.time())
    return _settings_answer(request, name)


async def propose_glossary(request: web.Request) -> web.Response:
    """``{"text": "…"}`` (a talk's abstract, the programme, slide text): the terms in it that the
    room's glossary lacks, for the operator to accept or edit (``glossary.propose_terms``):
    ``{"candidates": [{"term", "count", "why"}]}``. Nothing is changed."""
    request.app[KEYS].require_operator(request)
    name = room_name(request)
    try:
        text = (await json_request(request)).get("text")
    except InvalidRequest:
        text = None
    if not isinstance(text, str) or len(text) > MAX_SOURCE_CHARS:
        return _refusal(request, InvalidRequest(f'expected {{"text": "…"}}, at most {MAX_SOURCE_CHARS} characters'))
    rooms = request.app[ROOMS]
    own = rooms.settings_of(name).glossary
    known = rooms.defaults.glossary.terms if own is None else own
    candidates = await asyncio.to_thread(propose_terms, text, known)
    return web.json_response({"candidates": [dataclasses.asdict(c) for c in candidates]},
                             headers={"Cache-Control": "no-store"})


def _settings_answer(request: web.Request, name: str) -> web.Response:
    rooms, keys = request.app[ROOMS], request.app[KEYS]
    own = rooms.settings_of(name)
    glossary = rooms.defaults.glossary.terms if own.glossary is None else own.glossary
    return web.json_response({
        "room": name,
        "settings": own.shown(),
        "effective": {**own.shown(), "glossary": list(glossary),
                      "viewer_keys": keys.viewers_need_keys(own.viewer_keys)},
        "audit": rooms.settings.audit(name)[-AUDIT_SHOWN:] if rooms.settings is not None else [],
    }, headers={"Cache-Control": "no-store"})


def _refusal(request: web.Request, refusal: Refused) -> web.Response:
    request.app[METRICS].refusals.labels(refusal.code).inc()
    return web.json_response(refusal.to_event(), status=refusal.http_status)


async def json_request(request: web.Request) -> dict[str, Any]:
    """The JSON object an operator sent (``InvalidRequest`` for anything else: not UTF-8, not JSON,
    not an object)."""
    try:
        return json_object((await request.read()).decode())
    except (UnicodeDecodeError, LivecapError):
        raise InvalidRequest("expected a JSON object") from None


async def set_faults(request: web.Request) -> web.Response:
    """Operator endpoint of the fault injector: {"delay_s": 0.0, "failure_rate": 0.0}."""
    request.app[KEYS].require_operator(request)
    injector = request.app[SCHEDULER].primary
    if not isinstance(injector, FaultInjector):
        raise web.HTTPServiceUnavailable(text="engines are still loading")
    try:
        body = await json_request(request)
        values = [body.get("delay_s", 0.0), body.get("failure_rate", 0.0)]
        if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in values):
            raise ValueError("delay_s and failure_rate must be numbers")
        faults = Faults(*map(float, values))  # ValueError unless finite and in range
    except (InvalidRequest, ValueError) as error:
        raise web.HTTPBadRequest(text=f'expected {{"delay_s": 0..{MAX_DELAY_S:g} seconds, "failure_rate": 0..1}}: '
                                      f"{error}") from None
    injector.faults = faults
    log.warning("fault injector set to %s", faults)
    return web.json_response({"delay_s": faults.delay_s, "failure_rate": faults.failure_rate})


async def operator_rooms(request: web.Request) -> web.Response:
    """Every room held in memory with its live state; see ``room_state``."""
    request.app[KEYS].require_operator(request)
    app = request.app
    scheduler, mono, wall = app[SCHEDULER], time.monotonic(), time.time()
    primary, fallback = scheduler.primary, scheduler.fallback
    if not scheduler.ready.is_set():
        status = "loading"
    else:
        status = "ready" if primary is not None and scheduler.health.healthy(mono) else "degraded"
    rooms = sorted(app[ROOMS].rooms.values(), key=lambda r: (r.session is None, -len(r.viewers), r.name))
    shown = [room_state(app, room, mono, wall, fallback.name if fallback else None) for room in rooms]
    cluster = app[ROOMS].cluster
    nodes: list[dict[str, Any]] = []
    if cluster is not None:
        with contextlib.suppress(RedisError, OSError):  # Redis out: this node's rooms only ("cluster" says so)
            nodes = await cluster.nodes()
        shown = merged(shown, nodes, cluster.node)
    return web.json_response({
        "time": wall,
        "window_s": WINDOW_S,
        "server": {"status": status, "engine": primary.name if primary else app[OPTIONS].engine,
                   "fallback": fallback.name if fallback else None,
                   "latency_budget_s": scheduler.options.latency_budget_s,
                   "publishers": app[ROOMS].publishers,
                   "capacity": scheduler.capacity_state(app[ROOMS].publishers),
                   "viewers": sum(len(r.viewers) for r in rooms)},
        "rooms": shown,
        "cluster": None if cluster is None else {
            "node": cluster.node, "redis": "reachable" if cluster.reachable else "unreachable",
            "error": cluster.last_error, "pending_writes": len(cluster.pending),
            "nodes": [{"node": n["node"], "rooms": len(n["rooms"]), "age_s": round(wall - n["time"], 1)}
                      for n in nodes]},
        "models": model_quality(rooms),
    }, headers={"Cache-Control": "no-store"})


def model_quality(rooms: list[Room]) -> list[dict[str, Any]]:
    """Per model version, over the rooms held: lines shown, lines corrected, flags per 100 lines and
    the mean rating (``livecap labels stats`` gives the same, with the corrected-line WER, from the
    labels on disk)."""
    figures: dict[str, dict[str, Any]] = {}

    def of(version: str) -> dict[str, Any]:
        return figures.setdefault(version, {"lines": 0, "corrected": 0, "flags": 0, "ratings": []})

    for room in rooms:
        captions = room.captions
        for version, lines in captions.lines_by_version.items():
            of(version)["lines"] += lines
        for version, corrected in captions.corrected_by_version.items():
            of(version)["corrected"] += corrected
        for version, flags in room.flags_by_version.items():
            of(version)["flags"] += flags
        if room.ratings and captions.finals:
            of(captions.finals[-1].model_version)["ratings"] += room.ratings.values()
    return [{"model_version": version, "lines": f["lines"], "corrected": f["corrected"],
             "flags_per_100_lines": round(100 * f["flags"] / f["lines"], 1) if f["lines"] else None,
             "rating": round(sum(f["ratings"]) / len(f["ratings"]), 2) if f["ratings"] else None}
            for version, f in sorted(figures.items())]


def room_state(app: web.Application, room: Room, mono: float, wall: float, fallback: str | None) -> dict[str, Any]:
    """A room as the dashboard shows it. Times in the chart series are Unix
    seconds; latencies are seconds over the last minute."""
    session = room.session
    state = "speaking" if session is not None and session.speaking else "silent" if session else "no_publisher"
    latency = room.latency
    summaries = {kind: latency.windows[kind].summary(mono) for kind in LATENCY_KINDS}
    series: dict[str, list[Any]] = {"t": []}
    for kind in ("word_lag", "speech_to_screen"):
        points = latency.windows[kind].series(mono)
        series["t"] = [round(wall - (mono - t), 3) for t, _, _ in points]
        series[f"{kind}_p50"] = [_round(p50) for _, p50, _ in points]
        series[f"{kind}_p95"] = [_round(p95) for _, _, p95 in points]
    engines = latency.engine_share(mono)
    finals = sum(engines.values())
    last = room.last_event
    partial = room.captions.current_partial
    return {
        "name": room.name,
        "state": state,
        "session": session.id if session else None,
        "engine": last.engine if last else None,
        "model_version": last.model_version if last else None,
        "on_fallback": last is not None and fallback is not None and last.engine == fallback,
        "viewers": len(room.viewers),
        "latency": {kind: {"p50": _round(s.p50), "p95": _round(s.p95), "count": s.count}
                    for kind, s in summaries.items()},
        "finals": finals,
        "fallback_share": round(engines.get(fallback, 0) / finals, 3) if finals and fallback else None,
        "recent": [{"seq": e.seq, "start": round(e.start, 1), "text": e.text, "engine": e.engine,
                    "language": e.language}
                   for e in room.captions.finals[-RECENT_FINALS:] if e.text],
        "quality": room.quality(),
        "partial": partial.text if partial is not None else None,
        "language": room.language.state(),
        "translate": room.translate,
        "degraded": degraded(room, mono, fallback),
        "outputs": room.outputs.state(room.name, room.settings.outputs) if room.outputs is not None else [],
        "series": series,
        "links": _links(app, room.name),
    }


DEGRADED_WINDOW_S = 30.0
"""A room whose partials were skipped this recently is shown as degraded."""


def degraded(room: Room, mono: float, fallback: str | None) -> str | None:
    """Why the room's captions are worse than usual right now, for the operator; None when they are not."""
    routing = room.scheduler.routing(room.name)
    if routing.skipped_at is not None and mono - routing.skipped_at < DEGRADED_WINDOW_S:
        language = room.language.language or "auto"
        return (f"partial captions skipped ({routing.steps_skipped} so far): the {language} model misses the "
                f"latency budget and no fallback speaks {language}; finals still come, later")
    last = room.last_event
    if last is not None and fallback is not None and last.engine == fallback:
        return "on the fallback engine: the primary missed its deadline (it is tried again shortly)"
    return None


def _links(app: web.Application, room: str) -> dict[str, str]:
    """Pages of the room, with the viewer key when viewers need one."""
    keys = app[KEYS]
    needed = keys.viewers_need_keys(app[ROOMS].settings_of(room).viewer_keys)
    query = f"?{urlencode({'token': keys.key('viewer', room)})}" if needed else ""
    name = quote(room)
    return {"view": f"/view/{name}{query}", "overlay": f"/overlay/{name}{query}", "qr": f"/qr/{name}{query}",
            "transcript": f"/rooms/{name}/transcript.txt{query}", "edit": f"/edit/{name}"}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def end_room(request: web.Request) -> web.Response:
    """End a room (``Room.end``): the open utterance becomes final, then its
    publisher and viewers are closed with ``room_ended`` (4410) and the room
    leaves memory. Its transcript stays; a new publisher may start it again.
    With ``--redis``, on any node: the node that captions the room ends it (the
    request is forwarded, ``Cluster.forward``) and the nodes following it close
    their viewers too, once these have its last lines."""
    request.app[KEYS].require_operator(request)
    name = room_name(request)
    try:
        status, body = await request.app[ROOMS].on_owner("end", name, {})
    except LivecapError as error:  # Redis, or the node captioning the room, did not answer (ServerBusy)
        raise web.HTTPServiceUnavailable(text=error.message) from None
    if status == 404:
        raise web.HTTPNotFound(text=f"room {name!r} is not open")
    return web.json_response(body, status=status)
