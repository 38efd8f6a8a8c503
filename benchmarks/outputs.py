"""Outputs benchmark: what a failing stream destination costs the room's viewers, and what the
destination gets once it recovers.

Starts ``livecap serve`` (``benchmarks.live.serving``) and a loopback HTTP destination standing in
for YouTube, Zoom and a webhook, then streams the same real speech at real-time pace into three
rooms at once: ``plain`` (no outputs), ``healthy`` (the three outputs, answering at once) and
``failing`` (the three outputs, failing until the stream ends: 503s, every fourth request hanging
past the sender's timeout, every seventh connection reset). A viewer watches each room. Three
rounds, each room's publisher first in one of them (the executor takes the rooms' simultaneous
steps in turn, which alone makes the last one's captions later). Reports:

- viewers' final lag and word lag p50/p95 per room (``benchmarks.live.analyse`` on the viewer's
  messages): a failing output must not add to them;
- the healthy outputs' delay behind the viewers (destination's receipt minus the viewer's, per line);
- the failing outputs after recovery: lines delivered against the viewers' finals (lost, repeated),
  seq rules (YouTube, Zoom), failed attempts, and the time from recovery to an empty queue.

    python -m benchmarks.outputs --seconds 60 [-- server flags]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web

from benchmarks.live import RESULTS, SECRET, RoomPlan, analyse, percentile, plan_rooms, serving
from benchmarks.scoring import DEFAULT_MANIFEST, load_manifest, write_results
from livecap.auth import Keys
from livecap.client import StreamResult, ingest_url, stream_audio
from livecap.outputs.senders import REQUEST_TIMEOUT_S

KINDS = {"yt": "youtube", "zoom": "zoom", "hook": "webhook"}
"""Output name → kind; the name is also the destination's path."""


@dataclass
class Attempt:
    """One request as the destination got it."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    received: float
    """Monotonic time it arrived."""
    ok: bool = False


@dataclass
class Destination:
    """YouTube, Zoom and webhooks on loopback, under any paths. Requests under a path prefix in
    ``failing`` fail while ``time.monotonic() < failing[prefix]``: most with 503, every fourth
    by hanging past the sender's timeout, every seventh by a reset connection."""

    attempts: list[Attempt] = field(default_factory=list)
    failing: dict[str, float] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    """Zoom's ``GET PATH/seq``: the last seq taken at PATH before this destination started."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        attempt = Attempt(request.path, parse_qs(request.query_string), dict(request.headers), await request.read(),
                          time.monotonic())
        self.attempts.append(attempt)
        if any(request.path.startswith(prefix) and time.monotonic() < until for prefix, until in self.failing.items()):
            count = len(self.attempts)
            if count % 4 == 0:
                await asyncio.sleep(REQUEST_TIMEOUT_S + 2)
            elif count % 7 == 0 and request.transport is not None:
                request.transport.abort()
            return web.Response(status=503, text="try later")
        attempt.ok = True
        return web.Response(text="ok")

    async def last_seq(self, request: web.Request) -> web.Response:
        """Zoom's ``GET …/closedcaption/seq``: the seq of the last post taken."""
        path = request.path.removesuffix("/seq")
        taken = [int(a.query["seq"][0]) for a in self.delivered(path) if "seq" in a.query]
        return web.Response(text=str(max(taken, default=self.seqs.get(path, 0))))

    def delivered(self, path: str) -> list[Attempt]:
        return [a for a in self.attempts if a.path == path and a.ok]

    async def serve(self) -> tuple[web.AppRunner, str]:
        """Listen on a free loopback port: (runner to clean up, base URL)."""
        app = web.Application()
        app.router.add_post("/{path:.*}", self.handle)
        app.router.add_get("/{path:.*}/seq", self.last_seq)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner, f"http://127.0.0.1:{port}"


def seq_rules_kept(attempts: Sequence[Attempt]) -> bool:
    """YouTube's and Zoom's rule: seq one more for each new post, the same (and the same body) on a retry."""
    last: Attempt | None = None
    for attempt in attempts:
        seq = int(attempt.query["seq"][0])
        if last is None:
            expected = seq == 1
        elif last.ok:
            expected = seq == int(last.query["seq"][0]) + 1
        else:
            expected = seq == int(last.query["seq"][0]) and attempt.body == last.body
        if not expected:
            return False
        last = attempt
    return True


def outputs(base: str, prefix: str) -> list[dict[str, Any]]:
    return [{"name": "yt", "kind": "youtube", "url": f"{base}/{prefix}/yt?cid=key"},
            {"name": "zoom", "kind": "zoom", "url": f"{base}/{prefix}/zoom?id=1&ns=abc"},
            {"name": "hook", "kind": "webhook", "url": f"{base}/{prefix}/hook", "secret": "benchmark"}]


async def watch(url: str, into: StreamResult) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as viewer:
        async for message in viewer:
            into.messages.append(json.loads(message.data))
            into.arrivals.append(time.monotonic())


ROLES = {"plain": None, "healthy": "ok", "failing": "fail"}
"""Room role → the destination's path prefix of its outputs (None: no outputs)."""


@dataclass
class Round:
    """One run of the three rooms at once, as their viewers and the destination saw it."""

    viewers: dict[str, StreamResult]
    """By role, with the publisher's start time and offset, for ``analyse``."""
    destination: Destination
    prefixes: dict[str, str]
    """Role → the path prefix of its outputs in this round."""
    caught_up_s: float
    """From the failing destination's recovery to the failing room's outputs' empty queues."""
    states: dict[str, list[dict[str, Any]]]


async def run_round(base: str, plan: RoomPlan, number: int, order: Sequence[str], drain_limit_s: float) -> Round:
    """Stream ``plan`` into a room per role at once (publishers started in ``order``: the
    executor serves the rooms' simultaneous steps in turn, so each role is first in one round)."""
    keys = Keys(SECRET)
    destination = Destination()
    runner, destination_base = await destination.serve()
    rooms = {role: f"{role}-{number}" for role in order}
    prefixes = {role: f"{prefix}{number}" for role, prefix in ROLES.items() if prefix}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {keys.key('operator')}"}) as http:
        for role, room in rooms.items():
            settings = {"outputs": outputs(destination_base, prefixes[role]) if role in prefixes else []}
            async with http.patch(f"{base}/operator/rooms/{room}/settings", json=settings) as response:
                response.raise_for_status()
        viewers = {role: StreamResult() for role in rooms}
        watching = [asyncio.create_task(watch(f"{base.replace('http', 'ws', 1)}/ws/captions/{room}", viewers[role]))
                    for role, room in rooms.items()]
        await asyncio.sleep(1.0)
        failing = f"/{prefixes['failing']}/"
        destination.failing[failing] = float("inf")
        publishers = await asyncio.gather(*(stream_audio(ingest_url(base, room, keys.key("publisher", room)),
                                                         plan.audio) for room in rooms.values()))
        recovered = destination.failing[failing] = time.monotonic()
        states: dict[str, list[dict[str, Any]]] = {}
        while time.monotonic() < recovered + drain_limit_s:
            async with http.get(f"{base}/operator/rooms") as response:
                shown = {r["name"]: r["outputs"] for r in (await response.json())["rooms"]}
            states = {role: shown.get(room, []) for role, room in rooms.items()}
            if all(o["queued"] == 0 for o in states["failing"]):
                break
            await asyncio.sleep(0.2)
        caught_up = time.monotonic() - recovered
        await asyncio.sleep(1.0)
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
    await runner.cleanup()
    timed = {role: replace(viewers[role], audio_started=publisher.audio_started, offset=publisher.offset)
             for role, publisher in zip(rooms, publishers, strict=True)}
    return Round(timed, destination, prefixes, caught_up, states)


def delivery(round_: Round, role: str) -> dict[str, Any]:
    """What the destination got from the outputs of the room of ``role``, against its viewer's finals."""
    viewer, prefix, destination = round_.viewers[role], round_.prefixes[role], round_.destination
    finals = [(m, t) for m, t in zip(viewer.messages, viewer.arrivals, strict=True)
              if m.get("type") == "caption" and m["kind"] == "final"]
    lines = [m["text"] for m, _ in finals if m["text"]]
    arrivals = {m["seq"]: t for m, t in finals}
    hook = destination.delivered(f"/{prefix}/hook")
    attempts = [a for a in destination.attempts if a.path.startswith(f"/{prefix}/")]
    return {
        "lines": len(lines),
        "youtube_as_viewers_saw": [a.body.decode().split("\n")[1] for a in destination.delivered(f"/{prefix}/yt")]
        == lines,
        "zoom_as_viewers_saw": [a.body.decode() for a in destination.delivered(f"/{prefix}/zoom")] == lines,
        "webhook_as_viewers_saw": [json.loads(a.body)["seq"] for a in hook] == sorted(arrivals),
        "seq_rules_kept": all(seq_rules_kept([a for a in attempts if a.path == f"/{prefix}/{name}"])
                              for name in ("yt", "zoom")),
        "attempts": len(attempts), "failed_attempts": sum(not a.ok for a in attempts),
        "behind_viewers_s": [a.received - arrivals[json.loads(a.body)["seq"]] for a in hook],
        "lost": sum(o["dropped"] for o in round_.states[role]),
    }


def report(plan: RoomPlan, rounds: Sequence[Round]) -> dict[str, Any]:
    """Per role over the rounds: viewers' lags; per room with outputs: what was delivered."""
    result: dict[str, Any] = {"rounds": len(rounds), "viewers": {}, "outputs": {}}
    for role in ROLES:
        outcomes = [analyse(replace(plan, room=role), r.viewers[role]) for r in rounds]
        final_lags = [lag for o in outcomes for lag in o.final_lags]
        word_lags = [lag for o in outcomes for lag in o.word_lags]
        result["viewers"][role] = {
            "final_lag_p50_s": percentile(final_lags, 50), "final_lag_p95_s": percentile(final_lags, 95),
            "word_lag_p50_s": percentile(word_lags, 50), "word_lag_p95_s": percentile(word_lags, 95),
            "finals": len(final_lags)}
    for role in ("healthy", "failing"):
        delivered = [delivery(r, role) for r in rounds]
        behind = [lag for d in delivered for lag in d.pop("behind_viewers_s")]
        result["outputs"][role] = {
            "lines": sum(d["lines"] for d in delivered),
            "all_delivered_as_viewers_saw": all(d["youtube_as_viewers_saw"] and d["zoom_as_viewers_saw"]
                                                and d["webhook_as_viewers_saw"] for d in delivered),
            "seq_rules_kept": all(d["seq_rules_kept"] for d in delivered),
            "attempts": sum(d["attempts"] for d in delivered),
            "failed_attempts": sum(d["failed_attempts"] for d in delivered),
            "lost": sum(d["lost"] for d in delivered),
            "webhook_behind_viewers_p50_s": percentile(behind, 50),
            "webhook_behind_viewers_p95_s": percentile(behind, 95)}
    result["outputs"]["failing"]["caught_up_after_recovery_s"] = [round(r.caught_up_s, 2) for r in rounds]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per room and round")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--out", type=Path, default=RESULTS / "outputs-tiny.en-int8-cpu2.json")
    parser.add_argument("server_args", nargs="*", help="flags passed to 'livecap serve' (after --)")
    arguments = parser.parse_args(argv)
    [plan] = plan_rooms(load_manifest(arguments.manifest), 1, arguments.seconds)
    roles = list(ROLES)
    with serving(arguments.server_args) as (base, _):
        rounds = [asyncio.run(run_round(base, plan, number, roles[number:] + roles[:number], arguments.seconds))
                  for number in range(len(roles))]
    results = report(plan, rounds)
    write_results(arguments.out, {"seconds_per_round": arguments.seconds, "server_args": arguments.server_args,
                                  **results})
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
