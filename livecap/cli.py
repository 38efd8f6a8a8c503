"""The ``livecap`` command: serve, stream, keys, models."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from aiohttp import web

from livecap import __version__
from livecap.audio import read_wav
from livecap.auth import Keys, load_or_create_secret
from livecap.client import ingest_url, stream_audio
from livecap.config import ServerOptions, add_arguments, load_options
from livecap.logs import configure

log = logging.getLogger("livecap")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecap", description="Self-hosted real-time live captions.")
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
    stream.add_argument("--url", default="ws://127.0.0.1:8765", help="server WebSocket base URL")
    stream.add_argument("--key", help="publisher key of the room (see 'livecap keys')")
    stream.add_argument("--speed", type=float, default=1.0, help="playback speed (1 = real time)")
    stream.add_argument("--json", action="store_true", help="print every message as a JSON line")
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
    room_keys = Keys(options.secret or load_or_create_secret(options.data_dir / "secret"), options.viewer_keys)
    if arguments.command == "keys":
        print(f"publisher key for room {arguments.room!r}: {room_keys.key('publisher', arguments.room)}")
        if options.viewer_keys:
            print(f"viewer key for room {arguments.room!r}:    {room_keys.key('viewer', arguments.room)}")
        print(f"operator key (all rooms):          {room_keys.key('operator')}")
        return 0
    configure(options.log_level, options.log_format)
    asyncio.run(_serve(options, room_keys))
    return 0


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
    base = options.public_url.rstrip("/") or f"{'https' if ssl_context else 'http'}://{options.host}:{port}"
    print(f"livecap {__version__} listening on {base}", flush=True)
    demo: asyncio.Task[None] | None = None
    if options.demo:
        publisher = keys.key("publisher", DEMO_ROOM)
        print(f"  demo captions (overlay):    {base}/overlay/{DEMO_ROOM}\n"
              f"  demo captions (phone view): {base}/view/{DEMO_ROOM}\n"
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
        if demo is not None:
            demo.cancel()
        await runner.cleanup()


def _stream(arguments: argparse.Namespace) -> int:
    audio = read_wav(arguments.file)
    interactive = sys.stdout.isatty() and not arguments.json

    def show(message: dict[str, Any]) -> None:
        if arguments.json:
            print(json.dumps(message), flush=True)
        elif message.get("type") == "error":
            print(f"error {message['code']}: {message['message']}", file=sys.stderr)
        elif message.get("type") == "caption":
            if message["kind"] == "partial" and interactive:
                print(f"\r\x1b[2K… {message['text']}", end="", flush=True)
            elif message["kind"] != "partial":
                print(f"\r\x1b[2K{message['text']}" if interactive else message["text"], flush=True)

    result = asyncio.run(stream_audio(ingest_url(arguments.url, arguments.room, arguments.key), audio.mono_16k(),
                                      speed=arguments.speed, on_message=show))
    return 1 if any(m.get("type") == "error" for m in result.messages) else 0
