"""The ``livecap`` command: serve, stream, keys, models."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from livecap import __version__
from livecap.audio import Downmix, read_wav
from livecap.auth import Keys, load_or_create_secret
from livecap.client import ingest_url, stream_audio
from livecap.config import ServerOptions, add_arguments, load_options
from livecap.ingest import CHANNELS_CANCEL
from livecap.logs import configure
from livecap.settings import SettingsStore, changes

log = logging.getLogger("livecap")
STREAM_TRIES = 5
"""Connections in a row ``livecap stream`` tries, when the server refuses a start for now (server_busy,
rate_limited) or the connection is lost (a node of a cluster goes away, say)."""


class Parser(argparse.ArgumentParser):
    """argparse, except that an option that takes a value takes the next word
    whatever it begins with, as POSIX ``getopt()`` does. Room keys and secrets
    are URL-safe base64, and one in 64 begins with '-': argparse alone reads
    ``--key -Xy…`` as a missing value and an unknown option (CPython issue
    gh-53580). ``--key=VALUE`` works either way; it is what ``keys`` prints."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._takes_value: set[str] = set()

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.nargs is None:
            self._takes_value.update(action.option_strings)
        return action

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        words, joined = list(sys.argv[1:] if args is None else args), []
        while words:
            word = words.pop(0)
            if word == "--":
                joined += [word, *words]
                break
            joined.append(f"{word}={words.pop(0)}" if word in self._takes_value and words else word)
        return super().parse_known_args(joined, namespace)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="livecap", description="Self-hosted real-time live captions.")
    parser.add_argument("--version", action="version", version=f"livecap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the captioning server")
    add_arguments(serve)
    keys = commands.add_parser("keys", help="print the keys of a room (same settings as serve)")
    keys.add_argument("room")
    add_arguments(keys)
    stream = commands.add_parser("stream", help="play a WAV file into a room and print its captions")
    stream.add_argument("file")
    stream.add_argument("--room", required=True)
    stream.add_argument("--url", default="ws://127.0.0.1:8765",
                        help="server WebSocket base URL; several, comma-separated (nodes of one --redis cluster): "
                             "a lost connection goes on at the next")
    stream.add_argument("--key", help="publisher key of the room (see 'livecap keys')")
    stream.add_argument("--speed", type=float, default=1.0, help="playback speed (1 = real time)")
    stream.add_argument("--json", action="store_true", help="print every message as a JSON line")
    stream.add_argument("--language", help="what is spoken: a Whisper language code or auto (default: the room's)")
    stream.add_argument("--translate", choices=["en"], help="also caption an English translation track")
    labels = commands.add_parser("labels", help="the corrections, flags and ratings kept in the data directory: "
                                 "'export' them as an evaluation set, or sum them up per model version ('stats')")
    labels.add_argument("action", choices=["export", "stats"])
    labels.add_argument("--room", help="only this room")
    labels.add_argument("--since", help="only labels given since then: an ISO date or time (UTC unless it says)")
    labels.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="export format")
    add_arguments(labels)
    settings = commands.add_parser("settings", help="print a room's settings, or change them (audited as 'cli')")
    settings.add_argument("room")
    settings.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="changes",
                          help="glossary='Sintra, OBS' (or glossary=null), profanity='word, word', "
                               "viewer_keys=true|false|null, recording=true|false, "
                               "outputs='[{...}]' (JSON, see README); repeat for more")
    settings.add_argument("--audit", action="store_true", help="print the room's audit log instead")
    add_arguments(settings)
    recordings = commands.add_parser("recordings", help="delete a room's recorded audio now")
    recordings.add_argument("action", choices=["delete"])
    recordings.add_argument("--room", required=True)
    add_arguments(recordings)
    commands.add_parser("models", help="build, list or verify the ONNX models", add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["models"]:
        from livecap_models.cli import main as models_main

        return models_main(argv[1:])
    arguments = parser.parse_args(argv)
    if arguments.command == "stream":
        return _stream(arguments)
    options = load_options(arguments)
    if arguments.command == "labels":
        return _labels(arguments, options)
    if arguments.command == "settings":
        return _settings(arguments, options)
    if arguments.command == "recordings":
        return _delete_recordings(arguments.room, options)
    room_keys = Keys(options.secret or load_or_create_secret(options.data_dir / "secret"), options.viewer_keys)
    if arguments.command == "keys":
        viewer_keys = SettingsStore(options.data_dir / "settings").get(arguments.room).viewer_keys
        _print_keys(arguments.room, room_keys, _base_url(options, options.port), viewer_keys)
        return 0
    configure(options.log_level, options.log_format)
    _limit_malloc_arenas()
    asyncio.run(_serve(options, room_keys))
    return 0


MALLOC_ARENAS = 2
"""glibc's malloc arenas for the server (``MALLOC_ARENA_MAX`` in the environment overrides)."""
_M_ARENA_MAX = -8
"""``mallopt`` parameter (glibc ``malloc.h``)."""


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates an arena of its own (up to 8 per
    core), and what one frees the others do not reuse: with the decoders, the
    executor and the event loop all allocating, the server's RSS crept up for
    tens of minutes (``benchmarks.soak``). Two arenas, as Python servers are
    commonly run (``MALLOC_ARENA_MAX=2``). Called before any thread starts;
    nothing happens without glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _labels(arguments: argparse.Namespace, options: ServerOptions) -> int:
    from livecap import labels
    from livecap.rooms import TranscriptStore

    try:
        since = _since(arguments.since)
    except ValueError as error:
        print(f"--since: {error}", file=sys.stderr)
        return 2
    store = labels.LabelStore(options.data_dir / "labels")
    chosen = store.read(arguments.room, since)
    if arguments.action == "export":
        sys.stdout.write(labels.export(chosen, arguments.format))
        return 0
    transcripts = TranscriptStore(options.data_dir / "transcripts")
    print(json.dumps(labels.stats(chosen, transcripts.finals(arguments.room, since)), indent=2))
    return 0


def _settings(arguments: argparse.Namespace, options: ServerOptions) -> int:
    """``livecap settings ROOM [--set NAME=VALUE ...] [--audit]``; a running server sees a change at once."""
    import redis
    from redis.exceptions import RedisError

    from livecap.cluster import share_settings
    from livecap.errors import InvalidRequest

    if not _is_room(arguments.room):
        return 2
    store = SettingsStore(options.data_dir / "settings")
    cluster = options.redis if arguments.changes else ""
    if cluster:  # every node of the cluster takes the change (``cluster.share_settings``)

        def share(room: str, changed: dict[str, Any], audit: dict[str, Any], whole: dict[str, Any]) -> None:
            with redis.Redis.from_url(cluster, socket_timeout=5.0) as client, client.pipeline() as pipe:
                share_settings(pipe, room, options.node_name, changed, audit, whole)
                pipe.execute()

        store.shared, store.node = share, options.node_name
    if arguments.audit:
        for entry in store.audit(arguments.room):
            print(json.dumps(entry))
        return 0
    values: dict[str, Any] = {}
    for change in arguments.changes:
        name, _, text = change.partition("=")
        try:
            literal = text.strip() in ("true", "false", "null") or text.lstrip()[:1] in ("[", "{")
            values[name.strip()] = json.loads(text) if literal else text
        except ValueError:
            values[name.strip()] = text
    try:
        if cluster:  # before anything changes: a change must reach every node or none
            with redis.Redis.from_url(cluster, socket_timeout=5.0) as client:
                client.ping()
    except RedisError as error:
        print(f"settings: the cluster's Redis is unreachable ({error}); nothing changed", file=sys.stderr)
        return 1
    try:
        old = store.get(arguments.room)
        current = store.change(arguments.room, changes(values, old), "cli", time.time()) if values else old
    except InvalidRequest as error:
        print(f"settings: {error.message}", file=sys.stderr)
        return 2
    except RedisError as error:
        print(f"settings: changed on this node, but not shared with the others ({error}): "
              "make the change again, through the API or here, when Redis answers", file=sys.stderr)
        return 1
    print(json.dumps(current.shown(), indent=2))
    return 0


def _delete_recordings(room: str, options: ServerOptions) -> int:
    from livecap.recordings import RecordingStore

    if not _is_room(room):
        return 2
    deleted = RecordingStore(options.data_dir / "recordings", options.recording_retention_days).delete(room)
    print(f"deleted {deleted} recordings of room {room!r}")
    return 0


def _is_room(name: str) -> bool:
    """Whether ``name`` is a room's name; if not, says why on stderr."""
    from livecap.rooms import ROOM_NAME_RULE, is_room_name

    if not is_room_name(name):
        print(ROOM_NAME_RULE, file=sys.stderr)
    return is_room_name(name)


def _since(value: str | None) -> float | None:
    """``--since``: an ISO 8601 date or date and time, UTC unless it gives an offset."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _base_url(options: ServerOptions, port: int) -> str:
    """Where attendees reach the server: ``public_url``, else this host and port."""
    return options.public_url.rstrip("/") or f"{'https' if options.tls_cert else 'http'}://{options.host}:{port}"


def _print_keys(room: str, keys: Keys, base: str, viewer_keys: bool | None) -> None:
    """The room's keys, each with a link or command that uses it as it stands (copied, not retyped);
    the viewer key if the room (``viewer_keys``, its setting) or the server needs one."""
    publisher, operator = keys.key("publisher", room), keys.key("operator")
    print(f"publisher key for room {room!r}: {publisher}\n"
          f"  speaker page: {base}/speak/{room}?{urlencode({'token': publisher})}\n"
          f"  play a file:  {shlex.join(['livecap', 'stream', 'FILE.wav', '--room', room, '--url', base])}"
          f" --key={shlex.quote(publisher)}")
    if keys.viewers_need_keys(viewer_keys):
        viewer = keys.key("viewer", room)
        print(f"viewer key for room {room!r}: {viewer}\n"
              f"  phone view:   {base}/view/{room}?{urlencode({'token': viewer})}")
    print(f"operator key (all rooms): {operator}\n"
          f"  dashboard:    {base}/dashboard?{urlencode({'token': operator})}\n"
          f"  editor:       {base}/edit/{room}?{urlencode({'token': operator})}")


async def _serve(options: ServerOptions, keys: Keys) -> None:
    from livecap import asr  # noqa: F401  (engines register themselves on import)
    from livecap.demo import DEMO_ROOM, play_demo
    from livecap.server import create_app

    log.info("effective settings: %s", json.dumps(options.masked(), default=str))
    runner = web.AppRunner(create_app(options, keys), access_log=None)
    await runner.setup()
    ssl_context = options.ssl_context()
    site = web.TCPSite(runner, options.host, options.port, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = _base_url(options, port)
    print(f"livecap {__version__} listening on {base}", flush=True)
    demo: asyncio.Task[None] | None = None
    if options.demo:
        publisher = keys.key("publisher", DEMO_ROOM)
        print(f"  demo captions (overlay):    {base}/overlay/{DEMO_ROOM}\n"
              f"  demo captions (phone view): {base}/view/{DEMO_ROOM}\n"
              f"  demo caption editor:        {base}/edit/{DEMO_ROOM}?token={keys.key('operator')}\n"
              f"  demo room publisher key:    {publisher}", flush=True)
        demo = asyncio.create_task(play_demo(f"http://127.0.0.1:{port}", publisher))
    print(f"  operator dashboard: {base}/dashboard?token={keys.key('operator')}\n"
          f"  speak into a room:  {base}/speak/ROOM (publisher key: livecap keys ROOM)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGTERM: docker stop, systemd; both drain the rooms
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("shutting down: finishing open utterances")
    finally:
        if demo is not None:  # first, so its last sentence is finished like any publisher's
            demo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await demo
        await runner.cleanup()  # see server._going_away
        log.info("stopped")


def _stream(arguments: argparse.Namespace) -> int:
    audio = read_wav(arguments.file)
    downmix = Downmix(audio.channels, audio.sample_rate)  # as the server's ingest mixes, warned the same way
    samples = audio.mono_16k(downmix)
    if downmix.cancelled:
        print(f"warning {CHANNELS_CANCEL.code}: {CHANNELS_CANCEL.message}", file=sys.stderr)
    interactive = sys.stdout.isatty() and not arguments.json

    def show(message: dict[str, Any]) -> None:
        if arguments.json:
            print(json.dumps(message), flush=True)
        elif message.get("type") in ("error", "warning"):
            print(f"{message['type']} {message['code']}: {message['message']}", file=sys.stderr)
        elif message.get("type") == "caption":
            if message["kind"] == "partial" and interactive:
                print(f"\r\x1b[2K… {message['text']}", end="", flush=True)
            elif message["kind"] != "partial":
                print(f"\r\x1b[2K{message['text']}" if interactive else message["text"], flush=True)

    urls = [ingest_url(base.strip(), arguments.room, arguments.key) for base in arguments.url.split(",")]
    result = asyncio.run(stream_audio(urls, samples, speed=arguments.speed, on_message=show,
                                      language=arguments.language, translate=arguments.translate,
                                      reconnect=STREAM_TRIES - 1,
                                      on_retry=lambda delay: print(f"trying again in {delay:.1f} s", file=sys.stderr)))
    if result.error is None and result.close_code not in (None, 1000):
        print(f"connection lost (close code {result.close_code})", file=sys.stderr)
    return 1 if result.error or result.close_code not in (None, 1000) else 0
