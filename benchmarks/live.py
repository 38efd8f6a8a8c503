"""Live benchmark: N rooms streaming real speech at real-time pace into one server.

Starts ``livecap serve`` as a subprocess (so its CPU use can be measured on
its own), then streams, into each of N rooms at once, recordings of the
evaluation set back to back (1 s apart) in 20 ms frames paced by the wall
clock, recording when every caption event reaches the client. Reports, per N
(DESIGN.md "Latency — how we measure it"):

- word lag p50/p95: for each word of a final, the first time it was shown in
  the same position of its segment minus the time its audio ended (word end
  times from the engine's timestamps in the final);
- final lag p50/p95: the final's arrival minus the end of its last word's audio
  (client side), and the server's own figure (``latency_ms``: from the
  arrival of the last voiced frame);
- WER of finals against the references, fallback share of utterances, server
  CPU seconds per audio second.

    python -m benchmarks.live --rooms 1 2 4 8 --seconds 120 [-- server flags]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.scoring import DEFAULT_MANIFEST, Recording, load_manifest, normalize, word_error_rate, write_results
from livecap.audio import TARGET_RATE, read_wav
from livecap.auth import Keys
from livecap.client import StreamResult, ingest_url, stream_audio, wait_until_ready

RESULTS = Path(__file__).resolve().parent / "results"
GAP_S = 1.0
SECRET = "benchmark"


@dataclass(frozen=True)
class RoomPlan:
    room: str
    audio: np.ndarray
    references: list[str]
    spans: list[tuple[float, float]] = field(default_factory=list)
    """Where each reference's recording lies in ``audio`` (seconds)."""


@dataclass(frozen=True)
class RoomOutcome:
    room: str
    audio_seconds: float
    reference: str
    hypothesis: str
    word_lags: list[float]
    final_lags: list[float]
    server_final_lags: list[float]
    engines: dict[str, int]
    segments_without_final: int
    """Utterances that showed captions but never got a final: must be 0."""


def plan_rooms(recordings: Sequence[Recording], rooms: int, seconds: float) -> list[RoomPlan]:
    """Room k plays recordings from position k·len/rooms on, until ``seconds`` of audio."""
    plans = []
    for k in range(rooms):
        start, chunks, references, spans, total = k * len(recordings) // rooms, [], [], [], 0.0
        i = start
        while total < seconds:
            recording = recordings[i % len(recordings)]
            samples = read_wav(recording.audio).mono_16k()
            chunks += [samples, np.zeros(int(GAP_S * TARGET_RATE), dtype=np.float32)]
            references.append(recording.text)
            spans.append((total, total + len(samples) / TARGET_RATE))
            total += len(samples) / TARGET_RATE + GAP_S
            i += 1
        plans.append(RoomPlan(f"bench-{k}", np.concatenate(chunks), references, spans))
    return plans


def analyse(plan: RoomPlan, result: StreamResult) -> RoomOutcome:
    """Word and final lags from the client's view of one room."""
    events = [(m, t) for m, t in zip(result.messages, result.arrivals, strict=False) if m.get("type") == "caption"]
    first_shown: dict[tuple[int, int, str], float] = {}
    for message, arrival in events:
        for position, word in enumerate(message["text"].split()):
            first_shown.setdefault((message["segment"], position, normalize(word)), arrival)
    word_lags: list[float] = []
    final_lags: list[float] = []
    server_lags: list[float] = []
    engines: dict[str, int] = {}
    sent = result.audio_started - result.offset  # a word's audio was sent at this plus its room time
    for message, arrival in events:
        if message["kind"] != "final" or not message["words"]:
            continue
        engines[message["engine"]] = engines.get(message["engine"], 0) + 1
        for position, word in enumerate(message["words"]):
            shown = first_shown.get((message["segment"], position, normalize(word["w"])), arrival)
            word_lags.append(shown - (sent + word["end"]))
        final_lags.append(arrival - (sent + message["words"][-1]["end"]))
        server_lags.append(message["latency_ms"] / 1000)
    unfinished = {m["segment"] for m, _ in events} - {m["segment"] for m in result.finals}
    return RoomOutcome(plan.room, len(plan.audio) / TARGET_RATE, " ".join(plan.references),
                       " ".join(m["text"] for m in result.finals), word_lags, final_lags, server_lags, engines,
                       len(unfinished))


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


async def run_rooms(base: str, plans: Sequence[RoomPlan], fail_primary_after: float | None) -> list[StreamResult]:
    keys = Keys(SECRET)
    failing = asyncio.create_task(fail_primary(base, keys, fail_primary_after)) if fail_primary_after else None
    results = list(await asyncio.gather(*(
        stream_audio(ingest_url(base, plan.room, keys.key("publisher", plan.room)), plan.audio) for plan in plans)))
    if failing is not None:
        await failing
    return results


async def fail_primary(base: str, keys: Keys, after_s: float) -> None:
    """Make every primary call raise from ``after_s`` on (the fault injector's operator endpoint)."""
    await asyncio.sleep(after_s)
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/operator/faults", json={"failure_rate": 1.0},
            headers={"Authorization": f"Bearer {keys.key('operator')}"}) as response:
        response.raise_for_status()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, data_dir: str, server_args: Sequence[str],
                 log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """``livecap serve`` in a subprocess (so its CPU and memory are its own), writing its log to ``log``."""
    command = [sys.executable, "-m", "livecap", "serve", "--port", str(port), "--secret", SECRET,
               "--data-dir", data_dir, "--log-level", "warning", *server_args]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log else None)


@contextlib.contextmanager
def serving(server_args: Sequence[str]) -> Iterator[tuple[str, psutil.Process]]:
    """``start_server`` with a fresh data directory: (base URL, process) once it is ready."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        process = start_server(port, data_dir, server_args)
        try:
            asyncio.run(wait_until_ready(f"http://127.0.0.1:{port}", 900, lambda: process.poll() is None))
            yield f"http://127.0.0.1:{port}", psutil.Process(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def measure(rooms: int, recordings: Sequence[Recording], seconds: float, server_args: Sequence[str],
            fail_primary_after: float | None = None) -> dict[str, Any]:
    """Latency at N rooms: all are admitted, whatever the capacity the server measures
    (``benchmarks.overload`` measures admission), unless ``--max-publishers`` says otherwise."""
    admit_all = [] if "--max-publishers" in server_args else ["--max-publishers", str(rooms)]
    with serving([*server_args, *admit_all]) as (base, server):
        plans = plan_rooms(recordings, rooms, seconds)
        cpu_before = cpu_seconds(server)
        began = time.monotonic()
        results = asyncio.run(run_rooms(base, plans, fail_primary_after))
        wall = time.monotonic() - began
        cpu = cpu_seconds(server) - cpu_before
        misses = asyncio.run(server_counts(base, "livecap_deadline_misses"))
        suppressed = asyncio.run(server_counts(base, "livecap_suppressed_hypotheses", {"kind": "final"}))
    outcomes = [analyse(plan, result) for plan, result in zip(plans, results, strict=True)]
    audio_seconds = sum(o.audio_seconds for o in outcomes)
    return {
        "rooms": rooms, "audio_seconds_per_room": round(audio_seconds / rooms, 1), "wall_seconds": round(wall, 1),
        **summarize(outcomes, server_args),
        "server_cpu_per_audio_second": round(cpu / (audio_seconds / rooms), 3),
        "deadline_misses": misses,
        "finals_suppressed": suppressed,
    }


def summarize(outcomes: Sequence[RoomOutcome], server_args: Sequence[str]) -> dict[str, Any]:
    """Lags, WER, engines and losses over the rooms (DESIGN.md, "Latency — how we measure it")."""
    word_lags = [lag for o in outcomes for lag in o.word_lags]
    final_lags = [lag for o in outcomes for lag in o.final_lags]
    server_lags = [lag for o in outcomes for lag in o.server_final_lags]
    engines: dict[str, int] = {}
    for outcome in outcomes:
        for engine, count in outcome.engines.items():
            engines[engine] = engines.get(engine, 0) + count
    finals = sum(engines.values())
    primary = server_args[server_args.index("--engine") + 1] if "--engine" in server_args else "whisper-onnx"
    return {
        "word_lag_p50_s": percentile(word_lags, 50), "word_lag_p95_s": percentile(word_lags, 95),
        "final_lag_p50_s": percentile(final_lags, 50), "final_lag_p95_s": percentile(final_lags, 95),
        "server_final_lag_p50_s": percentile(server_lags, 50), "server_final_lag_p95_s": percentile(server_lags, 95),
        "wer": round(word_error_rate([o.reference for o in outcomes], [o.hypothesis for o in outcomes]), 4)
        if outcomes else None,
        "finals_by_engine": engines,
        "fallback_share": round(sum(c for e, c in engines.items() if e != primary) / finals, 4) if finals else None,
        "utterances_without_final": sum(o.segments_without_final for o in outcomes),
        "rooms_detail": [{k: v for k, v in asdict(o).items() if k not in ("word_lags", "final_lags",
                                                                           "server_final_lags")} for o in outcomes],
    }


async def server_counts(base: str, family_name: str, only: dict[str, str] | None = None) -> dict[str, float]:
    """The server's counter ``family_name`` (without ``_total``) by reason, over the samples whose
    labels include ``only``: ``livecap_deadline_misses``, ``livecap_suppressed_hypotheses`` …"""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        text = await response.text()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == family_name:
            for sample in family.samples:
                if sample.name.endswith("_total") and (only or {}).items() <= sample.labels.items():
                    reason = sample.labels["reason"]
                    counts[reason] = counts.get(reason, 0.0) + sample.value
    return counts


def cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=120.0, help="audio per room")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/live-<label>.json)")
    parser.add_argument("--label", default="default")
    parser.add_argument("--fail-primary-after", type=float, metavar="S",
                        help="make the primary fail on every call S seconds into each run (fault injector)")
    parser.add_argument("server_args", nargs="*", help="flags passed to 'livecap serve' (after --)")
    arguments = parser.parse_args(argv)
    recordings = load_manifest(arguments.manifest)
    report = {"label": arguments.label, "server_args": arguments.server_args, "cpu_count": os.cpu_count(),
              "runs": []}
    for rooms in arguments.rooms:
        run = measure(rooms, recordings, arguments.seconds, arguments.server_args, arguments.fail_primary_after)
        report["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "rooms_detail"}), flush=True)
    out = arguments.out or RESULTS / f"live-{arguments.label}.json"
    write_results(out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
