"""Scale-out: livecap nodes sharing rooms through Redis (``--redis``).

Each room has at most one *owner*, the node its publisher streams to: it
holds the room's lease in Redis, runs the room's VAD and recognition, and is
the only node that gives out the room's seqs. It appends every caption event
to the room's Redis streams. Every other node with viewers of the room
*follows* it: it reads the live stream and publishes the events to its own
viewers as if it had made them, keeping its own copy of the room's lines in
its transcript file, so that resume (``after_seq``), export and a take-over
work on any node. A node whose Redis is unreachable serves its own rooms on
and keeps what it owes Redis in order, to write when Redis is back.

Keys (``{room}`` is a hash tag: a room's keys stay on one Redis Cluster shard):

- ``livecap:{room}:live``: every event, stream id ``SEQ-0``, and every change of the room's
  state (``Room.state``) and its end by an operator after event SEQ, ``SEQ-1``, ``SEQ-2``…;
  about the last ``LIVE_EVENTS`` kept (partials are transient);
- ``livecap:{room}:lines``: finals, corrections and translations, id
  ``SEQ-0``; kept ``retention`` after the room's last line;
- ``livecap:{room}:seq``: the highest seq ceiling reserved (``captions.SeqCounter``);
- ``livecap:{room}:state``: the room's state as its pages are told it (recording, language);
- ``livecap:{room}:covered``: how much of each publisher session's audio its finals cover;
- ``livecap:{room}:owner``: the owner's node id, with a lease (``lease_s``);
- ``livecap:{room}:claim``: the node waiting to take the room over (the newest publisher);
- ``livecap:{room}:settings``: the room's settings (``settings.RoomSettings``), a hash of one
  JSON value per setting, as last changed on any node; each change is appended to the stream
  ``livecap:settings``, which each node reads on from ``livecap:node:{node}:settings-read``;
- ``livecap:node:{node}``: a node's rooms as the dashboard shows them, expiring;
- ``livecap:inbox:{node}``: operators' requests forwarded to the node (``forward``), each
  answered on its own ``livecap:reply:…`` list.

Stream ids are the seqs, so Redis itself refuses an event whose seq is not
above every seq the room's log holds: a node that lost its lease without
knowing it cannot write over its successor's events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis import asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from livecap.captions import LINE_KINDS, CaptionEvent
from livecap.client import Backoff
from livecap.errors import InternalError, InvalidRequest, PublisherReplaced, RoomElsewhere, ServerBusy
from livecap.metrics import Metrics

log = logging.getLogger(__name__)

LIVE_EVENTS = 2000
"""Events kept in a room's live stream: minutes of partials, far more than a follower lags."""
WRITE_BATCH = 500
"""Events written to Redis in one round trip."""
TICK_S = 0.2
"""How often an owner renews its leases and looks for claims: a publisher moving to another node
waits about this long for the room to be let go."""
RETRY_S, MAX_BACKOFF_S = 0.05, 2.0
"""Waits between two tries to reach an unreachable Redis: exponential from the first to the second,
with jitter (``client.Backoff``)."""
CLAIM_WAIT_S = 2.0
"""Past the lease, how long a claiming node waits for an owner that neither renews nor lets go."""
COVERED_MS = 3_600_000
"""How long Redis remembers what a publisher session's finals cover: a reconnection comes within seconds."""
NODE_STATE_S = 1.0
"""How often a node publishes its rooms for the operators (they expire after 5 times that)."""
SETTINGS_LOG = "livecap:settings"
"""Stream of the changes of room settings, in order: ``room``, ``node`` (that made it) and ``audit``
(the change's audit entry, JSON); about the last ``SETTINGS_CHANGES`` kept."""
SETTINGS_CHANGES = 10_000
REPLY_S = 10.0
"""How long a node waits for another to answer a request it forwarded (``forward``)..."""
START_S = 2.0
"""...which that node carries out only if it reads it this soon after: an end drains its viewers for
up to ``rooms.END_DRAIN_S`` and must be answered within ``REPLY_S``."""
REPLY_PREFIX = "livecap:reply:"
MAX_AUDIT_CHARS = 65_536
"""Largest audit entry a node copies from the settings log (a change of 500 glossary terms is ~30 KB)."""
INBOX_REQUESTS = 1000
ENDED_FRESH_S = 10.0
"""A room's end in its live stream closes a follower's viewers only this soon after: a node that
follows the room later (its next publisher's) must not take an old end for a new one."""

_RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not owner then
  if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return {0, redis.call('GET', KEYS[2])}
  end
  if tonumber(redis.call('GET', KEYS[3]) or '0') > tonumber(ARGV[3]) then return {0, ''} end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return {0, owner}
end
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[3]) then redis.call('SET', KEYS[3], ARGV[3]) end
return {1, redis.call('GET', KEYS[2]) or false}
"""
"""Renew the lease KEYS[1] of node ARGV[1] for ARGV[2] ms, or take it again if it lapsed (a Redis
outage, this node stalled) and no other node claims the room (KEYS[2]) or reserved seqs above this
node's ceiling ARGV[3] meanwhile (it held the room while this node stalled: this node is fenced off),
and raise the room's seq ceiling KEYS[3] to ARGV[3] (Redis may have lost it); {1, claimer or false}
or {0, the node that has it, '' if none}."""

_TAKE = """
if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""
"""Take the lease KEYS[1] for node ARGV[1] (ARGV[2] ms) if nobody holds it and no other node claims
the room (KEYS[2]: a publisher waiting to take it over goes first); 1 if this node holds it now."""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RESERVE = """
local ceiling = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > ceiling then redis.call('SET', KEYS[1], ARGV[1]) return tonumber(ARGV[1]) end
return ceiling
"""
"""Raise the room's reserved seq ceiling KEYS[1] to ARGV[1] (never lower it); the ceiling now."""


def key(room: str, what: str) -> str:
    return f"livecap:{{{room}}}:{what}"


def room_of(settings_key: str) -> str:
    """The room of a ``livecap:{room}:settings`` key."""
    return settings_key.removeprefix("livecap:{").removesuffix("}:settings")


def share_settings(pipe: Any, room: str, node: str, changed: dict[str, Any], audit: dict[str, Any],
                   whole: dict[str, Any]) -> None:
    """Queue on a Redis pipeline (async or not) the commands that give every node the settings
    ``changed`` by ``node`` (each as kept in files, secrets included): stored in the room's hash,
    whose missing settings (Redis lost its data, the room's settings were made before the node
    joined) take ``node``'s (``whole``), then logged with the change's ``audit`` entry."""
    settings = key(room, "settings")
    for name, value in whole.items():
        if name not in changed:
            pipe.hsetnx(settings, name, json.dumps(value))
    if changed:
        pipe.hset(settings, mapping={name: json.dumps(value) for name, value in changed.items()})
    pipe.xadd(SETTINGS_LOG, {"room": room, "node": node, "audit": json.dumps(audit)}, maxlen=SETTINGS_CHANGES,
              approximate=True)


def node_key(node: str) -> str:
    return f"livecap:node:{node}"


def inbox_key(node: str) -> str:
    return f"livecap:inbox:{node}"


def entry_id(seq: int) -> str:
    return f"{seq}-0"


Entries = list[tuple[str, dict[str, str]]]
"""Stream entries as the client returns them (``decode_responses``): (id, fields)."""


def entries(value: Any) -> Entries:
    """Entries of XRANGE, XREVRANGE or one stream of XREAD (redis-py leaves them untyped)."""
    return cast(Entries, value or [])


def seq_of(entry: str) -> int:
    return int(entry.split("-")[0])


def encode(event: CaptionEvent, wall: float) -> dict[Any, Any]:
    """A stream entry's fields: the event as viewers get it, and the Unix time it was made."""
    return {"m": json.dumps(event.to_message()), "t": f"{wall:.3f}"}


def decode(fields: dict[str, str]) -> tuple[CaptionEvent, float]:
    return CaptionEvent.from_message(json.loads(fields["m"])), float(fields.get("t", "0"))


@dataclass(frozen=True, slots=True)
class Pending:
    """Something a node owes Redis, in the order it happened."""

    room: str
    kind: Literal["event", "reserve", "cover", "state", "ended", "settings"]
    seq: int
    """The event's seq, the ceiling reserved, or the milliseconds a session's finals cover."""
    session: str = ""
    """Of ``cover``: the publisher session."""
    fields: dict[Any, Any] | None = None
    line: bool = False
    """A final, correction or translation: kept in the lines stream too."""


Adopt = Callable[[str, dict[str, Any], dict[str, Any] | None], Coroutine[Any, Any, None]]
"""Called with (room, its settings as kept in files, the audit entry of the change or None) for
settings changed on another node (``rooms.RoomRegistry.adopt_settings``)."""
Answer = tuple[int, dict[str, Any]]
"""An operator's request carried out: its HTTP status and JSON body."""
Handler = Callable[[str, str, dict[str, Any]], Coroutine[Any, Any, Answer]]
"""Carries out (action, room, body), a request another node forwarded (``Cluster.forward``)."""
Lost = Callable[[str, str], Coroutine[Any, Any, None]]
"""Called with (room, the node that has it now) when this node lost a room it owned; the node is
empty when this one was fenced off (it stalled past its lease while another took the room)."""


@dataclass(frozen=True, slots=True)
class Owned:
    """A room whose lease this node holds."""

    lost: Lost
    ceiling: Callable[[], int]
    """The room's seq ceiling here: kept in Redis at each renewal, should Redis have lost it."""


class Cluster:
    """This node's link to the others: the log it writes, the leases it holds, the rooms it follows.

    ``redis``: a client with ``decode_responses=True``; ``node``: this node's id, unique in the
    cluster; ``lease_s``: how long an owner's lease lasts without renewal (the longest a publisher
    waits for a dead owner's room); ``retention_s``: how long a room's lines are kept after its last.
    """

    def __init__(self, redis: aioredis.Redis, node: str, metrics: Metrics, lease_s: float = 3.0,
                 retention_s: float = 30 * 86400) -> None:
        self.redis = redis
        self.node = node
        self.metrics = metrics
        self.lease_s = lease_s
        self.retention_s = retention_s
        self.owned: dict[str, Owned] = {}
        """Rooms whose lease this node holds, with what to do when it loses one."""
        self.pending: collections.deque[Pending] = collections.deque()
        self._wake = asyncio.Event()
        self._written = asyncio.Event()
        self._sending = 0
        """How many of the first ``pending`` are being written now."""
        self.written: dict[str, int] = {}
        """The highest seq of each room Redis holds from this node (or held already)."""
        self.reachable = True
        """Whether the last call to Redis got through."""
        self.last_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._losing: set[asyncio.Task[None]] = set()
        self._answering: set[asyncio.Task[None]] = set()
        self._reserve = redis.register_script(_RESERVE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._take = redis.register_script(_TAKE)
        metrics.cluster_pending.set_function(lambda: len(self.pending))
        metrics.cluster_reachable.set_function(lambda: 1.0 if self.reachable else 0.0)

    @classmethod
    def connect(cls, url: str, node: str, metrics: Metrics, lease_s: float, retention_s: float) -> Cluster:
        """A cluster link to the Redis at ``url`` (``redis://host:port/db``); nothing is sent yet."""
        redis = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=2.0,
                                        socket_connect_timeout=2.0, health_check_interval=10)
        return cls(redis, node, metrics, lease_s, retention_s)

    def start(self, rooms: Callable[[], Sequence[dict[str, Any]]], adopt: Adopt, handle: Handler) -> None:
        """Start writing the log, renewing leases, publishing ``rooms()`` for the operators,
        passing room settings changed on other nodes to ``adopt`` and requests they forward
        to ``handle``."""
        self._tasks = [asyncio.create_task(self._write(), name="cluster-writer"),
                       asyncio.create_task(self._keep_leases(), name="cluster-leases"),
                       asyncio.create_task(self._publish_rooms(rooms), name="cluster-rooms"),
                       asyncio.create_task(self._watch_settings(adopt), name="cluster-settings"),
                       asyncio.create_task(self._serve(handle), name="cluster-inbox")]

    async def close(self, drain_s: float = 3.0) -> None:
        """Write what is owed (for at most ``drain_s``), let go of the rooms, stop."""
        if self.pending:
            await self.flush(None, drain_s)
        for room in list(self.owned):
            await self.release(room)
        for task in (*self._tasks, *self._answering):
            task.cancel()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(node_key(self.node))
        await self.redis.aclose()

    # ---- the log (owner)

    def append(self, event: CaptionEvent) -> None:
        """Owe Redis ``event`` (this node made it): written in order, retried until Redis takes it."""
        self._owe(Pending(event.room, "event", event.seq, fields=encode(event, time.time()),
                          line=event.kind in LINE_KINDS))

    def reserved(self, room: str, ceiling: int) -> None:
        """Owe Redis the room's new seq ceiling."""
        self._owe(Pending(room, "reserve", ceiling))

    def tell(self, room: str, state: dict[str, Any], after: int) -> None:
        """Owe Redis the room's new state (``Room.state``: recording, language), told after event ``after``."""
        self._owe(Pending(room, "state", after, fields={"room": json.dumps(state)}))

    def ended(self, room: str, after: int) -> None:
        """Owe Redis the room's end by an operator here, after event ``after``: the nodes that
        follow it close their viewers (``follow``)."""
        self._owe(Pending(room, "ended", after, fields={"ended": f"{time.time():.3f}"}))

    async def ended_last(self, room: str) -> bool:
        """Whether the last thing in the room's log is its end by an operator (no event since)."""
        for _, fields in entries(await self.redis.xrevrange(key(room, "live"), count=100)):
            if "ended" in fields or "m" in fields:
                return "ended" in fields
        return False

    async def room_state(self, room: str) -> dict[str, Any] | None:
        """The room's state as its node last told it."""
        value = await self.redis.get(key(room, "state"))
        return cast(dict[str, Any], json.loads(value)) if value else None

    def share(self, room: str, changed: dict[str, Any], audit: dict[str, Any], whole: dict[str, Any]) -> None:
        """Owe Redis room settings changed on this node (``settings.SettingsStore.shared``), with
        the audit entry of the change and the room's settings here: every node takes them
        (``_watch_settings``)."""
        self._owe(Pending(room, "settings", 0, fields={"changed": changed, "audit": audit, "whole": whole}))

    def cover(self, room: str, session: str, ms: int) -> None:
        """Owe Redis how much of a publisher session's audio its finals cover (``Room.covered``)."""
        self._owe(Pending(room, "cover", ms, session=session))

    async def covered(self, room: str, session: str) -> int | None:
        value = await self.redis.hget(key(room, "covered"), session)
        return int(value) if value is not None else None

    def _owe(self, item: Pending) -> None:
        if not self.reachable and len(self.pending) > self._sending and _superseded(self.pending[-1], item):
            self.pending.pop()  # Redis is out: a partial the next one replaces need not wait with the finals
        self.pending.append(item)
        self._wake.set()

    async def flush(self, room: str | None, limit_s: float) -> bool:
        """Wait until what is owed for ``room`` (None: every room) is written, for at most ``limit_s``."""
        deadline = time.monotonic() + limit_s
        while any(room is None or p.room == room for p in self.pending):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._written.clear()
            try:
                await asyncio.wait_for(self._written.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def _write(self) -> None:
        backoff = Backoff(RETRY_S, MAX_BACKOFF_S)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                batch = [self.pending[i] for i in range(min(WRITE_BATCH, len(self.pending)))]
                self._sending = len(batch)
                try:
                    refused = await self._send(batch)
                except (RedisError, OSError) as error:
                    self._sending = 0
                    await self._retry(error, backoff)
                    continue
                self._reached(backoff)
                for item in batch:
                    self.pending.popleft()
                    if item.kind == "event" and item not in refused:
                        self.written[item.room] = max(self.written.get(item.room, 0), item.seq)
                self._sending = 0
                self._written.set()

    async def _send(self, batch: Sequence[Pending]) -> list[Pending]:
        """One round trip. An event Redis already holds (a retry of a write that got through) or
        whose seq is not above the log's last (a successor wrote it) is left out, and counted;
        returned: the events of the second kind, which are not durable (``Room.durable_seq``: the
        publisher is not told their audio is safe, and sends it again to the successor)."""
        retention_ms = int(self.retention_s * 1000)
        events: dict[int, Pending] = {}
        """Each event's XADD to the live stream, by where it is in the pipeline."""
        async with self.redis.pipeline(transaction=False) as pipe:  # reset (its connection freed) on any exit
            for item in batch:
                if item.kind == "reserve":
                    await self._reserve(keys=[key(item.room, "seq")], args=[item.seq], client=pipe)
                elif item.kind == "cover":
                    pipe.hset(key(item.room, "covered"), item.session, item.seq)
                    pipe.pexpire(key(item.room, "covered"), COVERED_MS)
                elif item.kind in ("state", "ended"):  # between events: stream id SEQ-1, SEQ-2, … after event SEQ
                    assert item.fields is not None
                    pipe.xadd(key(item.room, "live"), item.fields, id=f"{item.seq}-*", maxlen=LIVE_EVENTS,
                              approximate=True)
                    if item.kind == "state":
                        pipe.set(key(item.room, "state"), item.fields["room"], px=retention_ms)
                elif item.kind == "settings":
                    assert item.fields is not None
                    share_settings(pipe, item.room, self.node, item.fields["changed"], item.fields["audit"],
                                   item.fields["whole"])
                else:
                    assert item.fields is not None
                    events[len(pipe)] = item
                    pipe.xadd(key(item.room, "live"), item.fields, id=entry_id(item.seq), maxlen=LIVE_EVENTS,
                              approximate=True)
                    if item.line:
                        pipe.xadd(key(item.room, "lines"), item.fields, id=entry_id(item.seq))
                        pipe.pexpire(key(item.room, "lines"), retention_ms)
            results = await pipe.execute(raise_on_error=False)  # the pipeline loads the scripts Redis lacks
        skipped = []
        for index, result in enumerate(results):
            if isinstance(result, ResponseError):
                if "equal or smaller" not in str(result):
                    log.error("Redis refused a write: %s", result)
                elif index in events:
                    self.metrics.cluster_events_skipped.inc()
                    skipped.append(events[index])
        self.metrics.cluster_events_written.inc(len(events))
        refused = []
        for item in skipped:  # held already (a retry), or refused (a successor's log is above it)?
            if not await self.redis.xrange(key(item.room, "live"), min=entry_id(item.seq), max=entry_id(item.seq)):
                refused.append(item)
        return refused

    async def _retry(self, error: BaseException, backoff: Backoff) -> None:
        """Wait before trying again: Redis is unreachable, or (``ResponseError``: a key of the wrong
        type, written by something else) it refused, which is logged and no outage."""
        if isinstance(error, ResponseError):
            log.error("Redis refused a call of this node: %s", error)
        else:
            self.failed(error)
        await asyncio.sleep(backoff.next())

    def _reached(self, backoff: Backoff) -> None:
        backoff.reset()
        self.reached()

    def failed(self, error: BaseException) -> None:
        if self.reachable:
            log.warning("Redis is unreachable (%s): serving this node's rooms on; %d writes owed", error,
                        len(self.pending))
        self.reachable, self.last_error = False, str(error) or type(error).__name__

    def reached(self) -> None:
        if not self.reachable:
            log.warning("Redis is back; writing the %d events owed", len(self.pending))
        self.reachable, self.last_error = True, None

    # ---- ownership

    async def acquire(self, room: str, take: bool = True) -> int:
        """Take the room's lease for this node; returns the highest seq the room's log holds or
        reserved. With ``take`` the room goes to the newest claimant: an owner elsewhere lets go
        when it sees the claim (``TICK_S``), a dead one's lease runs out (``lease_s``); raises
        ``PublisherReplaced`` when a newer publisher claims it meanwhile. Without, a room another
        node has is ``RoomElsewhere``. ``ServerBusy`` when Redis is unreachable or the owner never
        lets go."""
        lease_ms = int(self.lease_s * 1000)
        deadline = time.monotonic() + self.lease_s + CLAIM_WAIT_S
        try:
            if take:
                await self.redis.set(key(room, "claim"), self.node, px=lease_ms + int(CLAIM_WAIT_S * 1000))
            while True:
                if await self._take(keys=[key(room, "owner"), key(room, "claim")], args=[self.node, lease_ms]):
                    break
                if not take:
                    raise RoomElsewhere(f"room {room!r} is held by another node now (its publisher streams there, "
                                        "or an edit is being made there); try again")
                if await self.redis.get(key(room, "claim")) != self.node:
                    raise PublisherReplaced("another publisher took over this room")
                if time.monotonic() > deadline:
                    raise ServerBusy("the node that has this room neither renews it nor lets it go; try again")
                await asyncio.sleep(0.05)
            if await self.redis.get(key(room, "claim")) == self.node:
                await self.redis.delete(key(room, "claim"))
            ceiling = int(await self.redis.get(key(room, "seq")) or 0)
            top = await self.redis.xrevrange(key(room, "live"), count=1)
        except RedisError as error:
            self.failed(error)
            raise ServerBusy("this node cannot reach the cluster's Redis; try again shortly", 2.0) from error
        self.reached()
        newest = entries(top)
        return max(ceiling, seq_of(newest[0][0]) if newest else 0)

    def own(self, room: str, lost: Lost, ceiling: Callable[[], int]) -> None:
        """Keep the lease of a room ``acquire`` got, calling ``lost`` if it goes to another node, and
        keep the room's seq ceiling in Redis at least ``ceiling()`` (Redis may lose its data)."""
        self.owned[room] = Owned(lost, ceiling)

    async def release(self, room: str) -> None:
        """Let go of the room, once what is owed for it is written (a successor reads it)."""
        self.owned.pop(room, None)
        await self.flush(room, self.lease_s)
        try:
            await self._release(keys=[key(room, "owner")], args=[self.node])
        except RedisError as error:
            self.failed(error)  # the lease runs out by itself

    async def reserve(self, room: str, ceiling: int) -> None:
        """Record a seq ceiling in Redis before any seq above the last one leaves (take-over)."""
        await self._reserve(keys=[key(room, "seq")], args=[ceiling])

    async def _keep_leases(self) -> None:
        lease_ms = int(self.lease_s * 1000)
        while True:
            await asyncio.sleep(TICK_S)
            rooms = list(self.owned)
            if not rooms:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for room in rooms:
                        await self._renew(keys=[key(room, "owner"), key(room, "claim"), key(room, "seq")],
                                          args=[self.node, lease_ms, self.owned[room].ceiling()], client=pipe)
                    results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as error:
                self.failed(error)  # nobody else can take the rooms either: serve on
                continue
            self.reached()
            for room, result in zip(rooms, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("renewing the lease of room %s failed: %s", room, result)
                    continue
                held, other = int(result[0]), result[1]
                if room not in self.owned:
                    continue
                if not held or (other and other != self.node):
                    lost, other = self.owned.pop(room).lost, str(other or "")
                    log.info("room %s: %s has it now", room, other or "another node (this one stalled)",
                             extra={"room": room})
                    task = asyncio.create_task(lost(room, other))
                    self._losing.add(task)
                    task.add_done_callback(self._losing.discard)

    async def left_open(self, room: str) -> CaptionEvent | None:
        """The last partial of the room's newest segment that has no final in the log: what a
        dead owner showed of the utterance it was decoding (its ``words`` are those that settled)."""
        finished: set[int] = set()
        for _, fields in entries(await self.redis.xrevrange(key(room, "live"), count=100)):
            if "m" not in fields:  # a change of the room's state, or its end
                continue
            event, _ = decode(fields)
            if event.kind == "partial" and event.segment not in finished:
                return event
            if event.kind == "final":
                finished.add(event.segment)
        return None

    # ---- following

    async def lines_after(self, room: str, seq: int) -> list[tuple[CaptionEvent, float]]:
        """The room's finals, corrections and translations after ``seq`` in the shared log, in order,
        with the Unix time each was made."""
        found: list[tuple[CaptionEvent, float]] = []
        start = f"({entry_id(seq)}"
        while True:
            page = entries(await self.redis.xrange(key(room, "lines"), min=start, count=1000))
            found.extend(decode(fields) for _, fields in page)
            if len(page) < 1000:
                return found
            start = f"({page[-1][0]}"

    async def follow(self, room: str, after: int, apply: Callable[[CaptionEvent, float], None],
                     tell: Callable[[dict[str, Any]], None], ended: Callable[[], None],
                     following: Callable[[], bool]) -> None:
        """Apply the room's events after seq ``after`` (``apply(event, made)``, Unix time), its
        state changes (``tell``) and its end by an operator (``ended``, if less than
        ``ENDED_FRESH_S`` old) as they come, while ``following()``. Partials a follower missed
        while Redis was out are not sent again; lines missed are (``lines_after``)."""
        last, last_id = after, entry_id(after)
        backoff = Backoff(RETRY_S, MAX_BACKOFF_S)
        while following():
            try:
                found = cast(list[tuple[str, Any]],
                             await self.redis.xread({key(room, "live"): last_id}, count=200, block=500))
                if not found:  # quiet: keep the room's seq ceiling in Redis, should Redis have lost its data
                    await self._reserve(keys=[key(room, "seq")], args=[last])
            except (RedisError, OSError) as error:
                await self._retry(error, backoff)
                continue
            self._reached(backoff)
            for _, stream in found or []:
                for entry, fields in entries(stream):
                    if not following():
                        return
                    last_id, seq = entry, seq_of(entry)
                    try:
                        if "room" in fields:
                            tell(json.loads(fields["room"]))
                            continue
                        if "ended" in fields:
                            if time.time() - float(fields["ended"]) < ENDED_FRESH_S:
                                ended()
                            continue
                        if seq <= last:
                            continue
                        last = seq
                        event, made = decode(fields)
                        apply(event, made)
                    except Exception:  # one event this node cannot read or apply is no reason to stop
                        log.exception("room %s: event %s of the shared log skipped", room, entry)

    # ---- operators' requests for the node that captions a room

    async def owner(self, room: str) -> str | None:
        """The node that holds the room's lease (captions it), if any; ``ServerBusy`` when Redis
        is unreachable."""
        try:
            return cast(str | None, await self.redis.get(key(room, "owner")))
        except (RedisError, OSError) as error:
            self.failed(error)
            raise ServerBusy("this node cannot reach the cluster's Redis; try again shortly", 2.0) from error

    async def forward(self, node: str, action: str, room: str, body: dict[str, Any]) -> Answer:
        """Have ``node``, which captions the room, carry out an operator's request made here
        (``action`` with its JSON ``body``): its answer. ``ServerBusy`` when Redis is unreachable
        or ``node`` does not answer within ``REPLY_S`` (a node that reads the request later than
        ``START_S`` after it was made leaves it undone: nothing is done that was answered 503)."""
        reply = f"{REPLY_PREFIX}{secrets.token_hex(12)}"
        deadline = time.monotonic() + REPLY_S
        try:
            await self.redis.xadd(inbox_key(node), {"action": action, "room": room, "body": json.dumps(body),
                                                    "reply": reply}, maxlen=INBOX_REQUESTS, approximate=True)
            while (left := deadline - time.monotonic()) > 0:
                if found := await self.redis.blpop([reply], timeout=min(1.0, left)):
                    answer = json.loads(found[1])
                    return int(answer["status"]), cast(dict[str, Any], answer["body"])
        except (RedisError, OSError) as error:
            self.failed(error)
            raise ServerBusy("this node cannot reach the cluster's Redis; try again shortly", 2.0) from error
        raise ServerBusy(f"node {node}, which captions room {room!r}, did not answer; try again", 2.0)

    async def _serve(self, handle: Handler) -> None:
        """Carry out the requests other nodes forward to this one, each in a task of its own."""
        backoff = Backoff(RETRY_S, MAX_BACKOFF_S)
        last: str | None = None
        """The last request read; None: start after the newest (older ones were given up)."""
        while True:
            try:
                if last is None:
                    top = entries(await self.redis.xrevrange(inbox_key(self.node), count=1))
                    last = top[0][0] if top else "0-0"
                found = cast(list[tuple[str, Any]],
                             await self.redis.xread({inbox_key(self.node): last}, count=50, block=1000))
            except (RedisError, OSError) as error:
                await self._retry(error, backoff)
                continue
            self._reached(backoff)
            for _, stream in found or []:
                for entry, request in entries(stream):
                    last = entry
                    task = asyncio.create_task(self._answer(handle, entry, request))
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)

    async def _answer(self, handle: Handler, entry: str, request: dict[str, str]) -> None:
        reply = request.get("reply", "")
        if not reply.startswith(REPLY_PREFIX):
            log.error("request %s of this node's inbox has no reply list: skipped", entry)
            return
        try:
            action, room, body = request["action"], request["room"], json.loads(request["body"])
            if not isinstance(body, dict):
                raise TypeError("the body is no JSON object")
        except (KeyError, ValueError, TypeError, RecursionError) as error:
            status, answer = 400, InvalidRequest(f"a forwarded request this node cannot read: {error!r:.200}"
                                                 ).to_event()
        else:
            try:
                seconds, microseconds = await self.redis.time()  # the entry's id is Redis's clock too: no skew
            except (RedisError, OSError) as error:
                self.failed(error)
                return
            if seconds + microseconds / 1e6 - _entry_order(entry)[0] / 1000 > START_S:
                return  # its node will have answered 503 before this one could: left undone
            try:
                status, answer = await handle(action, room, body)
            except Exception:  # the operator is told, as for a request made here
                log.exception("request %s forwarded by another node failed", entry)
                status, answer = 500, InternalError("the node that captions the room failed to carry it out").to_event()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(reply, json.dumps({"status": status, "body": answer}))
                pipe.pexpire(reply, int(REPLY_S * 2000))
                await pipe.execute()
        except (RedisError, OSError) as error:
            self.failed(error)

    # ---- room settings

    async def _watch_settings(self, adopt: Adopt) -> None:
        """Keep this node's room settings the cluster's: every room's at the start (and after Redis
        lost its data), then, in order, each change made on any node, from the settings log, which
        a node reads on from where it was (``livecap:node:{node}:settings-read``) across its
        restarts and Redis outages: it audits every change another node made. Changes of different
        settings made at once on two nodes both hold (a room's settings are a hash, a field per
        setting, and each change makes every node read them again); of one setting, the last written."""
        backoff = Backoff(RETRY_S, MAX_BACKOFF_S)
        read = f"{node_key(self.node)}:settings-read"
        last: str | None = None
        """The last entry of the settings log taken; None: read every room's settings first."""
        while True:
            try:
                position = last if last is not None else await self._read_all_settings(adopt, read)
                last = position
                found = cast(list[tuple[str, Any]],
                             await self.redis.xread({SETTINGS_LOG: position}, count=100, block=1000))
                if not found:
                    top = entries(await self.redis.xrevrange(SETTINGS_LOG, count=1))
                    if _entry_order(top[0][0] if top else "0-0") < _entry_order(position):
                        await self.redis.delete(read)
                        last = None  # the log is older than what this node took: Redis lost its data
                    continue
                for _, stream in found:
                    for entry, change in entries(stream):
                        await self._take_change(adopt, entry, change)
                        last = entry
                await self.redis.set(read, last)
            except (RedisError, OSError) as error:
                await self._retry(error, backoff)
                continue
            self._reached(backoff)

    async def _read_all_settings(self, adopt: Adopt, read: str) -> str:
        """Every room's settings read again; the entry of the settings log to read on from."""
        top = entries(await self.redis.xrevrange(SETTINGS_LOG, count=1))
        stored = cast(str | None, await self.redis.get(read))
        async for name in self.redis.scan_iter(match=key("*", "settings"), count=100):
            await self._adopt(adopt, room_of(name), None)
        if stored is not None and STREAM_ID.fullmatch(stored):
            return stored
        return top[0][0] if top else "0-0"

    async def _take_change(self, adopt: Adopt, entry: str, change: dict[str, str]) -> None:
        """One entry of the settings log: the room's settings read again, and the change audited
        here unless this node made it (and audited it then)."""
        try:
            room, node = change["room"], change["node"]
            audit: dict[str, Any] | None = None
            if node != self.node:
                if len(change["audit"]) > MAX_AUDIT_CHARS:
                    raise ValueError("audit entry too long")
                audit = json.loads(change["audit"])
                if not (isinstance(audit, dict) and audit.get("room") == room and isinstance(audit.get("who"), str)
                        and isinstance(audit.get("changes"), dict) and isinstance(audit.get("time"), int | float)):
                    raise ValueError("no audit entry of the room")
                audit["node"] = node
        except (KeyError, ValueError, TypeError, RecursionError) as error:  # written by something else
            log.error("settings log entry %s skipped: %r", entry, error)
            return
        await self._adopt(adopt, room, audit)

    async def _adopt(self, adopt: Adopt, room: str, audit: dict[str, Any] | None) -> None:
        try:
            fields = cast(dict[str, str], await self.redis.hgetall(key(room, "settings")))
        except ResponseError as error:
            log.error("room %s: settings in Redis unreadable: %s", room, error, extra={"room": room})
            return
        data: dict[str, Any] = {}
        for name, value in fields.items():
            try:
                data[name] = json.loads(value)
            except (ValueError, RecursionError):
                log.error("room %s: setting %r in Redis is no JSON: skipped", room, name[:100], extra={"room": room})
        if not data:
            return
        try:
            await adopt(room, data, audit)
        except Exception:  # one room's settings this node cannot take are no reason to stop taking others
            log.exception("room %s: settings from Redis not taken", room, extra={"room": room})

    # ---- the operators' view

    async def _publish_rooms(self, rooms: Callable[[], Sequence[dict[str, Any]]]) -> None:
        while True:
            try:
                state = {"node": self.node, "time": time.time(), "rooms": list(rooms())}
                await self.redis.set(node_key(self.node), json.dumps(state), px=int(NODE_STATE_S * 5000))
                self.reached()
            except (RedisError, OSError) as error:
                self.failed(error)
            await asyncio.sleep(NODE_STATE_S)

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's last published state (this one's included)."""
        names = [name async for name in self.redis.scan_iter(match=node_key("*"), count=100)]
        values = await self.redis.mget(names) if names else []
        return sorted((json.loads(v) for v in values if v), key=lambda n: str(n["node"]))


STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _entry_order(entry: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry.partition("-")
    return int(milliseconds), int(sequence or 0)


def _superseded(old: Pending, new: Pending) -> bool:
    """Whether ``old`` is a partial that ``new``, the next partial of its room, makes useless."""
    return old.kind == new.kind == "event" and not old.line and not new.line and old.room == new.room


def merged(mine: Iterable[dict[str, Any]], nodes: Iterable[dict[str, Any]], node: str) -> list[dict[str, Any]]:
    """The rooms the dashboard lists: this node's, each marked with its node, then those only other
    nodes hold; a room held by several is shown as its owner (the node with its publisher) sees it,
    with the viewers of every node."""
    shown: dict[str, dict[str, Any]] = {}
    viewers: collections.Counter[str] = collections.Counter()
    for name, room in [(node, room) for room in mine] + [(state["node"], room) for state in nodes
                                                         if state["node"] != node for room in state["rooms"]]:
        viewers[room["name"]] += room.get("viewers", 0)
        held = shown.get(room["name"])
        if held is None or (room.get("session") and not held.get("session")):
            shown[room["name"]] = {**room, "node": name}
    return [{**room, "viewers": viewers[room["name"]]} for room in shown.values()]
