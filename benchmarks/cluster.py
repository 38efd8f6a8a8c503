"""Scale-out: several livecap nodes and one real Redis on loopback (README.md, Scale-out).

``python -m benchmarks.cluster hop``: a publisher on node A, viewers on B and C: every caption
arrives with the seqs and finals of a single node; the extra delay of the hop through Redis.
``python -m benchmarks.cluster failover``: ``kill -9`` of the owning node mid-stream, N times; the
publisher reconnects to another node; what viewers on the surviving nodes lost (nothing, asked),
the gap in captions and the audio lost.
``python -m benchmarks.cluster viewers --viewers 5000``: viewers spread over 3 nodes, in client
processes: every viewer gets every final; fan-out delay per node (from the publisher's own copy of
the final); server RSS per node.

Results are written as JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import redis
import websockets

from benchmarks.live import RESULTS, SECRET, free_port, percentile, start_server
from benchmarks.scoring import DEFAULT_MANIFEST, load_manifest, word_error_rate, write_results
from livecap.audio import TARGET_RATE, read_wav
from livecap.auth import Keys
from livecap.client import StreamResult, ingest_url, stream_audio, wait_until_ready


class RedisServer:
    """A real ``redis-server`` (Debian's package) on a free loopback port, in a directory of its
    own. Append-only file synced at every write (``appendfsync always``): a restarted Redis has
    every event it acknowledged (README.md, Scale-out: the settings that matter)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; make system-deps)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="livecap-redis-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


class Node:
    """``livecap serve --redis`` in a subprocess (its own port and data directory), through kills and restarts."""

    def __init__(self, name: str, redis_url: str, data_dir: Path, args: Sequence[str]) -> None:
        self.name = name
        self.port = free_port()
        self.data_dir = data_dir
        self.args = [*args, "--redis", redis_url, "--node", name]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ingest_url(self, room: str) -> str:
        return ingest_url(self.base, room, Keys(SECRET).key("publisher", room))

    def captions_url(self, room: str, after_seq: int | None = None) -> str:
        query = f"?after_seq={after_seq}" if after_seq is not None else ""
        return f"ws://127.0.0.1:{self.port}/ws/captions/{room}{query}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self) -> None:
        self.process = start_server(self.port, str(self.data_dir), self.args)
        process = self.process
        await wait_until_ready(self.base, 900, lambda: process.poll() is None)

    def kill(self) -> None:
        """``kill -9`` of the node and its engine workers."""
        assert self.process is not None
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()

    def stop(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def rss_mb(self) -> float | None:
        if not self.alive:
            return None
        assert self.process is not None
        main = psutil.Process(self.process.pid)
        rss = main.memory_info().rss + sum(c.memory_info().rss for c in main.children(recursive=True))
        return round(float(rss) / 2**20, 1)


@dataclass
class Viewer:
    """A phone that roams: after any close it resumes (``after_seq``) on the next node that answers."""

    nodes: Sequence[Node]
    room: str
    index: int
    messages: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    """(arrival, node, message) of every caption."""
    last_seq: int = 0

    async def run(self, until: asyncio.Event) -> None:
        turn = self.index
        while not until.is_set():
            node = self.nodes[turn % len(self.nodes)]
            turn += 1
            if not node.alive:
                continue
            with contextlib.suppress(OSError, websockets.WebSocketException, TimeoutError):
                async with websockets.connect(node.captions_url(self.room, self.last_seq if self.messages else None),
                                              compression=None, open_timeout=10) as ws:
                    await self._read(ws, node.name, until)
            await asyncio.sleep(0.1)

    async def _read(self, ws: websockets.ClientConnection, node: str, until: asyncio.Event) -> None:
        while True:
            receiving = asyncio.ensure_future(ws.recv())
            stopping = asyncio.ensure_future(until.wait())
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not receiving.done():
                receiving.cancel()
                return
            message = json.loads(receiving.result())  # raises ConnectionClosed at the end
            if message.get("type") == "caption" and message["seq"] > self.last_seq:
                self.last_seq = message["seq"]
                self.messages.append((time.monotonic(), node, message))

    def lines(self) -> dict[int, str]:
        """What the viewer shows at the end: each line's text (its final, then its corrections)."""
        shown: dict[int, str] = {}
        for _, _, m in self.messages:
            if m["kind"] in ("final", "correction"):
                shown[m["segment"]] = m["text"]
        return {segment: text for segment, text in shown.items() if text}


def owner(redis_url: str, room: str) -> str | None:
    return redis.Redis.from_url(redis_url, decode_responses=True).get(f"livecap:{{{room}}}:owner")  # type: ignore[return-value]


async def transcript(node: Node, room: str) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(f"{node.base}/rooms/{room}/transcript.json") as response:
        response.raise_for_status()
        return [line["text"] for line in await response.json()]


@dataclass
class Kill:
    node: str
    at: float
    """Monotonic time of the kill."""


async def failover(nodes: Sequence[Node], redis_url: str, room: str, samples: np.ndarray, kills: int,
                   viewers_per_node: int = 1, first_kill_s: float = 8.0) -> dict[str, Any]:
    """Stream ``samples`` at real-time pace into ``room`` through ``nodes`` (the publisher starts on the
    first and reconnects to the next after a loss), ``kill -9`` the room's owner ``kills`` times
    (evenly, the first after ``first_kill_s``; each killed node is started again), with roaming
    viewers; returns the figures (see ``figures``)."""
    until = asyncio.Event()
    viewers = [Viewer(nodes, room, i) for i in range(viewers_per_node * len(nodes))]
    watching = [asyncio.create_task(v.run(until)) for v in viewers]
    await asyncio.sleep(1.0)
    duration = len(samples) / TARGET_RATE
    publishing = asyncio.create_task(stream_audio([n.ingest_url(room) for n in nodes], samples, reconnect=20))
    done: list[Kill] = []
    began = time.monotonic()
    spacing = (duration - first_kill_s - 5.0) / max(1, kills)
    for k in range(kills):
        await asyncio.sleep(max(0.0, began + first_kill_s + k * spacing - time.monotonic()))
        name = owner(redis_url, room)
        victim = next((n for n in nodes if n.name == name), None)
        if victim is None or publishing.done():
            continue
        victim.kill()
        done.append(Kill(victim.name, time.monotonic()))
        await asyncio.sleep(2.0)
        await victim.start()
    result = await publishing
    await asyncio.sleep(3.0)
    until.set()
    await asyncio.gather(*watching)
    exported = await transcript(nodes[-1], room)
    return figures(result, viewers, done, exported)


def figures(result: StreamResult, viewers: Sequence[Viewer], kills: Sequence[Kill],
            exported: Sequence[str]) -> dict[str, Any]:
    """Per kill: the gap in captions (seconds from the kill to the next caption on a viewer of a node
    that survived it) and the audio sent again; for every viewer: seqs strictly increasing and every
    line of the exported transcript shown."""
    gaps: list[dict[str, Any]] = []
    for kill in kills:
        after = [t for v in viewers for t, node, _ in v.messages if t > kill.at and node != kill.node]
        before = [t for v in viewers for t, _, _ in v.messages if t <= kill.at]
        if after:
            gaps.append({"node": kill.node, "to_next_caption_s": round(min(after) - kill.at, 2),
                         "without_captions_s": round(min(after) - max(before, default=kill.at), 2)})
    complete = [sorted(v.lines().values()) == sorted(t for t in exported if t) for v in viewers]
    seqs = [[m["seq"] for _, _, m in v.messages] for v in viewers]
    return {
        "kills": len(kills),
        "reconnects": len(result.reconnects),
        "publisher_error": result.error,
        "resent_audio_s": round(result.resent_samples / TARGET_RATE, 2),
        "resent_audio_per_kill_s": round(result.resent_samples / TARGET_RATE / max(1, len(kills)), 2),
        "gaps": gaps,
        "gap_p50_s": percentile([g["to_next_caption_s"] for g in gaps], 50),
        "gap_max_s": max((g["to_next_caption_s"] for g in gaps), default=None),
        "viewers": len(viewers),
        "viewers_with_every_line": sum(complete),
        "seq_strictly_increasing": all(s == sorted(set(s)) for s in seqs),
        "lines": len(exported),
        "text": " ".join(exported),
    }


async def hop(nodes: Sequence[Node], room: str, samples: np.ndarray, viewers_per_node: int) -> dict[str, Any]:
    """A publisher on the first node, ``viewers_per_node`` viewers on each: every viewer's captions,
    and when each arrived beside the same caption on the publisher's own node."""
    until = asyncio.Event()
    viewers = [Viewer([node], room, i) for node in nodes for i in range(viewers_per_node)]
    watching = [asyncio.create_task(v.run(until)) for v in viewers]
    await asyncio.sleep(1.0)
    result = await stream_audio(nodes[0].ingest_url(room), samples)
    await asyncio.sleep(2.0)
    until.set()
    await asyncio.gather(*watching)
    local = [v for v in viewers if v.nodes[0] is nodes[0]]
    arrived = {m["seq"]: min(t for v in local for t, _, x in v.messages if x["seq"] == m["seq"])
               for _, _, m in local[0].messages}
    delays: dict[str, list[float]] = {}
    for viewer in viewers:
        if viewer.nodes[0] is nodes[0]:
            continue
        for t, _, m in viewer.messages:
            if m["seq"] in arrived:
                delays.setdefault(viewer.nodes[0].name, []).append(t - arrived[m["seq"]])
    finals = [(m["seq"], m["text"]) for m in result.finals]
    seen = [[(m["seq"], m["text"]) for _, _, m in v.messages if m["kind"] == "final"] for v in viewers]
    hops = [d for values in delays.values() for d in values]
    return {
        "viewers": len(viewers),
        "finals": len(finals),
        "viewers_with_the_publishers_finals": sum(s == finals for s in seen),
        "hop_delay_p50_ms": percentile([1000 * d for d in hops], 50),
        "hop_delay_p95_ms": percentile([1000 * d for d in hops], 95),
        "hop_delay_by_node_ms": {name: {"p50": percentile([1000 * d for d in values], 50),
                                        "p95": percentile([1000 * d for d in values], 95)}
                                 for name, values in delays.items()},
        "text": " ".join(text for _, text in finals),
    }


def watch(urls: Sequence[str], until: float, connect_per_s: float) -> list[dict[str, Any]]:
    """A client process: one viewer per URL (connections spread at ``connect_per_s``), each noting
    when every final with words arrived, until monotonic time ``until``."""
    return asyncio.run(_watch(urls, until, connect_per_s))


async def _watch(urls: Sequence[str], until: float, connect_per_s: float) -> list[dict[str, Any]]:
    async def view(url: str, delay: float) -> dict[str, Any]:
        await asyncio.sleep(delay)
        finals: dict[int, float] = {}
        connected = False
        while time.monotonic() < until and not connected:
            with contextlib.suppress(OSError, websockets.WebSocketException, TimeoutError):
                async with websockets.connect(url, compression=None, open_timeout=30) as ws:
                    connected = True
                    while (left := until - time.monotonic()) > 0:
                        with contextlib.suppress(TimeoutError):
                            message = json.loads(await asyncio.wait_for(ws.recv(), left))
                            if message.get("kind") == "final" and message["text"]:
                                finals[message["seq"]] = time.monotonic()
            if not connected:
                await asyncio.sleep(1.0)
        return {"url": url, "connected": connected, "finals": finals}

    return list(await asyncio.gather(*(view(url, i / connect_per_s) for i, url in enumerate(urls))))


async def fan_out(nodes: Sequence[Node], room: str, samples: np.ndarray, viewers: int,
                  processes: int) -> dict[str, Any]:
    """``viewers`` viewers spread over ``nodes`` (in ``processes`` client processes), a publisher on
    the first node: does every viewer get every final, and how long after the publisher did."""
    connect_per_s = 400.0 / processes
    connecting_s = viewers / processes / connect_per_s + 10.0
    audio_s = len(samples) / TARGET_RATE
    until = time.monotonic() + connecting_s + audio_s + 15.0
    urls = [nodes[i % len(nodes)].captions_url(room) for i in range(viewers)]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes) as pool:
        watching = [loop.run_in_executor(pool, watch, urls[p::processes], until, connect_per_s)
                    for p in range(processes)]
        await asyncio.sleep(connecting_s)
        result = await stream_audio(nodes[0].ingest_url(room), samples)
        rss = {n.name: n.rss_mb() for n in nodes}
        seen = [v for part in await asyncio.gather(*watching) for v in part]
    published = {m["seq"]: t for m, t in zip(result.messages, result.arrivals, strict=True)
                 if m.get("kind") == "final" and m["text"]}
    delays: dict[str, list[float]] = {}
    for viewer in seen:
        node = next(n.name for n in nodes if viewer["url"].startswith(n.captions_url("").rsplit("/", 1)[0]))
        delays.setdefault(node, []).extend(t - published[s] for s, t in viewer["finals"].items() if s in published)
    return {
        "viewers": viewers,
        "client_processes": processes,
        "connected": sum(v["connected"] for v in seen),
        "finals": len(published),
        "viewers_with_every_final": sum(set(v["finals"]) >= set(published) for v in seen),
        "fan_out_delay_ms": {node: {"p50": percentile([1000 * d for d in values], 50),
                                    "p95": percentile([1000 * d for d in values], 95),
                                    "max": round(1000 * max(values), 1) if values else None}
                             for node, values in sorted(delays.items())},
        "rss_mb_at_end_of_speech": rss,
        "text": " ".join(m["text"] for m in result.finals),
    }


def speech(seconds: float) -> tuple[np.ndarray, list[str]]:
    """Recordings of the evaluation set back to back, 1 s apart, about ``seconds`` long."""
    parts, references, total = [], [], 0.0
    for recording in load_manifest(DEFAULT_MANIFEST):
        audio = read_wav(recording.audio).mono_16k()
        parts += [audio, np.zeros(TARGET_RATE, np.float32)]
        references.append(recording.text)
        total += len(audio) / TARGET_RATE + 1
        if total >= seconds:
            break
    return np.concatenate(parts), references


async def run(mode: str, seconds: float, kills: int, viewers: int, processes: int,
              server_args: Sequence[str]) -> dict[str, Any]:
    samples, references = speech(seconds)
    with tempfile.TemporaryDirectory() as directory, redis_server() as store:
        nodes = [Node(name, store.url, Path(directory) / name, server_args) for name in "abc"]
        try:
            await asyncio.gather(*(n.start() for n in nodes))
            if mode == "hop":
                figures = await hop(nodes, "hop", samples, viewers)
            elif mode == "viewers":
                figures = await fan_out(nodes, "crowd", samples, viewers, processes)
            else:
                figures = await failover(nodes, store.url, "failover", samples, kills, viewers)
            figures["rss_mb"] = {n.name: n.rss_mb() for n in nodes}
        finally:
            for node in nodes:
                node.stop()
    figures["wer"] = round(word_error_rate([" ".join(references)], [figures.pop("text")]), 4)
    figures["audio_s"] = round(len(samples) / TARGET_RATE, 1)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="flags after -- go to 'livecap serve'")
    parser.add_argument("mode", choices=["hop", "failover", "viewers"])
    parser.add_argument("--seconds", type=float, default=120.0, help="speech streamed")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--viewers", type=int, default=2, help="viewers per node (viewers: in all)")
    parser.add_argument("--processes", type=int, default=4, help="client processes of the viewers mode")
    parser.add_argument("--label", default="tiny.en-int8-cpu2")
    argv = list(sys.argv[1:] if argv is None else argv)
    server_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    arguments = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    arguments.server_args = server_args
    report = {"mode": arguments.mode, "server_args": arguments.server_args, "cpu_count": os.cpu_count(),
              **asyncio.run(run(arguments.mode, arguments.seconds, arguments.kills, arguments.viewers,
                                arguments.processes, arguments.server_args))}
    print(json.dumps(report), flush=True)
    write_results(RESULTS / f"cluster-{arguments.mode}-{arguments.label}.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
