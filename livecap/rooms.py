"""Rooms: where a publisher's audio becomes captions for the room's viewers.

A ``Room`` owns its caption state, its transcript and its viewers. A
``PublisherSession`` (one ``start`` … ``stop`` of a publisher) owns the VAD
segmenter and the transcriber, and turns their output into caption events.
Finals are appended to the room's transcript file before they are
broadcast, so a final that was produced is never lost: not by a slow
viewer, a reconnect, nor a server restart. So are the words of the open
segment as they settle, so that a ``kill -9`` does not take what viewers
saw settle: the next start makes them a final.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from livecap.asr.engine import SAMPLE_RATE, Word
from livecap.asr.guardrails import TRANSLATION_GUARDRAILS, suppression_reason
from livecap.asr.scheduler import Scheduler
from livecap.asr.streaming import StreamingOptions
from livecap.asr.transcriber import FinalUpdate, PartialUpdate, Transcriber, TranscriptUpdate
from livecap.captions import LINE_KINDS, RECOVERED, CaptionEvent, CaptionState, Settled, Track
from livecap.cluster import Answer, Cluster
from livecap.errors import (
    InvalidRequest,
    LivecapError,
    ProtocolError,
    PublisherReplaced,
    Refused,
    RoomEnded,
    ServerBusy,
)
from livecap.fanout import Broadcaster, Subscriber, flag_of, rating_of
from livecap.glossary import Glossary
from livecap.ingest import Resend
from livecap.labels import Label, LabelStore
from livecap.language import AUTO, ENGLISH, LanguageLock
from livecap.latency import RoomLatency
from livecap.mask import WordMask
from livecap.outputs.runner import OutputHub
from livecap.recordings import RecordingStore
from livecap.settings import RoomSettings, SettingsStore
from livecap.vad import UtteranceEnded, UtteranceStarted, VadOptions, VadSegmenter

log = logging.getLogger(__name__)
_ROOM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ROOM_NAME_RULE = "room names are 1-64 letters, digits, '.', '_' or '-'"

END_DRAIN_S = 2.0
"""When a room is ended, how long its viewers get to receive the last final before they are closed."""
KEPT_LINES = 200
"""Lines a room keeps in memory (``CaptionState``): about a quarter of an hour of speech, far
more than a new viewer (20), the prompt (10) or the dashboard needs. Older ones are read back
from its transcript file when asked for."""
KEPT_SESSIONS = 16
"""Publisher sessions of a room whose coverage (``Room.covered``) is remembered: a reconnecting
publisher names the one its connection lost."""
MAX_CORRECTION_CHARS = 2000
"""A corrected line is one utterance: at most 15 s of speech."""
MAX_OPEN_FLAGS = 100
"""Flagged lines the dashboard lists for the editor (the most recently flagged)."""
MOST_HEARD_TERMS = 8
"""Glossary terms listed with their counts on the dashboard."""
FOLLOW_WAIT_S = 2.0
"""How long a viewer's connection waits for its node to catch up on a room another node captions."""

Disconnect = Callable[[LivecapError], Awaitable[None]]
"""Closes a publisher's connection with an error event and the error's close code."""


def is_room_name(name: str) -> bool:
    """Whether ``name`` may name a room (and so a transcript file). A full
    match: with ``re.match`` and ``$``, a name ending in a newline would pass."""
    return _ROOM_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class StoredRoom:
    """What a room's transcript file holds."""

    events: tuple[CaptionEvent, ...] = ()
    """Finals and corrections."""
    reserved: int = 0
    """The highest seq ceiling reserved (see ``SeqCounter``)."""
    unfinished: tuple[Settled, ...] = ()
    """Segments with settled words and no final: cut off by a crash."""
    covered: dict[str, int] = field(default_factory=dict)
    """How much of each publisher session's audio its finals cover (milliseconds; ``Room.covered``)."""


class TranscriptStore:
    """One append-only JSON-lines file per room: finals and corrections
    (caption messages), seq reservations (``{"type": "reserved", "seq": N}``)
    and the words of the open segment as they settle (``{"type":
    "settled", ...}``). Lines are written to the OS before the event they
    belong to is sent, so they survive a ``kill -9``; reservations are also
    synced to disk (``fsync``), so seqs do not repeat even after a power cut.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def load(self, room: str) -> StoredRoom:
        path = self.directory / f"{room}.jsonl"
        if not path.exists():
            return StoredRoom()
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a line cut short by a crash: drop it, or the next append joins it
            log.warning("room %s: dropping a line cut short in %s", room, path)
            data = data[: data.rfind(b"\n") + 1]
            with open(path, "r+b") as file:
                file.truncate(len(data))
        events: list[CaptionEvent] = []
        reserved = 0
        settled: dict[int, Settled] = {}
        covered: dict[str, int] = {}
        for line in data.decode().splitlines():
            record = json.loads(line)
            match record.get("type"):
                case "reserved":
                    reserved = max(reserved, record["seq"])
                case "covered":
                    covered[record["session"]] = record["ms"]
                case "settled":
                    words = tuple(Word(w["w"], w["start"], w["end"], w["conf"]) for w in record["words"])
                    before = settled.get(record["segment"])
                    settled[record["segment"]] = Settled(record["segment"], (before.words if before else ()) + words,
                                                         record["start"], record["end"], record["model_version"],
                                                         record.get("language", ENGLISH))
                case _:
                    events.append(CaptionEvent.from_message(record))
        finished = {e.segment for e in events if e.kind == "final"}
        return StoredRoom(tuple(events), reserved,
                          tuple(s for segment, s in sorted(settled.items()) if segment not in finished),
                          dict(list(covered.items())[-KEPT_SESSIONS:]))

    def append(self, event: CaptionEvent, made: float | None = None) -> None:
        """A final or a correction, with the wall-clock time it was ``made`` (``time``, Unix
        seconds; default: now)."""
        self._write(event.room, {**event.to_message(), "time": round(time.time() if made is None else made, 3)})

    def finals(self, room: str | None = None, since: float | None = None) -> list[CaptionEvent]:
        """The finals with text stored for ``room`` (every room if None), made
        ``since`` then (Unix seconds) if set: the lines viewers were shown."""
        paths = [self.directory / f"{room}.jsonl"] if room is not None else sorted(self.directory.glob("*.jsonl"))
        return [CaptionEvent.from_message(record) for path in paths for record in self._records(path)
                if record.get("kind") == "final" and record.get("text")
                and (since is None or record.get("time", 0.0) >= since)]

    def lines(self, room: str) -> list[CaptionEvent]:
        """Every final and correction stored for ``room``, in seq order. Only
        reads (unlike ``load``), so it may run in another thread while the
        room appends: a line still being written is left out."""
        return [CaptionEvent.from_message(record) for record in self._records(self.directory / f"{room}.jsonl")
                if record.get("kind") in LINE_KINDS]

    @staticmethod
    def _records(path: Path) -> list[dict[str, Any]]:
        """The file's complete lines, parsed."""
        if not path.exists():
            return []
        data = path.read_bytes()
        return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].decode().splitlines()]

    def cover(self, room: str, session: str, ms: int) -> None:
        """The finals of publisher ``session`` now cover its audio up to ``ms``."""
        self._write(room, {"type": "covered", "session": session, "ms": ms})

    def reserve(self, room: str, ceiling: int) -> None:
        """Seqs up to ``ceiling`` may be handed out: on disk before this returns."""
        self._write(room, {"type": "reserved", "seq": ceiling}, sync=True)

    def settle(self, partial: CaptionEvent, words: Sequence[Word]) -> None:
        """``words`` settled in ``partial`` (its stable words beyond those already settled)."""
        self._write(partial.room, {
            "type": "settled", "segment": partial.segment, "seq": partial.seq, "start": partial.start,
            "end": partial.end, "model_version": partial.model_version, "language": partial.language,
            "words": [{"w": w.text, "start": w.start, "end": w.end, "conf": w.confidence} for w in words]})

    def _write(self, room: str, record: dict[str, Any], sync: bool = False) -> None:
        path = self.directory / f"{room}.jsonl"
        created = not path.exists()
        with open(path, "a") as file:
            file.write(json.dumps(record) + "\n")
            if sync:
                file.flush()
                os.fsync(file.fileno())
        if sync and created:  # the file's directory entry too
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


def restore(name: str, store: TranscriptStore | None, write: bool = True,
            cluster: Cluster | None = None, covered: dict[str, int] | None = None) -> CaptionState:
    """A room's caption state from its file. A segment cut off by a crash
    ends in a final of its settled words (``CaptionState.recovered``),
    appended to the file when ``write``; a transcript download shows it
    without writing. With a ``cluster``, seq ceilings are recorded in Redis
    too, and a segment cut off is left to the room's next owner (``Room.acquire``):
    another node may be finishing it."""
    stored = store.load(name) if store else StoredRoom()
    if covered is not None:
        covered.update(stored.covered)
    keep = store if write else None

    def reserve(ceiling: int) -> None:
        if keep is not None:
            keep.reserve(name, ceiling)
        if cluster is not None:
            cluster.reserved(name, ceiling)

    state = CaptionState(name, stored.events, stored.reserved, reserve, KEPT_LINES if keep else None)
    for settled in stored.unfinished if cluster is None else ():
        final = state.recovered(settled)
        if keep is not None:
            keep.append(final)
            log.warning("room %s: segment %d was cut off by a crash; its %d settled words are its final (seq %d)",
                        name, settled.segment, len(settled.words), final.seq, extra={"room": name})
    return state


@dataclass(frozen=True, slots=True)
class RoomDefaults:
    """What every room starts from: the pipeline's options and the server-wide glossary
    (a room's own ``RoomSettings`` may replace the glossary)."""

    vad: VadOptions
    streaming: StreamingOptions
    viewer_backlog: int
    glossary: Glossary = Glossary()


class Room:
    def __init__(self, name: str, scheduler: Scheduler, defaults: RoomDefaults, store: TranscriptStore | None,
                 labels: LabelStore | None = None, settings: SettingsStore | None = None,
                 recordings: RecordingStore | None = None, outputs: OutputHub | None = None,
                 cluster: Cluster | None = None, on_ended: Callable[[str], None] | None = None) -> None:
        """``on_ended``: called with the room's name when the node that captions it ended it (an
        operator there), for this node to end it too."""
        self.name = name
        self.cluster = cluster
        self._on_ended = on_ended
        self.owned = cluster is None
        """Whether this node makes the room's captions: always without a cluster; with one, while
        it holds the room's lease (``acquire``). Otherwise it follows the node that does."""
        self._follower: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self.remote_state: dict[str, Any] | None = None
        """The room's state (``state``) as the node that captions it last told it."""
        self.scheduler = scheduler
        self.defaults = defaults
        self.store = store
        self.labels = labels
        self._settings = settings
        self.recordings = recordings
        self.outputs = outputs
        self._writes: set[asyncio.Future[Path]] = set()
        self.covered: dict[str, int] = {}
        """How much of each recent publisher session's audio its finals cover (ms): what a
        publisher that reconnects need not send again (``skip``)."""
        self.captions = restore(name, store, cluster=cluster, covered=self.covered)
        self.log_seq = self.captions.seq
        """The last seq of the room's log this node holds (made or followed)."""
        self._settled = (-1, 0)
        """(segment, how many of its stable words) the store holds."""
        self.broadcaster = Broadcaster()
        self.viewers: set[Subscriber] = set()
        """The viewers' subscribers (the broadcaster also holds the publisher's)."""
        self.session: PublisherSession | None = None
        self.epoch: float | None = None
        self.audio_end = max((e.end for e in self.captions.finals), default=0.0)
        """Room time (seconds) up to which audio has been placed."""
        self.latency = RoomLatency()
        self.last_event: CaptionEvent | None = None
        self.ended = False
        self.publisher_room = False
        """Holds one of the ``max_rooms`` places of publishers (see ``RoomRegistry``)."""
        self._label: str | None = None
        self.flaggers: dict[tuple[int, bool], set[str]] = {}
        """The viewers who flagged each line (segment, and whether its translation) still in memory: a
        line may be flagged once per viewer, and only while it is in memory."""
        self.flags_by_version: collections.Counter[str] = collections.Counter()
        """Flags since the room came into memory, by the model version of the line flagged."""
        self._reading = 0
        """Reads of the room's file in flight (``archived``)."""
        self.open_flags: dict[int, tuple[CaptionEvent, int]] = {}
        """Each line flagged since its last correction, as shown (without its word timings), and
        its flags there: what the editor has yet to look at; the ``MAX_OPEN_FLAGS`` last flagged."""
        self.ratings: dict[str, int] = {}
        """Each viewer's last rating."""
        self.terms_heard: collections.Counter[str] = collections.Counter()
        """Glossary terms in the room's finals since it came into memory."""
        self.language = LanguageLock(self.settings.language if self.settings.language != AUTO else None,
                                     candidates=self.settings.candidates)
        """The language of the room's speech (``LanguageLock``); set again by each publisher's ``start``."""
        self.translate: str | None = self.settings.translate
        """The translation track of the publisher streaming now ("en"), or None."""
        self._told: dict[str, Any] = self.state()
        """What the pages of the room were last told (``state``)."""

    @property
    def settings(self) -> RoomSettings:
        """The room's own settings, as an operator last changed them."""
        return self._settings.get(self.name) if self._settings is not None else RoomSettings()

    @property
    def glossary(self) -> Glossary:
        """The room's glossary, else the server-wide one."""
        terms = self.settings.glossary
        return self.defaults.glossary if terms is None else _glossary(terms)

    @property
    def mask(self) -> WordMask:
        return _mask(self.settings.profanity)

    @property
    def idle(self) -> bool:
        """No publisher, no subscriber, and no read of its file in flight (``archived``): a room
        that left the registry in the middle of a read would be served on alone, apart from the
        room that replaces it."""
        return self.session is None and not self.broadcaster.subscribers and not self._reading

    @property
    def label(self) -> str:
        """The room's bounded Prometheus label: "other" until a publisher
        takes the room (here, or with ``--redis`` on the node this one follows:
        its first event), so that viewers of invented names cannot use up the
        named labels that publishers' rooms need."""
        return self._label or "other"

    def take_publisher_place(self) -> None:
        """A publisher came (see ``RoomRegistry.get``): the room counts against
        ``max_rooms`` and gets its own label."""
        self.publisher_room = True
        self._name_label()

    def _name_label(self) -> None:
        if self._label is None:
            self._label = self.scheduler.metrics.room(self.name)
            if self.viewers and self._label != "other":  # viewers who came early move to the room's own label
                self.scheduler.metrics.viewers.labels("other").dec(len(self.viewers))
                self.scheduler.metrics.viewers.labels(self._label).inc(len(self.viewers))

    async def start_session(self, now: float, disconnect: Disconnect, language: str = ENGLISH,
                            translate: str | None = None, candidates: tuple[str, ...] = ()) -> PublisherSession:
        """Start a publisher session in ``language`` (a code or ``auto``, among ``candidates`` if
        any), with a ``translate`` track or none; one already running is finalised and its publisher told
        (``PublisherReplaced``) first, so a speaker whose laptop reconnects takes the room
        over without losing the last sentence. The engines it needs must be loaded
        (``Scheduler.ensure_engine``)."""
        if self.ended:
            raise RoomEnded("an operator ended this room")
        if (old := self.session) is not None:
            await old.stop(now)
            await old.disconnect(PublisherReplaced("another publisher took over this room"))
        if self.epoch is None:
            self.epoch = now - self.audio_end
        pinned = None if language == AUTO else language
        if pinned is not None or self.language.pinned is not None or not self.language.locked \
                or self.language.candidates != candidates:
            self.language = LanguageLock(pinned, candidates=candidates)  # an auto room keeps a language it locked
        self.translate = translate
        self.announce()
        self.session = PublisherSession(self, max(now - self.epoch, self.audio_end), disconnect, translate)
        return self.session

    def add_viewer(self, subscriber: Subscriber) -> None:
        if self.ended:
            raise RoomEnded("an operator ended this room")
        self.viewers.add(subscriber)
        self.broadcaster.subscribers.add(subscriber)
        self.scheduler.metrics.viewers.labels(self.label).inc()

    def remove_viewer(self, subscriber: Subscriber) -> None:
        if subscriber in self.viewers:
            self.viewers.discard(subscriber)
            self.scheduler.metrics.viewers.labels(self.label).dec()
        self.broadcaster.subscribers.discard(subscriber)
        if not self.viewers:  # nobody here to follow it for; a later read catches up (``follow``, ``catch_up``)
            self.unfollow()

    def speak(self, language: str, translate: str | None, candidates: tuple[str, ...] = ()) -> None:
        """An operator set the room's language (pinned from the next utterance on; ``auto``:
        detected again, among ``candidates`` if any) and translation track, while it runs. The
        model must be loaded (``Scheduler.prepare``)."""
        self.language.candidates = candidates
        self.language.pin(None if language == AUTO else language)
        self.translate = translate
        if self.session is not None:
            self.session.translate = translate

    def state(self) -> dict[str, Any]:
        """What every page of the room is told on connecting (``worth_telling``) and on any change:
        whether it records, its language (``LanguageLock.state``) and its translation track; on a
        node that follows the room, what the room's node says (``mirror_state``)."""
        if not self.owned and self.remote_state is not None:
            return self.remote_state
        return {"type": "room", "recording": self.settings.recording, "language": self.language.state(),
                "translate": self.translate}

    @property
    def worth_telling(self) -> bool:
        """Whether a page connecting is told ``state`` at once: the room records, or does not
        simply speak English."""
        state = self.state()
        return bool(state["recording"] or state["translate"] or self.language.language != ENGLISH)

    def announce(self) -> None:
        """Tell every page of the room when its state changed: recording switched on or off (through
        the API, at once; by ``livecap settings``, with the next caption), a language locked."""
        state = self.state()
        if state != self._told:
            self._told = state
            if self.cluster is not None and self.owned:
                self.cluster.tell(self.name, state, self.log_seq)
            for subscriber in list(self.broadcaster.subscribers):
                subscriber.notify(state)

    def mirror_state(self, state: dict[str, Any]) -> None:
        """The room's state as its node told it (``announce`` there): this node's pages are told too."""
        self.remote_state = state
        self.announce()

    def publish(self, event: CaptionEvent) -> None:
        """An event this node made: kept, sent to this node's viewers, owed to the cluster's log and
        handed to the room's outputs."""
        self.announce()
        if self.store is not None:
            if event.kind in LINE_KINDS:
                self.store.append(event)
            else:  # checkpoint the words that settled since the last partial
                segment, settled = self._settled
                settled = settled if segment == event.segment else 0
                if len(event.words) > settled:
                    self.store.settle(event, event.words[settled:])
                    self._settled = (event.segment, len(event.words))
        if self.cluster is not None:
            self.cluster.append(event)
        metrics, label, now = self.scheduler.metrics, self.label, time.monotonic()
        published = self.latency.published(event, now)
        if event.kind == "final":
            metrics.utterances.labels(label, event.engine).inc()
            word_lag = metrics.word_lag_seconds.labels(label, event.engine)
            for lag in published.word_lags:
                word_lag.observe(lag)
        if published.final_lag is not None:
            metrics.final_lag_seconds.labels(label, event.engine).observe(published.final_lag)
        self._send(event, now)
        if self.outputs is not None:
            epoch = self.epoch if self.epoch is not None else now - self.audio_end
            spoken = time.time() - (now - (epoch + event.start))  # the audio's arrival, as Unix time
            self.outputs.publish(self.name, self.settings.outputs, event, now, spoken)

    @property
    def durable_seq(self) -> int:
        """The last seq of the room's log that survives this node: written to the transcript file
        at once; with ``--redis``, once Redis has it."""
        return self.captions.seq if self.cluster is None else self.cluster.written.get(self.name, 0)

    def cover(self, session: str, ms: int) -> None:
        """The finals of publisher ``session`` cover its audio up to ``ms`` (kept with them)."""
        self.covered[session] = ms
        self.covered = dict(list(self.covered.items())[-KEPT_SESSIONS:])
        if self.store is not None:
            self.store.cover(self.name, session, ms)
        if self.cluster is not None:
            self.cluster.cover(self.name, session, ms)

    async def skip(self, resend: Resend) -> int:
        """How much of the audio a reconnecting publisher sends again the room has captioned
        already (ms): the finals of its lost session cover it (it lost the acknowledgement)."""
        covered = self.covered.get(resend.session, 0)  # this node's sessions, even before Redis has them
        if self.cluster is not None:
            with contextlib.suppress(RedisError, OSError):
                covered = max(covered, await self.cluster.covered(self.name, resend.session) or 0)
        return max(0, covered - resend.from_ms)

    def resent(self) -> None:
        """A publisher reconnected and sends again what was not acknowledged: a line recovered from
        the settled words of the utterance its lost connection cut (``recovered``) will be said again
        in full, so it is emptied (a correction) instead of shown twice."""
        last = self.captions.finals[-1] if self.captions.finals else None
        if last is not None and last.engine == RECOVERED and last.text \
                and self.captions.current_version(last.segment) is last:
            self.publish(self.captions.correction(last.seq, ""))

    def _send(self, event: CaptionEvent, now: float) -> None:
        metrics, label = self.scheduler.metrics, self.label
        metrics.captions_sent.labels(label, event.kind).inc()
        self.last_event = event
        self.log_seq = max(self.log_seq, event.seq)
        if coalesced := self.broadcaster.publish(event, now):
            metrics.partials_coalesced.labels(label).inc(coalesced)

    def mirror(self, event: CaptionEvent, made: float) -> None:
        """An event the room's owner on another node made at Unix time ``made``: kept (lines in
        the transcript file, for resume and export here) and sent to this node's viewers."""
        if not self.captions.apply(event):
            return
        self._name_label()  # a room some node captions: its viewers here are counted under its name
        if self.store is not None and event.kind in LINE_KINDS:
            self.store.append(event, made)
        self.audio_end = max(self.audio_end, event.end)
        self.scheduler.metrics.cluster_hop_seconds.observe(max(0.0, time.time() - made))
        self._send(event, time.monotonic())

    async def follow(self) -> None:
        """Follow the room's owner (``cluster``) unless this node owns the room: returns once this
        node holds what the shared log holds (or after ``FOLLOW_WAIT_S``, Redis being out), while
        a task applies what comes next."""
        if self._follower is not None and self._follower.done():
            self._follower = None
        if self.cluster is None or self.owned:
            return
        if self._follower is None:
            self._caught_up.clear()
            self._follower = asyncio.create_task(self._follow(self.cluster), name=f"follow-{self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._caught_up.wait(), FOLLOW_WAIT_S)

    async def _follow(self, cluster: Cluster) -> None:
        while not self.owned:  # lines first (the live stream keeps only the latest events), then what comes
            try:
                await self._take_lines(cluster)
                if (state := await cluster.room_state(self.name)) is not None:
                    self.mirror_state(state)
                self._caught_up.set()
                await cluster.follow(self.name, self.log_seq, self.mirror, self.mirror_state, self._ended_there,
                                     lambda: not self.owned)
            except (RedisError, OSError) as error:
                cluster.failed(error)
                await asyncio.sleep(1.0)
            except Exception:  # a line this node cannot read or apply
                log.exception("room %s: catching up with the room's log failed; trying again", self.name,
                              extra={"room": self.name})
                await asyncio.sleep(5.0)

    def _ended_there(self) -> None:
        if self._on_ended is not None:
            self._on_ended(self.name)

    async def catch_up(self) -> None:
        """On a node that neither captions nor follows the room: take the lines the shared log has
        and this node does not (before an export), without following what comes next."""
        if self.cluster is not None and not self.owned and self._follower is None:
            await self._take_lines(self.cluster)

    async def _take_lines(self, cluster: Cluster) -> None:
        """The lines of the shared log after the last this node holds."""
        for event, made in await cluster.lines_after(self.name, self.log_seq):
            self.mirror(event, made)

    def unfollow(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            self._follower = None

    async def acquire(self, take: bool = True) -> None:
        """Make this node the room's owner (``Cluster.acquire``): it stops following, takes what
        the last owner wrote, ends in a final the segment a dead owner left open (the words
        viewers saw settle, as after a ``kill -9`` of a single node), and goes on above every
        seq handed out before."""
        if self.cluster is None or self.owned:
            return
        cluster = self.cluster
        ceiling = await cluster.acquire(self.name, take)
        self.unfollow()
        try:
            await self._take_lines(cluster)
            left_open = await cluster.left_open(self.name)
            self.captions.seqs.skip_to(max(ceiling, self.captions.seq))
            await cluster.reserve(self.name, self.captions.seqs.reserve_ahead())  # in Redis before a seq leaves
        except (RedisError, OSError) as error:
            await cluster.release(self.name)
            raise ServerBusy("this node cannot reach the cluster's Redis; try again shortly", 2.0) from error
        self.owned = True
        self.remote_state = None
        cluster.own(self.name, self._lost, lambda: self.captions.seqs.ceiling)
        if left_open is not None and not self.captions.has_final(left_open.segment):
            final = self.captions.recovered(Settled(left_open.segment, left_open.words, left_open.start,
                                                    left_open.end, left_open.model_version, left_open.language))
            log.warning("room %s: the last owner left segment %d open; its %d settled words are its final "
                        "(seq %d)", self.name, final.segment, len(final.words), final.seq, extra={"room": self.name})
            self.publish(final)

    async def release(self) -> None:
        """The publisher left: let go of the room (its lines written), and follow it if viewers stay."""
        if self.cluster is None or not self.owned or self.session is not None:
            return
        self.owned = False
        await self.cluster.release(self.name)
        if self.viewers:
            await self.follow()

    async def _lost(self, room: str, node: str) -> None:
        """Another node has the room now. A newer publisher there (``node``): the open utterance
        becomes final here, the publisher is told (``PublisherReplaced``), and this node follows
        the new owner. ``node`` empty: this node stalled past its lease while another took the
        room (an operator's correction or end) and gives out seqs above this one's, so nothing more
        made here can join the room's log: the open utterance is not made final, the publisher is
        told to reconnect (``ServerBusy``; it sends again the audio not acknowledged, which the
        room's node transcribes), or, if the room was ended, that it was (``RoomEnded``)."""
        self.owned = False
        assert self.cluster is not None
        if not node:
            ended = False
            with contextlib.suppress(RedisError, OSError):
                ended = await self.cluster.ended_last(self.name)
            if ended:
                self._ended_there()
                return
            if (session := self.session) is not None:
                await session.disconnect(ServerBusy("this node stalled and another has the room now: reconnect", 0.5))
        elif (session := self.session) is not None:
            await session.stop(time.monotonic())
            await session.disconnect(PublisherReplaced(f"another publisher took over this room (on node {node})"))
        await self.cluster.release(self.name)
        if self.viewers:
            await self.follow()

    @contextlib.asynccontextmanager
    async def owning(self) -> AsyncIterator[None]:
        """Hold the room for an operator's change (a correction takes a seq): on a node that follows
        it, the room's lease for the while, if no other node has it (else ``RoomElsewhere``)."""
        if self.owned:
            yield
            return
        await self.acquire(take=False)
        try:
            yield
        finally:
            await self.release()

    async def archived(self, seq: int) -> Sequence[CaptionEvent]:
        """The lines stored for the room, read off the event loop, when a question
        about event ``seq`` and later needs them (``CaptionState.needs_archive``); else none."""
        if self.store is None or not self.captions.needs_archive(seq):
            return ()
        departed: list[CaptionEvent] = []  # what leaves memory while the file is read
        self._reading += 1
        self.captions.watchers.append(departed)
        try:
            lines = await asyncio.to_thread(self.store.lines, self.name)
        finally:
            self._reading -= 1
            self.captions.watchers.remove(departed)
        if not departed:
            return lines
        return sorted({e.seq: e for e in (*lines, *departed)}.values(), key=lambda e: e.seq)

    def correct(self, seq: int, text: str, by: str, wall: float,
                archived: Sequence[CaptionEvent] = ()) -> CaptionEvent:
        """An editor's ``text`` for the line whose version ``seq`` they saw
        (``CaptionState.correction``: ``UnknownSeq``, ``EditConflict``):
        published to every viewer, stored with the finals, kept as a label.
        ``archived``: see ``archived``."""
        final, _ = self.captions.line(seq, archived)
        event = self.captions.correction(seq, text, archived)
        self.publish(event)
        self.open_flags.pop(event.segment, None)
        self.scheduler.metrics.corrections.labels(final.engine, final.model_version).inc()
        self._keep(Label.about("correction", final, wall, by, event.seq, corrected=text))
        return event

    def flag(self, seq: int, viewer: str, wall: float) -> bool:
        """A viewer says the line it saw as event ``seq`` is wrong
        (``UnknownSeq`` if no line in memory has that seq: viewers flag what
        they just read, and a flood of flags must not read the transcript
        file); False if it had flagged that line already (one flag per viewer
        per line). A translation (the en track) is a line of its own: its flag
        is a label about the translation and counts for its model version."""
        translation = self.captions.translated(seq)
        final, current = (translation, translation) if translation else self.captions.line(seq)
        oldest = self.captions.finals[0].segment
        self.flaggers = {line: viewers for line, viewers in self.flaggers.items() if line[0] >= oldest}
        flaggers = self.flaggers.setdefault((final.segment, final.kind == "translation"), set())
        if viewer in flaggers:
            return False
        flaggers.add(viewer)
        if translation is None:  # the editor's list: lines it can correct (a translation is made anew)
            _, count = self.open_flags.pop(final.segment, (current, 0))
            self.open_flags[final.segment] = (replace(current, words=()), count + 1)
            if len(self.open_flags) > MAX_OPEN_FLAGS:  # the line flagged least recently leaves the list
                del self.open_flags[next(iter(self.open_flags))]
        self.flags_by_version[final.model_version] += 1
        self.scheduler.metrics.flags.labels(final.engine, final.model_version).inc()
        self._keep(Label.about("flag", final, wall, viewer, seq))
        return True

    def rate(self, stars: int, viewer: str, wall: float) -> None:
        """A viewer's 1-5 stars for the room's captions, credited to the
        model version of the latest final (a later rating replaces it)."""
        last = self.captions.finals[-1] if self.captions.finals else None
        engine, version = (last.engine, last.model_version) if last else ("none", "none")
        self.ratings[viewer] = stars
        self.scheduler.metrics.rating_stars.labels(version).observe(stars)
        self._keep(Label("rating", self.name, wall, engine, version, viewer, stars=stars))

    def heard(self, terms: list[str]) -> None:
        """Count glossary terms found in a final (``Glossary.found``)."""
        if terms:
            self.terms_heard.update(terms)
            self.scheduler.metrics.glossary_terms.labels(self.label).inc(len(terms))

    def quality(self) -> dict[str, Any]:
        """The dashboard's quality figures: corrections, flags and ratings, and the lines flagged since
        their last correction, newest first."""
        flagged = self.open_flags.values()
        return {
            "corrections": self.captions.corrections_made,
            "flags": self.flags_by_version.total(),
            "flagged": [{"seq": line.seq, "segment": line.segment, "text": line.text, "flags": count}
                        for line, count in sorted(flagged, key=lambda item: -item[0].segment)],
            "rating": round(sum(self.ratings.values()) / len(self.ratings), 2) if self.ratings else None,
            "ratings": len(self.ratings),
            "glossary": {"terms": len(self.glossary.terms), "heard": sum(self.terms_heard.values()),
                         "most_heard": [{"term": term, "count": count}
                                        for term, count in self.terms_heard.most_common(MOST_HEARD_TERMS)]},
        }

    def _keep(self, label: Label) -> None:
        if self.labels is None:
            return
        if self.recordings is not None and label.segment is not None:
            path = self.recordings.path(self.name, label.segment)
            if path.exists():  # the line's audio: a training example
                label = replace(label, audio=str(path.relative_to(self.recordings.directory.parent)))
        self.labels.append(label)

    def record(self, segment: int, audio: np.ndarray) -> None:
        """Keep a final's audio if the room records (written off the event loop)."""
        if self.recordings is None or not self.settings.recording or not len(audio):
            return
        write = asyncio.get_running_loop().run_in_executor(None, self.recordings.save, self.name, segment, audio)
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def flush_recordings(self) -> None:
        """Wait for the recordings being written."""
        if self._writes:
            await asyncio.wait(set(self._writes))

    def acknowledged(self, seq: int, now: float, age_s: float) -> None:
        """A viewer rendered event ``seq`` (see ``RoomLatency.acknowledged``)."""
        delay = self.latency.acknowledged(seq, now, age_s)
        if delay is not None:
            self.scheduler.metrics.speech_to_screen_seconds.labels(self.label).observe(delay)

    async def end(self, now: float, finish: bool = True) -> tuple[bool, int]:
        """An operator ends the room: the publisher's open utterance becomes
        final (unless not ``finish``: this node was fenced off, ``_lost``),
        viewers get it (for up to ``END_DRAIN_S``), then the publisher
        and every viewer are closed with ``RoomEnded``. The transcript stays.
        Returns (whether a publisher was closed, how many viewers were)."""
        self.ended = True
        error = RoomEnded("an operator ended this room")
        session = self.session
        if session is not None and finish:
            await session.stop(now)
        viewers = list(self.viewers)
        await self.drain()
        if session is not None:
            await session.disconnect(error)
        for viewer in viewers:
            viewer.disconnect(error)
        return session is not None, len(viewers)

    async def drain(self) -> None:
        """Give every subscriber (viewers and the publisher) up to ``END_DRAIN_S``
        to receive what was published so far, before it is closed."""
        waits = [subscriber.wait_sent(self.captions.seq) for subscriber in self.broadcaster.subscribers]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), END_DRAIN_S)

    def prompt(self) -> str:
        """Context for the recognizer: the latest finals. The glossary is not
        in it (the decoder favours its terms instead, ``asr.biasing``): a list of
        terms as a prompt made captions into lists of terms and every decoding
        step slower (measured, README.md "Glossaries"); the latest finals hold
        the terms said recently, spelled right."""
        return self._last_words(self.captions.finals)

    def english_prompt(self) -> str:
        """Context for a translation: the latest translations (in the language it writes)."""
        return self._last_words(self.captions.translations)

    def _last_words(self, lines: Sequence[CaptionEvent]) -> str:
        words = " ".join(e.text for e in lines[-10:] if e.text).split()
        return " ".join(words[-self.defaults.streaming.prompt_words :])

    def terms(self) -> tuple[str, ...]:
        """The glossary's terms, for the recognizer to favour."""
        return self.glossary.terms


class PublisherSession:
    """One stream of audio into a room, from ``start`` to ``stop``."""

    def __init__(self, room: Room, offset: float, disconnect: Disconnect, translate: str | None = None) -> None:
        self.room = room
        self.translate = translate
        """The language lines are translated into ("en"), or None."""
        self._translations: set[asyncio.Task[None]] = set()
        self.id = secrets.token_hex(8)
        """Names the session in the ``ready`` message and in logs."""
        self.offset = offset
        """Room time of the session's first sample."""
        self.disconnect = disconnect
        self.vad = VadSegmenter(room.defaults.vad)
        self.transcriber = Transcriber(room.scheduler, room.name, self._on_update, room.prompt, room.terms,
                                       room.defaults.streaming, language=room.language)
        self._segments: dict[int, int] = {}
        self._unfinished: dict[int, int] = {}
        """Utterances without a final yet: the sample their audio starts at (in this session)."""
        self._unwritten: collections.deque[tuple[int, int]] = collections.deque()
        """Finals not yet in the room's log (``Room.durable_seq``): (seq, the sample their audio starts at)."""
        self.samples = 0
        self.speaking = False
        """Inside an utterance, by the VAD."""

    def push_audio(self, samples: np.ndarray, arrival: float) -> None:
        self.room.scheduler.metrics.audio_seconds.labels(self.room.label).inc(len(samples) / SAMPLE_RATE)
        start = self._time(self.samples)
        self.samples += len(samples)
        self.room.audio_end = max(self.room.audio_end, self._time(self.samples))
        self.room.latency.audio(start, self._time(self.samples), arrival)
        events = self.vad.feed(samples, arrival)
        for event in events:
            if isinstance(event, UtteranceStarted | UtteranceEnded):
                self.speaking = isinstance(event, UtteranceStarted)
            if isinstance(event, UtteranceStarted):
                self._unfinished[event.utterance] = event.start
        self.transcriber.submit(events)

    @property
    def acknowledged_ms(self) -> int:
        """Audio of this session (milliseconds from its first sample) that the publisher need not
        send again after a lost connection: every utterance in it has its final in the room's log
        (durable), and no utterance can still begin in it. The ``ack`` the publisher gets."""
        durable = self.room.durable_seq
        while self._unwritten and self._unwritten[0][0] <= durable:
            self._unwritten.popleft()
        needed = min((self.vad.undecided_from, *self._unfinished.values(), *(start for _, start in self._unwritten)))
        return max(0, needed) * 1000 // SAMPLE_RATE

    async def stop(self, arrival: float) -> None:
        """End of audio: the open utterance becomes final before this returns."""
        self.speaking = False
        self.transcriber.submit(self.vad.flush(arrival))
        try:
            await self.transcriber.close()
            if self._translations:  # every final's translation goes out before the session ends
                await asyncio.wait(set(self._translations))
        finally:
            if self.room.session is self:
                self.room.session = None

    def _time(self, sample: int) -> float:
        return self.offset + sample / SAMPLE_RATE

    def _on_update(self, update: TranscriptUpdate) -> None:
        captions = self.room.captions
        segment = self._segments.get(update.utterance)
        if segment is None:
            segment = self._segments[update.utterance] = captions.new_segment()
        hypothesis = update.hypothesis
        glossary, mask = self.room.glossary, self.room.mask
        latency_ms = 0.0
        match update:
            case PartialUpdate(agreement=agreement, start=start, end=end, newest_arrival=arrival):
                latency_ms = (time.monotonic() - arrival) * 1000
                # one pass over the whole partial, so a term may straddle stable and unstable words
                offset = self._time(start)
                shown, _ = mask.apply(glossary.apply((*agreement.stable, *agreement.unstable)))
                shown = tuple(Word(w.text, offset + w.start, offset + w.end, w.confidence) for w in shown)
                settled = len(agreement.stable)
                event = captions.partial(segment, shown[:settled], shown[settled:], offset,
                                         self._time(end), hypothesis.engine, hypothesis.model_version, latency_ms,
                                         hypothesis.language)
            case FinalUpdate(words=words, start=start, end=end, last_voiced_arrival=arrival):
                latency_ms = (time.monotonic() - arrival) * 1000
                offset = self._time(start)
                spelled = glossary.respell(words)
                self.room.heard(glossary.found(" ".join(w.text for w in spelled)))
                masked_words, masked = mask.apply(spelled)
                if masked:
                    self.room.scheduler.metrics.masked_words.labels(self.room.label).inc(masked)
                timed = tuple(Word(w.text, offset + w.start, offset + w.end, w.confidence) for w in masked_words)
                event = captions.final(segment, timed, offset, self._time(end), hypothesis.engine,
                                       hypothesis.model_version, latency_ms, hypothesis.language)
                if event is not None and event.text:
                    self.room.record(segment, update.audio)
                del self._segments[update.utterance]
                began = self._unfinished.pop(update.utterance, start)
                for later in self._unfinished:  # at a cut, the audio after ``end`` went to the next utterance
                    self._unfinished[later] = min(self._unfinished[later], end)
                if event is not None:
                    self._unwritten.append((event.seq, began))
        if event is not None:
            self.room.publish(event)
        if isinstance(update, FinalUpdate):  # after its final: kept (and in Redis) in that order
            self.room.cover(self.id, update.end * 1000 // SAMPLE_RATE)
        if event is not None and isinstance(update, FinalUpdate) and event.kind == "final" and event.text \
                    and self.translate not in (None, event.language):
            task = asyncio.ensure_future(self._translation(event, update.audio, time.monotonic()))
            self._translations.add(task)
            task.add_done_callback(self._translations.discard)

    async def _translation(self, final: CaptionEvent, audio: np.ndarray, began: float) -> None:
        """Publish the translation of ``final`` (whose utterance's audio is ``audio``). Only finals
        are translated: a translation is a whole decode of the utterance again, and partial
        translations rewrite themselves as the sentence grows (README, Languages)."""
        room, metrics = self.room, self.room.scheduler.metrics
        engine, model_version, text = "none", "none", ""
        try:
            utterance = room.scheduler.open(room.name, room.english_prompt(), (), final.language, "translate")
            hypothesis = await utterance.finish(audio)
            engine, model_version = hypothesis.engine, hypothesis.model_version
            if (reason := suppression_reason(hypothesis, TRANSLATION_GUARDRAILS)) is not None:
                metrics.suppressed.labels(reason, "translation").inc()
                log.info("room %s: the translation of line %d was dropped (%s): %r", room.name, final.segment,
                         reason, hypothesis.text, extra={"room": room.name})
            else:
                text = " ".join(w.text for w in room.mask.apply(hypothesis.words)[0])
        except Exception:
            log.exception("room %s: translating line %d failed; it is sent untranslated (empty)", room.name,
                          final.segment, extra={"room": room.name})
        # Sent even when empty: a page on the en track that showed a partial of the line (speech detected
        # as English before the room's language locked) then drops it, as after an empty final.
        latency_ms = final.latency_ms + (time.monotonic() - began) * 1000
        metrics.translation_lag_seconds.labels(room.label).observe(latency_ms / 1000)
        room.publish(room.captions.translation(final, text, engine, model_version, latency_ms))


def correction(request: dict[str, Any]) -> tuple[int, str]:
    """The seq and text of an editor's correction (``InvalidRequest`` naming what is wrong); the text
    made one line."""
    seq, text = request.get("seq"), request.get("text")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InvalidRequest("seq must be the seq of the line's version the editor saw")
    line = " ".join(text.split()) if isinstance(text, str) else ""  # one line: line breaks become spaces
    if not isinstance(text, str) or len(text) > MAX_CORRECTION_CHARS or not line.isprintable():
        raise InvalidRequest(f"text must be printable text of at most {MAX_CORRECTION_CHARS} characters")
    return seq, line


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 100:
        raise InvalidRequest(f"{name} must be a short string")
    return value


@functools.lru_cache(maxsize=256)
def _glossary(terms: tuple[str, ...]) -> Glossary:
    return Glossary(terms)


@functools.lru_cache(maxsize=256)
def _mask(words: tuple[str, ...]) -> WordMask:
    return WordMask.of(words)


class RoomRegistry:
    """The rooms held in memory, in two pools with their own bounds.

    Anyone may open a viewer connection to any room name (viewer keys are
    off by default), so viewers must not be able to fill what publishers
    need. A room a publisher takes holds one of ``max_rooms`` places; when
    they are all taken, rooms whose publisher left give theirs up (their
    viewers keep watching). Rooms opened by viewers alone cost a publisher
    nothing: those with a stored transcript exist only because a publisher
    spoke there, and those with nothing to show (a phone waiting for a talk,
    an invented name) are at most ``max_viewer_rooms``. Idle viewers' rooms
    leave memory whenever a room is made; their transcripts stay on disk.
    """

    def __init__(self, scheduler: Scheduler, defaults: RoomDefaults, store: TranscriptStore | None,
                 max_rooms: int, max_viewer_rooms: int, labels: LabelStore | None = None,
                 settings: SettingsStore | None = None, recordings: RecordingStore | None = None,
                 outputs: OutputHub | None = None, cluster: Cluster | None = None) -> None:
        self.scheduler = scheduler
        self.cluster = cluster
        self.outputs = outputs
        self.defaults = defaults
        self.store = store
        self.labels = labels
        self.settings = settings
        self.recordings = recordings
        self.max_rooms = max_rooms
        self.max_viewer_rooms = max_viewer_rooms
        self.rooms: dict[str, Room] = {}
        self._ending: set[asyncio.Task[tuple[bool, int] | None]] = set()

    @property
    def publishers(self) -> int:
        """Publisher sessions streaming now, in all rooms."""
        return sum(room.session is not None for room in self.rooms.values())

    @property
    def load(self) -> float:
        """The publishers streaming now, each weighed by its engine's cost (``Scheduler.weight``)."""
        return sum(self.scheduler.weight(room.language.language) for room in self.rooms.values()
                   if room.session is not None)

    def admit(self, room: Room, language: str = ENGLISH) -> None:
        """Refuse a new publisher in ``language`` (``ServerBusy``) that the executor has no capacity
        for, so the admitted rooms keep their latency budget. One that takes its room over adds no load."""
        weight = self.scheduler.weight(None if language == AUTO else language)
        if room.session is None and not self.scheduler.admits(self.load, weight):
            raise ServerBusy(f"the server is at its capacity of {self.scheduler.capacity} publishers"
                             + (f" (one in {language} counts as {weight:.1f})" if weight > 1 else ""))

    def get(self, name: str, publisher: bool = False) -> Room:
        """The room called ``name``, created (with its stored transcript) if
        needed; for a ``publisher``, holding one of the publishers' places."""
        if not is_room_name(name):
            raise ProtocolError(ROOM_NAME_RULE)
        room = self.rooms.get(name)
        if room is not None and (room.publisher_room or not publisher):
            return room
        if publisher and self._publisher_places() >= self.max_rooms:
            for held in self.rooms.values():
                if held.session is None:
                    held.publisher_room = False  # its publisher left; its viewers keep it as a viewers' room
        self._evict_idle()
        if publisher and self._publisher_places() >= self.max_rooms:
            raise ServerBusy(f"the server holds its maximum of {self.max_rooms} rooms with a publisher")
        room = self.rooms.get(name)  # an idle room may just have left memory
        if room is None:
            room = Room(name, self.scheduler, self.defaults, self.store, self.labels, self.settings, self.recordings,
                        self.outputs, self.cluster, self._ended_elsewhere)
            if not publisher and not room.captions.finals and self._empty_rooms() >= self.max_viewer_rooms:
                raise ServerBusy(f"the server holds its maximum of {self.max_viewer_rooms} rooms that have "
                                 "neither a publisher nor a transcript; try again later")
            self.rooms[name] = room
        if publisher:
            room.take_publisher_place()
        return room

    def settings_of(self, name: str) -> RoomSettings:
        """The settings of room ``name``, held or not (``ProtocolError`` for a name that is no room's)."""
        if not is_room_name(name):
            raise ProtocolError(ROOM_NAME_RULE)
        return self.settings.get(name) if self.settings is not None else RoomSettings()

    def apply_settings(self, name: str, new: RoomSettings, changed: Collection[str]) -> None:
        """Room ``name``'s settings are ``new`` (kept already), the ``changed`` ones just set: a room
        held here speaks the language set (pinned; ``auto`` set again detects again; its model
        loaded by ``Scheduler.prepare``) and tells its pages, and its outputs (on the node that
        captions it) take a fixed URL or password at once."""
        room = self.rooms.get(name)
        if room is not None:
            if {"language", "translate", "candidates"} & set(changed):
                room.speak(new.language, new.translate, new.candidates)
            room.announce()
        if "outputs" in changed and self.outputs is not None and (
                self.cluster is None or (room is not None and room.owned)):  # outputs run where the room is captioned
            self.outputs.configure(name, new.outputs)

    async def adopt_settings(self, name: str, data: dict[str, Any], audit: dict[str, Any] | None) -> None:
        """Room settings changed on another node of the cluster (``Cluster``): kept here
        (``SettingsStore.adopt``) and applied as a change made here would be."""
        if self.settings is None:
            return
        if not is_room_name(name):  # Redis holds what any of its clients wrote: never a path
            log.error("settings of %r in Redis skipped: %s", name, ROOM_NAME_RULE)
            return
        old = self.settings.get(name)
        self.settings.adopt(name, data, audit)
        new = self.settings.get(name)
        changed = [f.name for f in fields(RoomSettings) if getattr(old, f.name) != getattr(new, f.name)]
        if name in self.rooms and {"language", "translate"} & set(changed):
            await self.scheduler.prepare(new.language, new.translate)
        self.apply_settings(name, new, changed)

    async def transcript(self, name: str, track: Track = "original") -> list[CaptionEvent]:
        """The room's transcript on ``track``, read from disk when the room is not held:
        a download does not take a room's place."""
        room = self.rooms.get(name)
        if room is not None:
            await room.catch_up()
            return room.captions.transcript(await room.archived(0), track)
        state = restore(name, self.store, write=False)
        if self.cluster is not None:  # what other nodes made since this one last held the room
            for event, _ in await self.cluster.lines_after(name, state.seq):
                state.apply(event)
        return state.transcript(track=track)

    def _publisher_places(self) -> int:
        return sum(room.publisher_room for room in self.rooms.values())

    def _evict_idle(self) -> None:
        """Idle rooms without a publisher's place leave memory (their finals
        are on disk; without a store, only rooms that have none)."""
        for name, room in list(self.rooms.items()):
            if room.idle and not room.publisher_room and (self.store is not None or not room.captions.finals):
                room.unfollow()
                del self.rooms[name]

    def _empty_rooms(self) -> int:
        """Rooms held for viewers alone with nothing to show."""
        return sum(not room.publisher_room and not room.captions.finals for room in self.rooms.values())

    async def end(self, name: str, elsewhere: bool = False) -> tuple[bool, int] | None:
        """End the room ``name`` (see ``Room.end``) and let it leave memory;
        None when no such room is held. With ``--redis``, the nodes that follow the room end it
        too, once their viewers have what it said (``Cluster.ended``); ``elsewhere``: another
        node ended it, and what this one holds of it is closed, nothing more made."""
        room = self.rooms.get(name)
        if room is None:
            return None
        try:
            ended = await room.end(time.monotonic(), finish=not elsewhere)
            if self.cluster is not None and not elsewhere:
                self.cluster.ended(name, room.log_seq)
            return ended
        finally:
            room.unfollow()
            await room.release()
            if self.rooms.get(name) is room:
                del self.rooms[name]

    async def on_owner(self, action: str, name: str, body: dict[str, Any]) -> Answer:
        """Carry out ``action`` on room ``name`` (``carry_out``) where the room is captioned: here,
        or with ``--redis`` on the node that captions it (forwarded through Redis,
        ``Cluster.forward``; ``ServerBusy`` if it does not answer). Only that node gives out the
        room's seqs, holds its publisher and keeps the labels of the lines it made."""
        room = self.rooms.get(name)
        if self.cluster is not None and not (room is not None and room.owned):
            owner = await self.cluster.owner(name)
            if owner is not None and owner != self.cluster.node:
                return await self.cluster.forward(owner, action, name, body)
        return await self.carry_out(action, name, body)

    async def carry_out(self, action: str, name: str, body: dict[str, Any]) -> Answer:
        """``action`` on room ``name`` here, asked here or by another node (``on_owner``): an
        operator's ``correct`` (``seq``, ``text``, ``by``: the key's id) or ``end``, a viewer's
        ``flag`` (``seq``, ``viewer``) or ``rate`` (``stars``, ``viewer``); a refusal is answered
        with its status and event."""
        wall = time.time()
        try:
            if action == "end":
                return await self._end_here(name)
            room = self.get(name)
            if action == "correct":
                seq, text = correction(body)
                async with room.owning():
                    event = room.correct(seq, text, _text(body, "by"), wall, await room.archived(seq))
                return 200, event.to_message()
            if action == "flag":
                seq = flag_of(body).seq
                return 200, {"type": "flagged", "seq": seq, "counted": room.flag(seq, _text(body, "viewer"), wall)}
            if action == "rate":
                stars = rating_of(body).stars
                room.rate(stars, _text(body, "viewer"), wall)
                return 200, {"type": "rated", "stars": stars}
            raise InvalidRequest(f"no such action: {action!r:.100}")
        except Refused as refusal:
            self.scheduler.metrics.refusals.labels(refusal.code).inc()
            return refusal.http_status, refusal.to_event()
        except ServerBusy as busy:  # the registry full, Redis unreachable: try again
            return 503, busy.to_event()
        except LivecapError as error:  # a room name that is none (ProtocolError)
            return 400, error.to_event()

    async def _end_here(self, name: str) -> Answer:
        room = self.rooms.get(name)
        if room is not None and not room.owned:  # --redis: a room no node captions now; holding its lease
            async with room.owning():  # keeps out an owner that stalled past it (the lease fences it off)
                ended = await self.end(name)
        else:
            ended = await self.end(name)
        if ended is None:
            return 404, {"room": name, "ended": False}
        return 200, {"room": name, "ended": True, "publisher_closed": ended[0], "viewers_closed": ended[1]}

    def _ended_elsewhere(self, name: str) -> None:
        """The node that captions room ``name`` ended it: so does this one."""
        task = asyncio.create_task(self.end(name, elsewhere=True), name=f"end-{name}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def close(self) -> None:
        """Server shutdown: every open utterance becomes final, and subscribers get it (see ``drain``)."""
        for room in self.rooms.values():
            room.unfollow()
        await asyncio.gather(*(room.session.stop(time.monotonic()) for room in self.rooms.values() if room.session),
                             return_exceptions=True)
        await asyncio.gather(*(room.drain() for room in self.rooms.values()))
