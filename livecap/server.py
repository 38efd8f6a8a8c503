"""HTTP and WebSocket glue: the aiohttp application.

Handlers are thin adapters: they feed frames to the sans-I/O ``IngestProtocol``,
pass its events to the room, and write what the room's fan-out gives them.
Every ``LivecapError`` is turned into an ``error`` event followed by a close
with the error's close code, in one place (``_close_with``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import secrets
import sys
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

import numpy as np
from aiohttp import WebSocketError, WSCloseCode, WSMessage, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from livecap import __version__
from livecap.appkeys import CONNECTIONS, KEYS, METRICS, OPTIONS, ROOMS, SCHEDULER, SOCKETS, STARTED
from livecap.asr.engine import ENGINES, Engine, EngineOptions
from livecap.asr.faults import FaultInjector, Faults
from livecap.asr.scheduler import Scheduler, warm_up
from livecap.audio import read_wav
from livecap.auth import Keys, Role, presented_key
from livecap.captions import TRACKS
from livecap.cluster import Cluster
from livecap.config import ServerOptions
from livecap.demo import DEMO_AUDIO
from livecap.errors import (
    FramingError,
    IdleTimeout,
    InternalError,
    InvalidJson,
    LivecapError,
    MessageTooBig,
    ProtocolError,
    RateLimited,
    Refused,
    ServerBusy,
    ShuttingDown,
    ViewerTooSlow,
)
from livecap.export import MEDIA_TYPES, export
from livecap.fanout import Outgoing, Subscriber, ViewerAck, ViewerFlag, ViewerInbox, ViewerRating, unsent_bytes
from livecap.glossary import Glossary
from livecap.ingest import AudioReceived, IngestEvent, IngestProtocol, PublisherWarning, Started, Stopped
from livecap.labels import LabelStore
from livecap.metrics import Metrics, NodeLabelled
from livecap.operator import add_operator_routes, room_state
from livecap.outputs.runner import OutputHub
from livecap.pages import add_page_routes, room_name
from livecap.recordings import SWEEP_INTERVAL_S, RecordingStore
from livecap.rooms import (
    PublisherSession,
    Room,
    RoomDefaults,
    RoomRegistry,
    TranscriptStore,
)
from livecap.settings import SettingsStore

log = logging.getLogger(__name__)
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
"""``livecap_disconnects_total`` reason of a peer dropped for not answering a ping (it gets no error event)."""
MISSED_PONG = web.RequestKey("missed_pong", bool)
DEFAULT_HISTORY = 20
"""Finals replayed to a viewer that connects without ``after_seq``."""
VIEWER_MAX_MESSAGE = 4096
"""Largest message a viewer may send (acks are ~40 bytes)."""
AFTER_SEQ = re.compile(r"[0-9]{1,18}")
"""``after_seq``: ASCII digits only (``str.isdigit`` also takes '²'), short enough for a 64-bit seq."""
LIBRARY_ERRORS: dict[int, type[ProtocolError]] = {
    WSCloseCode.PROTOCOL_ERROR: FramingError,
    WSCloseCode.INVALID_TEXT: InvalidJson,  # a text frame that is not UTF-8 is no JSON (RFC 8259 §8.1)
    WSCloseCode.MESSAGE_TOO_BIG: MessageTooBig,
}
"""The errors aiohttp closes a connection with itself (its ``WebSocketError``
codes), as the livecap errors that explain them."""
PUBLISHER_READ_AHEAD = 4096
"""Messages read from a publisher ahead of the handler (80 s of 20 ms frames, which the rate limit
bounds in bytes); past it reading pauses, so a flood of control messages cannot grow memory."""
LOADING_RETRY_S = 5.0
ACK_INTERVAL_S = 0.25
"""How often a publisher is told what audio it need not send again (when that changed)."""
"""Retry hint while the models load (seconds to a minute; longer on the first start, which builds them)."""
LINGER_S = 2.0
"""How long a connection closed for a broken frame waits for its peer to close (``ExplainingWebSocket``)."""
LINGER_POLL_S = 0.05



def create_app(options: ServerOptions, keys: Keys) -> web.Application:
    app = web.Application()
    app[OPTIONS] = options
    app[KEYS] = keys
    app[METRICS] = metrics = Metrics()
    app[SCHEDULER] = scheduler = Scheduler(options.scheduler("cpu"), metrics)
    defaults = RoomDefaults(options.vad, options.streaming, options.viewer_backlog, Glossary.parse(options.glossary))
    cluster = Cluster.connect(options.redis, options.node_name, metrics, options.lease_s,
                              options.redis_retention_days * 86400) if options.redis else None
    app[ROOMS] = rooms = RoomRegistry(scheduler, defaults, TranscriptStore(options.data_dir / "transcripts"),
                                      options.max_rooms, options.max_viewer_rooms,
                                      LabelStore(options.data_dir / "labels"),
                                      SettingsStore(options.data_dir / "settings"),
                                      RecordingStore(options.data_dir / "recordings", options.recording_retention_days),
                                      OutputHub(metrics), cluster)
    metrics.rooms.set_function(lambda: len(rooms.rooms))
    metrics.publishers.set_function(lambda: rooms.publishers)
    metrics.publisher_capacity.set_function(lambda: scheduler.capacity)
    metrics.step_cost_seconds.set_function(lambda: scheduler.step_cost_s)
    app[CONNECTIONS] = Counter()
    app[SOCKETS] = weakref.WeakSet()
    app[STARTED] = time.monotonic()
    app.cleanup_ctx.append(_engine_lifecycle)
    app.cleanup_ctx.append(_viewer_sweep)
    app.cleanup_ctx.append(_recording_sweep)
    app.cleanup_ctx.append(_output_settings)
    app.cleanup_ctx.append(_cluster_lifecycle)
    app.on_shutdown.append(_going_away)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/ws/ingest/{room}", ingest)
    app.router.add_get("/ws/captions/{room}", captions)
    app.router.add_get("/rooms/{room}/transcript.{fmt}", transcript)
    add_page_routes(app)
    add_operator_routes(app)
    return app


async def _engine_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Load the engines off the event loop (the first start also builds the
    ONNX models) while the server already answers /healthz."""
    options, scheduler = app[OPTIONS], app[SCHEDULER]
    engine_options = EngineOptions(model=options.model, device=options.device, threads=options.threads_per_call,
                                   workers=options.inference_threads,
                                   model_cache=str(options.model_cache) if options.model_cache else None,
                                   extra=options.engine_extra)

    async def load() -> None:
        """Fallback first (small, fast); a primary that fails to load is retried
        with back-off while the fallback serves alone (/readyz: degraded). Each
        engine is warmed up on real speech before it serves (``warm_up``), which
        also gives the first measure of the capacity."""
        started = time.perf_counter()
        speech = read_wav(DEMO_AUDIO).mono_16k()
        step_s = options.streaming.step_s
        if options.fallback_engine not in ("none", options.engine):
            fallback = await asyncio.to_thread(ENGINES[options.fallback_engine], engine_options)
            scheduler.calibrate(await asyncio.to_thread(warm_up, fallback, speech, step_s))
            scheduler.fallback = fallback
        retry_s = 30.0
        while True:
            try:
                primary = await asyncio.to_thread(ENGINES[options.engine], engine_options)
                step_cost_s = await asyncio.to_thread(warm_up, primary, speech, step_s)
                break
            except Exception:
                log.exception("could not load the primary engine %s; retrying in %.0f s", options.engine, retry_s)
                if scheduler.fallback is not None:
                    scheduler.ready.set()
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 600.0)
        faults = Faults(options.inject_primary_delay_s, options.inject_primary_failure_rate)
        if faults.active:
            log.warning("fault injector active on the primary engine: %s", faults)
        scheduler.primary = FaultInjector(primary, faults)
        scheduler.options = options.scheduler(primary.device)
        scheduler.calibrate(step_cost_s)
        scheduler.metrics.engine_healthy.labels(primary.name).set(1)
        scheduler.load_multilingual = functools.partial(_load_multilingual, scheduler, engine_options, options.model,
                                                        options.multilingual_model, speech, step_s)
        if options.languages:
            await scheduler.ensure_engine(None)
        scheduler.ready.set()
        log.info("engines ready in %.1f s: primary %s (%s), fallback %s, latency budget %.2f s",
                 time.perf_counter() - started, primary.name, primary.model_version,
                 scheduler.fallback.name if scheduler.fallback else "none", scheduler.options.latency_budget_s)
        _log_capacity(scheduler)

    loading = asyncio.create_task(load(), name="load-engines")
    yield
    loading.cancel()
    scheduler.close()
    for engine in (scheduler.primary, scheduler.multilingual, scheduler.fallback):
        getattr(engine, "close", lambda: None)()  # worker processes, if the engine has any


async def _load_multilingual(scheduler: Scheduler, options: EngineOptions, model: str, multilingual_model: str,
                             speech: np.ndarray, step_s: float) -> Engine:
    """Load and warm up the multilingual Whisper (off the event loop; the first time also builds it)."""
    started = time.perf_counter()
    engine: Engine = await asyncio.to_thread(ENGINES["whisper-onnx"], dataclasses.replace(options,
                                                                                          model=multilingual_model))
    scheduler.measured(await asyncio.to_thread(warm_up, engine, speech, step_s), engine)
    log.info("multilingual engine %s ready in %.1f s (%d languages; English rooms stay on %s)",
             engine.model_version, time.perf_counter() - started, len(engine.languages), model)
    return engine


async def _viewer_sweep(app: web.Application) -> AsyncIterator[None]:
    """Flow control: a tenth of ``viewer_max_lag_s`` apart (at most a second),
    every viewer further behind than that is closed (``Subscriber.check``)."""
    rooms, max_lag_s = app[ROOMS], app[OPTIONS].viewer_max_lag_s

    async def sweep() -> None:
        while True:
            await asyncio.sleep(min(1.0, max_lag_s / 10))
            now = time.monotonic()
            for room in list(rooms.rooms.values()):
                for viewer in list(room.viewers):
                    viewer.check(now, max_lag_s)

    task = asyncio.create_task(sweep(), name="viewer-sweep")
    yield
    task.cancel()


async def _output_settings(app: web.Application) -> AsyncIterator[None]:
    """Once a second, the outputs at work follow their rooms' settings files, which ``livecap
    settings`` may change while the server runs (the operator API applies its changes at once)."""
    rooms = app[ROOMS]

    async def follow() -> None:
        while rooms.outputs is not None:
            await asyncio.sleep(1.0)
            rooms.outputs.follow(lambda room: rooms.settings_of(room).outputs)

    task = asyncio.create_task(follow(), name="output-settings")
    yield
    task.cancel()


async def _cluster_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """With ``--redis``: write the shared log, keep the leases, publish this node's rooms for
    the operators of every node, and share room settings with the other nodes; at shutdown
    (after the rooms' last finals), write what is owed and let the rooms go."""
    cluster, settings = app[ROOMS].cluster, app[ROOMS].settings
    if cluster is None:
        yield
        return

    def rooms() -> list[dict[str, Any]]:
        mono, wall, fallback = time.monotonic(), time.time(), app[SCHEDULER].fallback
        return [room_state(app, room, mono, wall, fallback.name if fallback else None)
                for room in app[ROOMS].rooms.values() if room.session is not None or room.viewers]

    if settings is not None:
        settings.shared, settings.node = cluster.share, cluster.node
    cluster.start(rooms, app[ROOMS].adopt_settings, app[ROOMS].carry_out)
    log.info("node %s: rooms shared through Redis (lease %g s)", cluster.node, cluster.lease_s)
    yield
    await cluster.close()


async def _recording_sweep(app: web.Application) -> AsyncIterator[None]:
    """Recordings past their retention are deleted at start and every hour."""
    recordings = app[ROOMS].recordings

    async def sweep() -> None:
        while recordings is not None:
            deleted = await asyncio.to_thread(recordings.sweep)
            if deleted:
                log.info("deleted %d recordings older than %g days", deleted, recordings.retention_s / 86400)
            await asyncio.sleep(SWEEP_INTERVAL_S)

    task = asyncio.create_task(sweep())
    yield
    task.cancel()


async def _going_away(app: web.Application) -> None:
    """Shutdown (runs once the listening socket is closed, before the engines
    are): open utterances become final and reach their viewers, then every
    connection gets ``shutting_down`` and a 1001 close instead of a dropped socket, while the rooms'
    outputs deliver what they hold (``outputs.runner.DRAIN_S``)."""
    await app[ROOMS].close()
    error, sockets = ShuttingDown("the server is shutting down; reconnect in a moment"), app[SOCKETS]
    hub = app[ROOMS].outputs
    await asyncio.gather(*(_close_with(ws, error, app[METRICS]) for ws in list(sockets)),
                         hub.close() if hub is not None else asyncio.sleep(0))


def _log_capacity(scheduler: Scheduler) -> None:
    state = scheduler.capacity_state(0)
    if state["basis"] == "max_publishers":
        log.info("capacity: %d publishers at once (max_publishers)", state["publishers"])
        return
    log.info("capacity: %d publishers at once, measured: a decode step takes %.3f s of the engine's time; "
             "%d inference threads at most %.0f%% busy, steps at most every %.1f s (override: max_publishers)",
             state["publishers"], state["step_cost_s"], state["workers"], 100 * state["target_utilization"],
             state["max_step_interval_s"])


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. Says nothing about the engines (that is /readyz)."""
    app = request.app
    return web.json_response({"status": "ok", "version": __version__,
                              "uptime_s": round(time.monotonic() - app[STARTED], 1),
                              "rooms": len(app[ROOMS].rooms), "connections": sum(app[CONNECTIONS].values())})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when captions can be served (the primary is loaded, or
    the fallback serves while it is retried: "degraded"); 503 while loading.
    The body says which engines serve and how the primary is doing."""
    scheduler = request.app[SCHEDULER]
    if not scheduler.ready.is_set():
        return web.json_response({"status": "loading", "engine": request.app[OPTIONS].engine,
                                  "fallback": scheduler.fallback.name if scheduler.fallback else None},
                                 status=503)
    primary, fallback = scheduler.primary, scheduler.fallback
    healthy = primary is not None and scheduler.health.healthy(time.monotonic())
    cluster = request.app[ROOMS].cluster
    return web.json_response({
        "status": "ready" if healthy and (cluster is None or cluster.reachable) else "degraded",
        "cluster": None if cluster is None else {"node": cluster.node, "redis_reachable": cluster.reachable,
                                                 "pending_writes": len(cluster.pending)},
        "engine": primary.name if primary else None, "model_version": primary.model_version if primary else None,
        "device": primary.device if primary else None,
        "primary_healthy": healthy, "fallback": fallback.name if fallback else None,
        "latency_budget_s": scheduler.options.latency_budget_s,
        "capacity": scheduler.capacity_state(request.app[ROOMS].publishers),
    })


async def metrics_endpoint(request: web.Request) -> web.Response:
    registry, cluster = request.app[METRICS].registry, request.app[ROOMS].cluster
    return web.Response(body=generate_latest(registry if cluster is None else NodeLabelled(registry, cluster.node)),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def transcript(request: web.Request) -> web.Response:
    fmt, name = request.match_info["fmt"], room_name(request)
    track, _, fmt = fmt.rpartition(".")
    if fmt not in MEDIA_TYPES or track not in ("", "en"):
        raise web.HTTPNotFound(text="transcript.FORMAT (the words as spoken) or transcript.en.FORMAT (English); "
                                    "formats: txt, vtt, srt, json")
    try:
        viewer_keys = request.app[ROOMS].settings_of(name).viewer_keys
        request.app[KEYS].check("viewer", name, presented_key(request), viewer_keys)
    except LivecapError as error:
        raise web.HTTPForbidden(text=error.message) from None
    lines = await request.app[ROOMS].transcript(name, "en" if track else "original")
    return web.Response(text=export(lines, fmt),
                        content_type=MEDIA_TYPES[fmt], charset="utf-8")


async def _close_with(ws: web.WebSocketResponse, error: LivecapError, metrics: Metrics) -> None:
    """The one place where an error becomes an error event and a close code."""
    if not ws.closed:
        metrics.disconnects.labels(error.code).inc()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json(error.to_event())
        await ws.close(code=error.close_code, message=error.code.encode())


class ExplainingWebSocket(web.WebSocketResponse):
    """A WebSocket whose every close that can carry an explanation does.

    aiohttp closes a connection itself when a frame breaks RFC 6455 (reserved
    bits or opcodes, a bad continuation, text that is not UTF-8, a frame over
    ``max_msg_size``) or cannot be read (compressed data that does not
    inflate): ``receive()`` calls ``close()`` from inside its ``except``
    clause for the reader's exception (aiohttp 3.14, ``web_ws.py``). Here
    ``close()`` sees that exception and hands it to ``_close_with`` first,
    so the client gets an ``error`` event with a documented code, as for
    livecap's own errors.

    Such a peer may still be sending the rest of an oversized frame. Closing
    the socket with its bytes unread makes the kernel answer with a reset,
    which can destroy the error and the close frame before the peer reads
    them (seen in the soak's fuzzer). So the close lingers, as HTTP servers'
    "lingering close" does (RFC 9112 section 9.6): the write side is shut
    after the close frame, what still arrives is read and dropped (aiohttp
    drops it once closing), and the socket closes when the peer has closed
    its side, or after ``LINGER_S``.
    """

    def __init__(self, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metrics = metrics
        self._explaining = False

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if self._explaining or (error := self._library_error()) is None:
            return await super().close(code=code, message=message, drain=drain)
        self._explaining = True  # _close_with calls close() again
        await _close_with(self, error, self._metrics)
        await self._linger()
        return True

    def _close_transport(self) -> None:
        if not self._explaining:  # else _linger closes it
            super()._close_transport()

    def _reset_heartbeat(self) -> None:
        """aiohttp 3.14 re-arms the heartbeat when data arrives, even after the
        close (a peer's close frame, what a lingering close reads): the timer then
        held the whole connection for 1.5 heartbeats, ~10 KB per refused
        connection, which a flood of them made into memory growth."""
        if not self.closed:
            super()._reset_heartbeat()

    async def _linger(self) -> None:
        transport = self._req.transport if self._req is not None else None
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        deadline = time.monotonic() + LINGER_S
        while not transport.is_closing() and time.monotonic() < deadline:
            await asyncio.sleep(LINGER_POLL_S)
        transport.close()

    def _library_error(self) -> LivecapError | None:
        """The error aiohttp is closing this connection for, if it is one."""
        exception = sys.exception()
        if isinstance(exception, WebSocketError):
            return LIBRARY_ERRORS.get(exception.code, FramingError)(str(exception))
        if exception is not None and exception is self.exception() and not isinstance(exception, ConnectionError):
            return FramingError(f"unreadable frame: {exception!r}")  # the reader failed otherwise
        return None


async def _accept(request: web.Request, role: Role) -> tuple[web.WebSocketResponse, Room | LivecapError]:
    """Upgrade, then check limits and key: errors are reported on the socket,
    since browsers cannot read the status of a refused upgrade."""
    options = request.app[OPTIONS]
    max_size = VIEWER_MAX_MESSAGE if role == "viewer" else options.max_message_bytes * 2
    # Viewer frames are not compressed (no permessage-deflate, RFC 7692): a compressor per
    # viewer holds 256 KB and deflates every event again (2,000 viewers: 0.5 GB and ~40 ms of
    # event loop per event, measured). Viewers' pongs confirm what they received, so _view
    # answers their pings and reads their pongs itself.
    viewer = role == "viewer"
    ws = ExplainingWebSocket(request.app[METRICS], heartbeat=options.heartbeat_s, max_msg_size=max_size,
                             compress=not viewer, autoping=not viewer)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    connections, peer = request.app[CONNECTIONS], request.remote or "?"
    connections[peer] += 1
    request.app[METRICS].connections.labels(role).inc()
    try:
        if connections[peer] > options.max_connections_per_ip:
            raise RateLimited(f"more than {options.max_connections_per_ip} connections from one address")
        name, rooms = request.match_info["room"], request.app[ROOMS]
        request.app[KEYS].check(role, name, presented_key(request), rooms.settings_of(name).viewer_keys)
        return ws, rooms.get(name, publisher=role == "publisher")
    except LivecapError as error:
        return ws, error


def _release(request: web.Request, role: Role) -> None:
    connections, peer = request.app[CONNECTIONS], request.remote or "?"
    connections[peer] -= 1
    if connections[peer] <= 0:
        del connections[peer]
    request.app[METRICS].connections.labels(role).dec()
    if MISSED_PONG in request:
        request.app[METRICS].disconnects.labels(HEARTBEAT_TIMEOUT).inc()
        log.info("room %s: %s %s dropped: no answer to a ping within %g s", request.match_info["room"], role, peer,
                 request.app[OPTIONS].heartbeat_s / 2,
                 extra={"room": request.match_info["room"], "peer": peer, "code": HEARTBEAT_TIMEOUT})
        if request.transport is not None:  # what it has not read would keep the socket open
            request.transport.abort()


async def ingest(request: web.Request) -> web.WebSocketResponse:
    ws, room = await _accept(request, "publisher")
    try:
        if isinstance(room, LivecapError):
            await _close_with(ws, room, request.app[METRICS])
            return ws
        await _publish(request, ws, room)
    finally:
        _release(request, "publisher")
    return ws


_Received = tuple[float, list[IngestEvent]] | LivecapError | None
"""What the reader passes on: (arrival, events) of a frame, then the error that ended reading or None."""


async def _publish(request: web.Request, ws: web.WebSocketResponse, room: Room) -> None:
    options, scheduler, metrics = request.app[OPTIONS], request.app[SCHEDULER], request.app[METRICS]
    # The publisher sees its room's captions too, like any viewer.
    subscriber = Subscriber(options.viewer_backlog, sent_seq=room.captions.seq,
                            notify=lambda message: _spawn(_answer(ws, room, message)))
    room.broadcaster.subscribers.add(subscriber)
    await _tell_state(ws, room)
    writer = asyncio.create_task(_write_captions(ws, subscriber))
    acker = asyncio.create_task(_acknowledge(ws, room, lambda: session))
    inbox: asyncio.Queue[_Received] = asyncio.Queue(PUBLISHER_READ_AHEAD)
    reader = asyncio.create_task(_read_publisher(request, ws, IngestProtocol(options.ingest_limits), inbox,
                                                 options.idle_timeout_s))
    session: PublisherSession | None = None
    try:
        if not scheduler.ready.is_set():
            raise ServerBusy("the speech models are still loading; try again shortly", LOADING_RETRY_S)
        while (item := await inbox.get()) is not None:
            if isinstance(item, LivecapError):
                raise item
            now, events = item
            for event in events:
                match event:
                    case Started(stream):
                        language = stream.language or room.settings.language
                        translate = stream.translate or room.settings.translate
                        candidates = room.settings.candidates if stream.candidates is None else stream.candidates
                        request.app[ROOMS].admit(room, language)
                        await scheduler.prepare(language, translate)
                        await room.acquire()  # --redis: the room moves to this node
                        session = await room.start_session(now, lambda error: _close_with(ws, error, metrics),
                                                           language, translate, candidates)
                        skip_ms = 0
                        if stream.resend is not None:
                            skip_ms = await room.skip(stream.resend)
                            room.resent()
                        log.info("room %s: publisher session %s started", room.name, session.id,
                                 extra={"room": room.name, "session": session.id, "peer": request.remote})
                        await _answer(ws, room, {"type": "ready", "session": session.id,
                                                 "offset": round(session.offset, 3),
                                                 **({"skip_ms": skip_ms} if stream.resend is not None else {})})
                    case AudioReceived(samples, arrival) if session is not None and room.session is session:
                        session.push_audio(samples, arrival)
                    case Stopped() if session is not None:
                        await session.stop(now)
                        _log_session_end(room, session, "stop")
                        session = None
                        await room.release()  # --redis: another node may take the room at once
                        await subscriber.wait_sent(room.captions.seq)
                        await _answer(ws, room, {"type": "stopped"})
                    case PublisherWarning() as warning:
                        log.warning("room %s: warned the publisher: %s (%s)", room.name, warning.code,
                                    warning.message, extra={"room": room.name, "code": warning.code})
                        metrics.publisher_warnings.labels(warning.code).inc()
                        await _answer(ws, room, warning.to_event())
    except LivecapError as error:
        log.info("room %s: closing the publisher: %s (%s)", room.name, error.code, error.message,
                 extra={"room": room.name, "session": session.id if session else None, "code": error.code})
        await _close_with(ws, error, metrics)
    except Exception:
        log.exception("ingest for room %s failed", room.name,
                      extra={"room": room.name, "session": session.id if session else None})
        await _close_with(ws, InternalError("internal error; see the server log"), metrics)
    finally:
        reader.cancel()
        if session is not None:
            if room.session is session:  # a vanished publisher's last utterance still becomes final
                await session.stop(time.monotonic())
            _log_session_end(room, session, "disconnect")
        room.broadcaster.subscribers.discard(subscriber)
        writer.cancel()
        acker.cancel()
        await room.release()


async def _acknowledge(ws: web.WebSocketResponse, room: Room,
                       current: Callable[[], PublisherSession | None]) -> None:
    """Tell the publisher, each ``ACK_INTERVAL_S`` it changed, how much of the audio of its session
    (``current()``) it need not send again after a lost connection (``acknowledged_ms``)."""
    told: tuple[str | None, int] = (None, 0)
    while not ws.closed:
        await asyncio.sleep(ACK_INTERVAL_S)
        session = current()
        if session is None or room.session is not session or ws.closed:  # nothing after a close frame
            continue
        acknowledged = (session.id, session.acknowledged_ms)
        if acknowledged != told and acknowledged[1] > 0:
            told = acknowledged
            await _answer(ws, room, {"type": "ack", "session": session.id, "audio_ms": acknowledged[1]})


async def _tell_state(ws: web.WebSocketResponse, room: Room) -> None:
    """A page connecting to a room that records, or speaks another language than English, is told so
    at once (``Room.state``)."""
    room.announce()
    if room.worth_telling:
        await _answer(ws, room, room.state())


async def _answer(ws: web.WebSocketResponse, room: Room, message: Mapping[str, object]) -> None:
    """Reply to a client, between the captions (a frame is written whole: writes do not interleave).
    A client that vanishes (laptop lid, Wi-Fi) is normal, not an error: what a publisher sent
    before is still transcribed, its open utterance becomes final for the viewers and the
    transcript (``finally`` in ``_publish``), the reader sees the close; only the reply is lost."""
    try:
        await ws.send_json(message)
    except ConnectionError:
        log.info("room %s: the client went away before it got %r", room.name, message.get("type"),
                 extra={"room": room.name})


async def _read_publisher(request: web.Request, ws: web.WebSocketResponse, protocol: IngestProtocol,
                          inbox: asyncio.Queue[_Received], idle_timeout: float) -> None:
    """Read a publisher's socket into ``inbox`` for as long as it is open, also while the handler
    awaits a final or a room take-over: aiohttp answers pings only inside ``receive()``, and a
    client whose pings go unanswered gives up on a healthy connection (websockets: 1011 keepalive
    ping timeout). Frames are parsed and stamped with their arrival time here."""
    ending: LivecapError | None = None
    try:
        while (message := await _receive(request, ws, idle_timeout)) is not None:
            now = time.monotonic()
            await inbox.put((now, protocol.receive_text(message, now) if isinstance(message, str) else
                                  protocol.receive_bytes(message, now)))
    except LivecapError as error:
        ending = error
    await inbox.put(ending)


def _log_session_end(room: Room, session: PublisherSession, how: str) -> None:
    log.info("room %s: publisher session %s ended (%s) after %.1f s of audio", room.name, session.id, how,
             session.samples / 16000, extra={"room": room.name, "session": session.id})


async def _receive(request: web.Request, ws: web.WebSocketResponse, idle_timeout: float) -> str | bytes | None:
    """Next text or binary payload; None when the client closed or is gone."""
    try:
        message = await ws.receive(timeout=idle_timeout)
    except TimeoutError:
        raise IdleTimeout(f"nothing received for {idle_timeout:g} s") from None
    if message.type == WSMsgType.TEXT:
        return str(message.data)
    if message.type == WSMsgType.BINARY:
        return bytes(message.data)
    if message.type == WSMsgType.ERROR and not _missed_pong(request, message):
        raise ProtocolError(f"WebSocket error: {ws.exception()}")
    return None


def _missed_pong(request: web.Request, message: WSMessage) -> bool:
    """Whether ``message`` says aiohttp's heartbeat dropped the peer (no pong
    within ``heartbeat_s / 2``); ``_release`` then counts and logs it."""
    if message.type == WSMsgType.ERROR and isinstance(message.data, TimeoutError):
        request[MISSED_PONG] = True
        return True
    return False


async def _write_captions(ws: web.WebSocketResponse, subscriber: Subscriber) -> None:
    try:
        while (item := await subscriber.next()) is not None:
            await ws.send_str(item.text)
            await subscriber.mark_sent(item.event.seq)
    except ConnectionError:
        pass
    finally:
        await subscriber.mark_sent(closed=True)


async def captions(request: web.Request) -> web.WebSocketResponse:
    ws, room = await _accept(request, "viewer")
    try:
        if isinstance(room, LivecapError):
            await _close_with(ws, room, request.app[METRICS])
            return ws
        await _view(request, ws, room)
    finally:
        _release(request, "viewer")
    return ws


async def _view(request: web.Request, ws: web.WebSocketResponse, room: Room) -> None:
    options, metrics = request.app[OPTIONS], request.app[METRICS]
    try:
        after_seq = _after_seq(request)
        track = request.query.get("track", "original")
        if track not in TRACKS:
            raise ProtocolError(f"track must be one of {', '.join(TRACKS)}")
        if len(room.viewers) >= options.max_viewers_per_room:
            raise RateLimited(f"room {room.name!r} has its maximum of {options.max_viewers_per_room} viewers")
    except LivecapError as error:
        await _close_with(ws, error, metrics)
        return
    await room.follow()  # --redis: a room another node captions
    # Lines no longer in memory are read first; then the history is snapshot and the viewer
    # subscribed in one step (no await between): every final is either replayed or queued
    # live, never both.
    archived = await room.archived(after_seq) if after_seq is not None else ()
    history = room.captions.history_after(after_seq, archived) if after_seq is not None else \
        room.captions.recent(DEFAULT_HISTORY)
    partial = room.captions.current_partial
    if partial is not None and (after_seq is None or partial.seq > after_seq):
        history = [*history, partial]
    now = time.monotonic()
    subscriber = Subscriber(options.viewer_backlog,
                            replay=[Outgoing.of(event, now) for event in history if event.on_track(track)],
                            ping=lambda payload: _spawn(_ping(ws, payload)),
                            notify=lambda message: _spawn(_answer(ws, room, message)), track=track)
    inbox = ViewerInbox(live_from=room.captions.seq)
    try:
        room.add_viewer(subscriber)
    except LivecapError as error:
        await _close_with(ws, error, metrics)
        return
    await _tell_state(ws, room)
    # Three tasks: the writer, the reader, and this one, which alone closes the connection.
    writer = asyncio.create_task(_write_captions(ws, subscriber))
    reader = asyncio.create_task(_read_acks(request, ws, room, subscriber, inbox))
    closing = asyncio.create_task(subscriber.closed_by_server())
    try:
        await asyncio.wait((reader, closing), return_when=asyncio.FIRST_COMPLETED)
        if closing.done():
            reader.cancel()  # ws.close() below reads until the viewer's close frame
            await asyncio.wait((reader,))
            await _close_viewer(request, ws, room, closing.result())
    finally:
        room.remove_viewer(subscriber)
        for task in (writer, reader, closing):
            task.cancel()


async def _read_acks(request: web.Request, ws: web.WebSocketResponse, room: Room, subscriber: Subscriber,
                     inbox: ViewerInbox) -> None:
    """Until the viewer leaves: its acks and pongs confirm what it got, its
    flags and ratings are answered (``flagged``, ``rated``, or a refusal that
    closes nothing); anything else has it closed (``subscriber.disconnect``)."""
    viewer = secrets.token_hex(6)  # anonymous, one per connection: one flag per line, one rating kept
    try:
        async for message in ws:
            if _missed_pong(request, message):
                return
            now = time.monotonic()
            if message.type == WSMsgType.TEXT:
                try:
                    received = inbox.receive_text(str(message.data), now, subscriber.sent_seq)
                    match received:
                        case ViewerAck(seq, age_s):
                            subscriber.acknowledged(seq)
                            room.acknowledged(seq, now, age_s)
                        case ViewerFlag(seq):
                            _spawn(_label(request, ws, room, "flag", {"seq": seq, "viewer": viewer}))
                        case ViewerRating(stars):
                            _spawn(_label(request, ws, room, "rate", {"stars": stars, "viewer": viewer}))
                except Refused as refusal:
                    request.app[METRICS].refusals.labels(refusal.code).inc()
                    await _answer(ws, room, refusal.to_event())
            elif message.type == WSMsgType.BINARY:
                inbox.receive_bytes(bytes(message.data), now)
            elif message.type == WSMsgType.PING:
                await ws.pong(message.data)
            elif message.type == WSMsgType.PONG:
                subscriber.ponged(message.data)
    except LivecapError as error:
        subscriber.disconnect(error)


async def _label(request: web.Request, ws: web.WebSocketResponse, room: Room, action: str,
                 body: dict[str, Any]) -> None:
    """A viewer's flag or rating, taken where the room is captioned (``RoomRegistry.on_owner``:
    its labels are kept there), then answered; the viewer stays connected whatever the answer,
    and its pongs are read meanwhile (with ``--redis`` an answer may take ``cluster.REPLY_S``)."""
    try:
        _, answer = await request.app[ROOMS].on_owner(action, room.name, body)
    except ServerBusy as busy:  # --redis: the node captioning the room did not answer
        request.app[METRICS].refusals.labels(busy.code).inc()
        answer = {**busy.to_event(), "type": "refused"}
    await _answer(ws, room, answer)


async def _close_viewer(request: web.Request, ws: web.WebSocketResponse, room: Room, error: LivecapError) -> None:
    """The error event and the close frame queue behind what the viewer has
    not read, and the connection stays open until the viewer answers the
    close; one that has not ``viewer_max_lag_s`` later is cut off (TCP reset),
    so what it left unread leaves memory."""
    transport = request.transport
    if transport is None:
        return
    cut_off = asyncio.get_running_loop().call_later(request.app[OPTIONS].viewer_max_lag_s, transport.abort)
    if isinstance(error, ViewerTooSlow):
        log.info("room %s: closing viewer %s (%d bytes unsent here): %s", room.name, request.remote,
                 unsent_bytes(transport), error.message,
                 extra={"room": room.name, "peer": request.remote, "code": error.code})
    try:
        await _close_with(ws, error, request.app[METRICS])
    finally:
        cut_off.cancel()


async def _ping(ws: web.WebSocketResponse, payload: bytes) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.ping(payload)


_background: set[asyncio.Task[None]] = set()


def _spawn(coroutine: Coroutine[None, None, None]) -> None:
    """Run a task from synchronous code, keeping a reference until it ends."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _after_seq(request: web.Request) -> int | None:
    value = request.query.get("after_seq")
    if value is None:
        return None
    if not AFTER_SEQ.fullmatch(value):
        raise ProtocolError("after_seq must be a non-negative integer of at most 18 digits")
    return int(value)
