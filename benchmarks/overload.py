"""Overload benchmark: N publishers start at the same moment on one server.

Starts ``livecap serve`` (``benchmarks.live.serving``), reads the capacity it
chose (``/readyz``), then opens N publishers at once, each streaming real
speech of the evaluation set at real-time pace (``benchmarks.live.plan_rooms``).
The server must refuse those beyond its capacity at ``start`` with
``server_busy`` (1013) and a retry hint, and serve the admitted ones within
their budget. Reports (issue 11's acceptance in brackets):

- the capacity and what it was chosen from, at the start and at the end;
- publishers admitted and refused, with error and close codes and retry hints
  [all beyond capacity refused at start with server_busy];
- connections lost among the admitted [0], utterances without a final [0];
- word lag p50/p95 [p95 <= 2.5 s] and final lag p95 of the admitted rooms,
  fallback share, WER, deadline misses by reason, server CPU.

    python -m benchmarks.overload --publishers 20 --seconds 60 [-- server flags]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.live import (
    RESULTS,
    SECRET,
    RoomPlan,
    analyse,
    cpu_seconds,
    plan_rooms,
    server_counts,
    serving,
    summarize,
)
from benchmarks.scoring import DEFAULT_MANIFEST, load_manifest, write_results
from livecap.auth import Keys
from livecap.client import StreamResult, ingest_url, stream_audio

WORD_LAG_P95_BOUND_S = 2.5


@dataclass(frozen=True)
class Attempt:
    """One publisher's run as its client saw it."""

    plan: RoomPlan
    result: StreamResult

    @property
    def admitted(self) -> bool:
        return any(m.get("type") == "ready" for m in self.result.messages)

    @property
    def error(self) -> dict[str, Any] | None:
        return next((m for m in self.result.messages if m.get("type") == "error"), None)

    @property
    def lost(self) -> bool:
        """Admitted, but the session did not end with ``stopped``."""
        return self.admitted and not any(m.get("type") == "stopped" for m in self.result.messages)


async def publish(base: str, plan: RoomPlan) -> Attempt:
    url = ingest_url(base, plan.room, Keys(SECRET).key("publisher", plan.room))
    return Attempt(plan, await stream_audio(url, plan.audio))


def recordings_without_final(plan: RoomPlan, result: StreamResult) -> list[str]:
    """References of the recordings in ``plan`` that no final overlaps: speech lost entirely."""
    finals = [(m["start"] - result.offset, m["end"] - result.offset) for m in result.finals if m["text"]]
    return [reference for reference, (start, end) in zip(plan.references, plan.spans, strict=True)
            if not any(a < end and b > start for a, b in finals)]


async def capacity(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as response:
        return dict((await response.json())["capacity"])


def measure(publishers: int, seconds: float, manifest: Path, server_args: Sequence[str]) -> dict[str, Any]:
    plans = plan_rooms(load_manifest(manifest), publishers, seconds)
    with serving(server_args) as (base, server):
        chosen = asyncio.run(capacity(base))
        cpu_before, began = cpu_seconds(server), time.monotonic()
        attempts = asyncio.run(_all_at_once(base, plans))
        wall, cpu = time.monotonic() - began, cpu_seconds(server) - cpu_before
        misses = asyncio.run(server_counts(base, "livecap_deadline_misses"))
        final_capacity = asyncio.run(capacity(base))
    admitted = [a for a in attempts if a.admitted]
    refused = [a for a in attempts if not a.admitted]
    served = [a for a in admitted if not a.lost]
    refusals = Counter(f"{a.error['code'] if a.error else None}/{a.result.close_code}" for a in refused)
    retry_hints = sorted(a.error["retry_after_ms"] for a in refused if a.error and "retry_after_ms" in a.error)
    lost = [{"room": a.plan.room, "close_code": a.result.close_code, "error": a.error} for a in admitted if a.lost]
    report = {
        "publishers": publishers, "audio_seconds_per_publisher": round(seconds, 1), "wall_seconds": round(wall, 1),
        "capacity_at_start": chosen, "capacity_at_end": final_capacity,
        "admitted": len(admitted), "refused": len(refused), "refusals": dict(refusals),
        "retry_after_ms": {"min": retry_hints[0], "max": retry_hints[-1]} if retry_hints else None,
        "connections_lost": len(lost), "lost_detail": lost,
        **summarize([analyse(a.plan, a.result) for a in served], server_args),
        "recordings_without_final": {a.plan.room: missing for a in served
                                     if (missing := recordings_without_final(a.plan, a.result))},
        "server_cpu_seconds": round(cpu, 1),
        "deadline_misses": misses,
    }
    report["acceptance"] = {
        "beyond_capacity_refused_at_start": len(refused) == max(0, publishers - chosen["publishers"])
        and set(refusals) <= {"server_busy/1013"} and len(retry_hints) == len(refused),
        "no_connection_lost": not lost,
        "every_utterance_final": report["utterances_without_final"] == 0 and not report["recordings_without_final"],
        "word_lag_p95_within_bound": report["word_lag_p95_s"] is not None
        and report["word_lag_p95_s"] <= WORD_LAG_P95_BOUND_S,
    }
    return report


async def _all_at_once(base: str, plans: Sequence[RoomPlan]) -> list[Attempt]:
    return list(await asyncio.gather(*(publish(base, plan) for plan in plans)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--publishers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per publisher")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/overload-<label>.json)")
    parser.add_argument("--label", default="default")
    parser.add_argument("server_args", nargs="*", help="flags passed to 'livecap serve' (after --)")
    arguments = parser.parse_args(argv)
    load_before = os.getloadavg()
    run = measure(arguments.publishers, arguments.seconds, arguments.manifest, arguments.server_args)
    print(json.dumps({k: v for k, v in run.items() if k != "rooms_detail"}, indent=1), flush=True)
    report = {"label": arguments.label, "server_args": arguments.server_args, "cpu_count": os.cpu_count(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "run": run}
    write_results(arguments.out or RESULTS / f"overload-{arguments.label}.json", report)
    return 0 if all(run["acceptance"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
