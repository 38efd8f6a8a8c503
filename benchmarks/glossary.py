"""Glossary benchmark: what a glossary gains (term recall) and what it costs
(words, latency), streamed live into a real server, plus the decoder's step
time as the glossary grows.

    python -m benchmarks.glossary jargon [--jargon DIR]   # ../shared/jargon-dev live, with and without
    python -m benchmarks.glossary speech                  # the evaluation set live, with the jargon glossary and not
    python -m benchmarks.glossary steps                   # step time with 0/20/50/100 terms, as prompt and as bias

``jargon`` streams the sentences of ``jargon-dev`` (spoken by its
``synth.sh``; ``--jargon`` names a folder already made) into one room at
real-time pace, 1 s apart, once with every term of the set as the server's
glossary and once without, and reports per run:

- term recall: the share of each sentence's terms found in the finals of its
  sentence, spelled exactly as in the glossary (as ``jargon-dev/README.md``
  defines it);
- non-term WER: errors on the reference's words that are not part of a term
  (substitutions and deletions of those words, insertions not next to a
  term), over those words;
- false insertions: the share of finals that contain a glossary term their
  sentence does not;
- sentences that lost words (a final with fewer than half the reference's
  words, or no final) and deadline misses.

``speech`` streams the whole evaluation set (``benchmarks.live``, 2 rooms) with
the same glossary, whose terms are not in those recordings, and without:
WER, lags, and glossary terms written. ``steps`` times one partial's decode
(``WhisperOnnx.transcribe``) of the same audio with the terms in the prompt
(the old way) and as decoder bias. Results go to
``benchmarks/results/glossary-<mode>-<label>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jiwer
from wordfreq import top_n_list

from benchmarks.live import (
    RESULTS,
    analyse,
    plan_rooms,
    run_rooms,
    server_counts,
    serving,
    summarize,
)
from benchmarks.scoring import DEFAULT_MANIFEST, Recording, load_manifest, normalize, write_results
from livecap.asr.engine import EngineOptions
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.audio import read_wav
from livecap.glossary import Glossary

JARGON = DEFAULT_MANIFEST.parent.parent / "jargon-dev"
"""``../shared/jargon-dev``: sentences.jsonl and synth.sh."""
STEP_TERMS = (0, 20, 50, 100)


def jargon_rows() -> list[dict[str, Any]]:
    """``jargon-dev/sentences.jsonl``: id, text, glossary."""
    return [json.loads(line) for line in (JARGON / "sentences.jsonl").read_text().splitlines() if line.strip()]


def jargon_terms() -> tuple[str, ...]:
    """Every term of the jargon set, in order."""
    return tuple(dict.fromkeys(term for row in jargon_rows() for term in row["glossary"]))


def jargon_recordings(folder: Path | None) -> tuple[list[Recording], dict[str, tuple[str, ...]]]:
    """The jargon sentences as recordings (spoken by ``synth.sh`` into ``folder``
    or a temporary one), and each sentence's terms."""
    rows = jargon_rows()
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="livecap-jargon-"))
        subprocess.run(["bash", str(JARGON / "synth.sh"), str(folder)], check=True, capture_output=True)
    recordings = [Recording(r["id"], folder / f"{r['id']}.wav", r["text"],
                            read_wav(folder / f"{r['id']}.wav").duration) for r in rows]
    return recordings, {r["id"]: tuple(r["glossary"]) for r in rows}


def non_term_errors(reference: str, hypothesis: str, terms: Sequence[str]) -> tuple[int, int]:
    """(errors, words) on the reference's words outside ``terms`` (see the module docstring)."""
    term_words = {normalize(word) for term in terms for word in term.split()}
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    words = sum(w not in term_words for w in ref)
    if not hyp:
        return words, words
    errors = 0
    for chunk in jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]:
        if chunk.type in ("substitute", "delete"):
            errors += sum(w not in term_words for w in ref[chunk.ref_start_idx : chunk.ref_end_idx])
        elif chunk.type == "insert":
            near = ref[max(0, chunk.ref_start_idx - 1) : chunk.ref_start_idx + 1]
            errors += 0 if any(w in term_words for w in near) else chunk.hyp_end_idx - chunk.hyp_start_idx
    return errors, words


def live_run(recordings: Sequence[Recording], rooms: int, glossary: Sequence[str],
             server_args: Sequence[str]) -> tuple[dict[str, Any], list[list[str]]]:
    """Stream ``recordings`` into ``rooms`` rooms (``benchmarks.live``) with ``glossary`` as the
    server's: the live figures, and the finals of each recording (by where their words lie)."""
    flags = [*server_args, "--max-publishers", str(rooms)]
    if glossary:
        flags += ["--glossary", ", ".join(glossary)]
    seconds = sum(r.duration_s + 1.0 for r in recordings) / rooms
    with serving(flags) as (base, _):
        plans = plan_rooms(recordings, rooms, seconds)
        results = asyncio.run(run_rooms(base, plans, None))
        misses = asyncio.run(server_counts(base, "livecap_deadline_misses"))
    figures = {**summarize([analyse(p, r) for p, r in zip(plans, results, strict=True)], flags),
               "deadline_misses": misses}
    by_recording: dict[int, list[str]] = {}
    for k, (plan, result) in enumerate(zip(plans, results, strict=True)):
        first = k * len(recordings) // rooms
        for final in result.finals:
            if not final["words"]:
                continue
            middle = (final["words"][0]["start"] + final["words"][-1]["end"]) / 2 - result.offset
            index = min(range(len(plan.spans)), key=lambda i: _distance(plan.spans[i], middle))
            by_recording.setdefault((first + index) % len(recordings), []).append(final["text"])
    return figures, [by_recording.get(i, []) for i in range(len(recordings))]


def _distance(span: tuple[float, float], t: float) -> float:
    return max(span[0] - t, 0.0, t - span[1])


def score_jargon(recordings: Sequence[Recording], finals: Sequence[list[str]], terms: Sequence[str],
                 sentence_terms: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    glossary = Glossary(tuple(terms))
    found = said = errors = words = false = captions = 0
    lost, detail = [], []
    for recording, texts in zip(recordings, finals, strict=True):
        own = sentence_terms[recording.id]
        text = " ".join(texts)
        hits = [term for term in own if term in glossary.found(text)]
        found, said = found + len(hits), said + len(own)
        e, n = non_term_errors(recording.text, text, own)
        errors, words = errors + e, words + n
        inserted = [t for t in texts if any(term not in recording.text for term in glossary.found(t))]
        false, captions = false + len(inserted), captions + len(texts)
        if len(normalize(text).split()) < len(normalize(recording.text).split()) / 2:
            lost.append(recording.id)
        detail.append({"id": recording.id, "terms": list(own), "found": hits, "text": text})
    return {"term_recall": round(found / said, 3), "non_term_wer": round(errors / words, 4),
            "false_insertions": false, "captions": captions,
            "false_insertion_share": round(false / captions, 4) if captions else None,
            "sentences_losing_words": lost, "sentences": detail}


def jargon(args: argparse.Namespace) -> dict[str, Any]:
    recordings, sentence_terms = jargon_recordings(args.jargon)
    terms = jargon_terms()
    runs = {}
    for name, glossary in (("without", ()), ("with", terms)):
        figures, finals = live_run(recordings, 1, glossary, args.server_args)
        runs[name] = {**score_jargon(recordings, finals, terms, sentence_terms),
                      **{k: v for k, v in figures.items() if k != "rooms_detail"}}
        print(f"{name} glossary: recall {runs[name]['term_recall']}, non-term WER {runs[name]['non_term_wer']}, "
              f"false insertions {runs[name]['false_insertions']}/{runs[name]['captions']}, "
              f"lost {runs[name]['sentences_losing_words']}, misses {runs[name]['deadline_misses']}", flush=True)
    return {"terms": len(terms), "runs": runs}


def speech(args: argparse.Namespace) -> dict[str, Any]:
    terms = jargon_terms()
    recordings = load_manifest(args.manifest)
    runs = {}
    for name, glossary in (("without", ()), ("with", terms)):
        figures, finals = live_run(recordings, args.rooms, glossary, args.server_args)
        written = [{"id": r.id, "term": term, "text": text} for r, texts in zip(recordings, finals, strict=True)
                   for text in texts for term in Glossary(terms).found(text)]
        runs[name] = {**{k: v for k, v in figures.items() if k != "rooms_detail"}, "terms_written": written}
        print(f"{name} glossary: WER {figures['wer']}, word lag p95 {figures['word_lag_p95_s']}, "
              f"terms written {len(written)}", flush=True)
    return {"terms": len(terms), "rooms": args.rooms, "runs": runs}


def steps(args: argparse.Namespace) -> dict[str, Any]:
    """Median time of one partial's decode with n terms as prompt and as bias."""
    known = jargon_terms()
    extra = [w for w in top_n_list("en", 60_000)[40_000:] if w.isalpha() and len(w) > 5]
    pool = list(dict.fromkeys([*known, *extra]))
    engine = WhisperOnnx(EngineOptions(model="tiny.en", device="cpu", threads=args.threads))
    recording = load_manifest(args.manifest)[0]
    samples = read_wav(recording.audio).mono_16k()[: 5 * 16_000]
    out: dict[str, Any] = {"audio_s": len(samples) / 16_000, "recording": recording.id, "threads": args.threads}
    for n in STEP_TERMS:
        terms = tuple(pool[:n])
        for how in ("prompt", "bias"):
            prompt = ", ".join(terms) + "." if how == "prompt" and terms else ""
            trie = engine.compile(terms) if how == "bias" and terms else None
            times = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                engine.transcribe(samples, prompt, terms=trie)
                times.append(time.perf_counter() - began)
            out[f"{how}_{n}_terms_ms"] = round(1000 * statistics.median(times), 1)
            print(f"{how:6} {n:3} terms: {out[f'{how}_{n}_terms_ms']} ms", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["jargon", "speech", "steps"])
    parser.add_argument("--jargon", type=Path, help="folder of jargon-dev WAVs made by synth.sh (default: make one)")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--rooms", type=int, default=2, help="rooms for 'speech'")
    parser.add_argument("--threads", type=int, default=2, help="inference threads for 'steps'")
    parser.add_argument("--repeats", type=int, default=7, help="decodes per figure for 'steps'")
    parser.add_argument("--label", default="default")
    parser.add_argument("--out", type=Path)
    parser.add_argument("server_args", nargs="*", help="flags passed to 'livecap serve' (after --)")
    args = parser.parse_args(argv)
    results = {"jargon": jargon, "speech": speech, "steps": steps}[args.mode](args)
    out = args.out or RESULTS / f"glossary-{args.mode}-{args.label}.json"
    write_results(out, {"label": args.label, "mode": args.mode, "server_args": args.server_args,
                        "cpu_count": os.cpu_count(), **results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
