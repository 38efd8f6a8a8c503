"""Multilingual benchmark: non-English speech live into rooms with an English translation track.

Starts ``livecap serve`` (``benchmarks.live.serving``, with ``--languages``
naming the recordings' languages, so that loading the multilingual model is
not measured) and streams each recording of the multilingual set
(``shared/speech-multilingual``) into its own room at real-time pace in 20 ms
frames, followed by ``live.GAP_S`` of silence, one room after another
(``--rooms N``: N at once), asking for an English translation, which a viewer
of the room's English track reads. Each recording is played in each mode (``MODES``): ``given`` (the
manifest's language in ``start``), ``auto`` (detected among all languages; the room locks it) and
``among`` (detected among the set's languages and English).
Reports, per mode and language:

- the error rate of the finals against ``text``: WER, or CER for languages
  written without spaces (``scoring.normalize_for`` says how both sides are
  normalised), beside the same model's offline error rate on the same files
  (each file decoded whole with ``WhisperOnnx.transcribe``);
- word lag p50/p95 and final lag p50/p95 as ``benchmarks.live.analyse``
  measures them (DESIGN.md "Latency — how we measure it"). Its word identity
  is ``scoring.normalize``, which keeps a-z only: for scripts other than Latin
  (Arabic here) a word counts as shown when any word stood at its position;
- the translation track: the added final lag (a translation's arrival at the
  English viewer minus its original final's at the publisher, p50/p95), chrF and BLEU (sacrebleu, corpus level over
  the language's recordings, each recording's translations concatenated)
  against ``text_en``, beside the model's offline translation of each file,
  and finals left untranslated;
- in ``auto`` mode, per recording: the language locked (the ``room``
  message), when the lock reached the client (wall seconds since the first
  audio frame), and whether captions in another language came after it;
  in both modes, how often the language changed between caption events of
  one utterance, and utterances whose partials reached the English track
  (detected as English) but that ended there without a final or translation;
- per mode: the server's deadline misses by reason (``skipped``: partial
  steps skipped for want of time), the hypotheses its guardrails suppressed
  by kind and reason, and its CPU seconds per audio second.

    python -m benchmarks.multilingual [--mode given|auto|among|all] [--rooms N] [--out F] [--label L] [-- server flags]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import numpy as np
import sacrebleu
import websockets

from benchmarks.live import GAP_S, SECRET, RoomPlan, analyse, cpu_seconds, percentile, server_counts, serving
from benchmarks.scoring import Recording, error_rate, normalize_for, read_manifest, uses_cer, write_results
from livecap.asr.engine import SAMPLE_RATE, EngineOptions
from livecap.asr.tokenizer import Task
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.audio import TARGET_RATE, read_wav
from livecap.auth import Keys
from livecap.client import StreamResult, ingest_url, stream_audio
from livecap.language import AUTO, ENGLISH

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MANIFEST = Path(
    os.environ.get("LIVECAP_MULTILINGUAL_MANIFEST",
                   Path(__file__).resolve().parents[2] / "shared" / "speech-multilingual" / "manifest.jsonl")
)
"""The multilingual set beside the checkout; ``LIVECAP_MULTILINGUAL_MANIFEST`` overrides it."""
MODEL = "base"
"""The multilingual model that serves non-English and auto rooms."""
MODES = ("given", "auto", "among")
"""``given``: the manifest's language; ``auto``: detected among all of Whisper's; ``among``:
detected among the manifest's languages and English (the event's languages, as an organiser sets
the room's ``candidates``)."""
FRAME_MS = 20
"""``stream_audio``'s default frame."""
TRANSLATION_WAIT_S = 10.0
"""How long after ``stopped`` the English viewer may take to receive the room's last translations."""


@dataclass(frozen=True)
class SpokenRecording(Recording):
    """A manifest entry of the multilingual set: what is said, in which language, and in English."""

    language: str
    text_en: str


def load_recordings(path: Path = DEFAULT_MANIFEST, ids: Iterable[str] | None = None) -> list[SpokenRecording]:
    return read_manifest(path, ids, SpokenRecording)


def is_translation(message: dict[str, Any]) -> bool:
    return message.get("type") == "caption" and message.get("kind") == "translation"


def unfinished_segments(messages: Iterable[dict[str, Any]]) -> int:
    """Segments with partials but neither a final nor a translation among ``messages`` (one track's):
    a viewer of that track is left with a partial on screen."""
    captions = [m for m in messages if m.get("type") == "caption"]
    return len({m["segment"] for m in captions} - {m["segment"] for m in captions if m["kind"] != "partial"})


def without_translations(result: StreamResult) -> StreamResult:
    """``result`` without its translation events: the original track, as ``live.analyse`` expects it."""
    kept = [(m, t) for m, t in zip(result.messages, result.arrivals, strict=True) if not is_translation(m)]
    return StreamResult([m for m, _ in kept], [t for _, t in kept], result.audio_started, result.offset,
                        result.close_code)


@dataclass(frozen=True)
class TranslationSeen:
    """The translation track of one stream: its finals with the translations that followed them."""

    text: str
    """The translations concatenated, in order of arrival."""
    added_lags: list[float]
    """Each translation's arrival minus that of its segment's original final (seconds)."""
    untranslated: int
    """Finals with words that no translation followed."""
    orphans: int
    """Translations of a segment without an original final before them."""
    mislabelled: int
    """Translations whose ``language`` is not the target or whose ``source_language`` is not the final's."""


def translation_track(result: StreamResult, target: str = ENGLISH) -> TranslationSeen:
    finals = {m["segment"]: (m, t) for m, t in zip(result.messages, result.arrivals, strict=True)
              if m.get("type") == "caption" and m.get("kind") == "final"}
    texts, lags, translated, orphans, mislabelled = [], [], set(), 0, 0
    for message, arrival in zip(result.messages, result.arrivals, strict=True):
        if not is_translation(message):
            continue
        texts.append(message["text"])
        original = finals.get(message["segment"])
        if original is None or original[1] > arrival:
            orphans += 1
            continue
        translated.add(message["segment"])
        lags.append(arrival - original[1])
        if message.get("language") != target or message.get("source_language") != original[0].get("language"):
            mislabelled += 1
    untranslated = sum(1 for segment, (m, _) in finals.items() if m["text"].strip() and segment not in translated)
    return TranslationSeen(" ".join(t for t in texts if t.strip()), lags, untranslated, orphans, mislabelled)


@dataclass(frozen=True)
class LanguageSeen:
    """The room's language as the publisher was told it (``room`` messages) and as its captions carry it."""

    language: str | None
    """The language the room locked (None: it never locked)."""
    detected: str | None
    """The room's last detection (``guess``)."""
    locked_at_s: float | None
    """When the lock reached the client: wall seconds since the first audio frame was sent."""
    locked_after_s: float | None
    """The server's figure: seconds of speech heard when it locked."""
    locked_languages: list[str]
    """Every language a ``room`` message said the room was locked to, in order: more than one is a relock."""
    captions: dict[str, int]
    """Caption events (partials and finals) by ``language``."""
    after_lock: dict[str, int]
    """Caption events that arrived after the lock, by ``language``."""
    switches_in_segments: int
    """Times a caption event was in another language than the event before it of the same segment."""

    @property
    def changed(self) -> bool:
        """Whether the language changed after it locked: a relock, or captions in another language."""
        return len(set(self.locked_languages)) > 1 or any(language != self.language for language in self.after_lock)


def language_seen(result: StreamResult) -> LanguageSeen:
    locked: list[tuple[float, dict[str, Any]]] = []
    detected = None
    for message, arrival in zip(result.messages, result.arrivals, strict=True):
        state = message.get("language") if message.get("type") == "room" else None
        if isinstance(state, dict):
            detected = state.get("detected", detected)
            if state.get("locked"):
                locked.append((arrival, state))
    captions: Counter[str] = Counter()
    after_lock: Counter[str] = Counter()
    lock_arrival = locked[0][0] if locked else None
    last_language: dict[int, str] = {}
    switches = 0
    for message, arrival in zip(result.messages, result.arrivals, strict=True):
        if message.get("type") == "caption" and message.get("kind") in ("partial", "final"):
            language = str(message.get("language"))
            captions[language] += 1
            if lock_arrival is not None and arrival > lock_arrival:
                after_lock[language] += 1
            switches += last_language.setdefault(message["segment"], language) != language
            last_language[message["segment"]] = language
    first = locked[0][1] if locked else {}
    return LanguageSeen(first.get("language"), detected,
                        None if lock_arrival is None else round(lock_arrival - result.audio_started, 3),
                        first.get("locked_after_s"), [str(state["language"]) for _, state in locked],
                        dict(captions), dict(after_lock), switches)


@dataclass(frozen=True)
class RecordingOutcome:
    id: str
    mode: str
    language: str
    room: str
    reference: str
    hypothesis: str
    reference_en: str
    translation: str
    word_lags: list[float]
    final_lags: list[float]
    server_final_lags: list[float]
    translation_lags: list[float]
    engines: dict[str, int]
    utterances_without_final: int
    untranslated_finals: int
    orphan_translations: int
    mislabelled_translations: int
    translations_not_received: int
    """Translations in the room's English transcript that the viewer never received."""
    english_track_unfinished: int
    """Segments whose partials reached the English track (speech detected as English) and that
    ended there without a final or a translation (``unfinished_segments``)."""
    room_language: LanguageSeen
    error: str | None
    """The code of the error the server closed with, if any."""
    stopped_after_s: float | None
    """From sending the last audio frame (and ``stop``) to ``stopped``: long waits are stalls."""


def analyse_recording(recording: SpokenRecording, mode: str, room: str, audio: np.ndarray,
                      result: StreamResult, translations_not_received: int = 0,
                      english_track_unfinished: int = 0) -> RecordingOutcome:
    """``result``: what the publisher received, with the translations a viewer received put in."""
    original = analyse(RoomPlan(room, audio, [recording.text]), without_translations(result))
    translations = translation_track(result)
    stopped = next((t for m, t in zip(result.messages, result.arrivals, strict=True) if m.get("type") == "stopped"),
                   None)
    frame = TARGET_RATE * FRAME_MS // 1000
    stop_sent = result.audio_started + (len(audio) - 1) // frame * frame / TARGET_RATE  # the last frame's send
    return RecordingOutcome(
        recording.id, mode, recording.language, room, recording.text, original.hypothesis, recording.text_en,
        translations.text, original.word_lags, original.final_lags, original.server_final_lags,
        translations.added_lags, original.engines, original.segments_without_final, translations.untranslated,
        translations.orphans, translations.mislabelled, translations_not_received, english_track_unfinished,
        language_seen(result),
        result.error["code"] if result.error else None,
        None if stopped is None else round(stopped - stop_sent, 3))


def room_name(mode: str, index: int, recording: Recording) -> str:
    return f"{mode}-{index:02d}-{recording.id}"[:64]


def padded(recording: Recording) -> np.ndarray:
    """The recording, then ``GAP_S`` of silence (as ``live`` plays it), so its last final comes from the
    endpoint and not from ``stop``."""
    samples = read_wav(recording.audio).mono_16k()
    return np.concatenate([samples, np.zeros(int(GAP_S * TARGET_RATE), dtype=np.float32)])


def captions_url(base: str, room: str, key: str, track: str) -> str:
    """The viewer WebSocket of ``room``'s ``track`` on the server at ``base`` (http://)."""
    query = urlencode({"track": track, "token": key})
    return f"ws{base.removeprefix('http')}/ws/captions/{quote(room, safe='')}?{query}"


class TrackViewer:
    """A viewer of one track of a room, recording when each message arrived."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], float]] = []
        self._news = asyncio.Event()

    async def read(self, ws: websockets.ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                self.received.append((json.loads(raw), time.monotonic()))
                self._news.set()

    async def wait_for(self, seqs: set[int], limit_s: float) -> set[int]:
        """Wait until the events ``seqs`` came, at most ``limit_s``; returns those that did not."""
        deadline = time.monotonic() + limit_s
        while missing := seqs - {m.get("seq") for m, _ in self.received}:
            self._news.clear()
            try:
                await asyncio.wait_for(self._news.wait(), deadline - time.monotonic())
            except TimeoutError:
                return missing
        return set()


async def transcript_seqs(base: str, room: str, key: str, kind: str = "translation") -> set[int]:
    """The seqs of the ``kind`` lines of ``room``'s English transcript."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/rooms/{quote(room, safe='')}/transcript.en.json",
                                                         params={"token": key}) as response:
        response.raise_for_status()
        return {line["seq"] for line in await response.json() if line.get("kind") == kind}


def merged(result: StreamResult, extra: Sequence[tuple[dict[str, Any], float]]) -> StreamResult:
    """``result`` with ``extra`` messages put in by their arrival."""
    timed = sorted([*zip(result.messages, result.arrivals, strict=True), *extra], key=lambda pair: pair[1])
    return StreamResult([m for m, _ in timed], [t for _, t in timed], result.audio_started, result.offset,
                        result.close_code)


async def stream_mode(base: str, recordings: Sequence[SpokenRecording], mode: str,
                      rooms: int) -> list[RecordingOutcome]:
    """Each recording into its own room, at most ``rooms`` at once, in ``mode``, translated into English.

    Translations are measured as a viewer of the room's English track, connected before the
    publisher starts, receives them (those the publisher may receive too are left out). After
    ``stopped`` (which the server sends once every translation went out) the viewer is given up
    to ``TRANSLATION_WAIT_S`` to receive every translation the room's English transcript holds."""
    keys, slots = Keys(SECRET), asyncio.Semaphore(rooms)
    candidates = sorted({ENGLISH, *(r.language for r in recordings)})

    async def play(index: int, recording: SpokenRecording) -> RecordingOutcome:
        room, audio = room_name(mode, index, recording), padded(recording)
        async with slots:
            viewer = TrackViewer()
            async with websockets.connect(captions_url(base, room, keys.key("viewer", room), ENGLISH),
                                          max_size=2**22) as ws:
                reader = asyncio.create_task(viewer.read(ws))
                result = await stream_audio(ingest_url(base, room, keys.key("publisher", room)), audio,
                                            language=recording.language if mode == "given" else AUTO,
                                            translate=ENGLISH, candidates=candidates if mode == "among" else None)
                expected = await transcript_seqs(base, room, keys.key("viewer", room))
                missing = await viewer.wait_for(expected, TRANSLATION_WAIT_S)
                reader.cancel()
        translations = [(m, t) for m, t in viewer.received if is_translation(m)]
        outcome = analyse_recording(recording, mode, room, audio, merged(without_translations(result), translations),
                                    len(missing), unfinished_segments(m for m, _ in viewer.received))
        print(f"  {mode} {recording.id}: {len(outcome.final_lags)} finals, "
              f"{len(outcome.translation_lags)} translations, lock {outcome.room_language.language}"
              + (f", error {outcome.error}" if outcome.error else ""), flush=True)
        return outcome

    return list(await asyncio.gather(*(play(i, r) for i, r in enumerate(recordings))))


@dataclass(frozen=True)
class OfflineFile:
    id: str
    language: str
    text: str
    """Decoded whole, told the language."""
    translation: str
    """Decoded whole with ``task="translate"``."""
    detected: str
    """The language detected on the file (``language=None``)."""
    detected_probability: float | None
    seconds: float
    """Time of the transcription told the language."""
    partials: dict[str, dict[str, float]]
    """Per task (transcribe, translate), how partials of the growing utterance would behave
    (``prefix_stability``): ``kept`` and ``seconds`` per decode."""


def offline(recordings: Sequence[SpokenRecording], device: str = "auto") -> list[OfflineFile]:
    """The model each recording's language is served by, on the whole file: transcribed, translated, detected."""
    engine = WhisperOnnx(EngineOptions(model=MODEL, device=device, threads=os.cpu_count() or 1))
    engine.transcribe(read_wav(recordings[0].audio).mono_16k(), language=recordings[0].language)  # warm-up
    files = []
    for recording in recordings:
        audio = read_wav(recording.audio).mono_16k()
        began = time.perf_counter()
        text = engine.transcribe(audio, language=recording.language).text
        seconds = time.perf_counter() - began
        translation = engine.transcribe(audio, language=recording.language, task="translate").text
        detection = engine.transcribe(audio, language=None)
        partials = {task: prefix_stability(engine, audio, recording.language, task)
                    for task in ("transcribe", "translate")}
        files.append(OfflineFile(recording.id, recording.language, text, translation, detection.language,
                                 detection.language_probability, round(seconds, 3), partials))
    return files


PARTIAL_STEP_S = 1.0


def prefix_stability(engine: WhisperOnnx, audio: np.ndarray, language: str, task: Task) -> dict[str, float]:
    """Decode the first 1, 2, 3 … s of ``audio`` as streaming partials would; ``kept``: the mean
    share of each partial's words that the next one keeps as its beginning (1 = a partial only
    ever grows; what viewers see rewritten is the rest), ``seconds``: mean time per decode. Says
    whether a track can stream partials (README, Languages and translation)."""
    words: list[list[str]] = []
    seconds = []
    step = round(PARTIAL_STEP_S * SAMPLE_RATE)
    for end in range(step, len(audio) + step, step):
        began = time.perf_counter()
        text = engine.transcribe(audio[:end], language=language, task=task).text
        seconds.append(time.perf_counter() - began)
        words.append(normalize_for(text, ENGLISH if task == "translate" else language).split())
    shares = [_common_prefix(before, after) / len(before) for before, after in itertools.pairwise(words) if before]
    return {"kept": round(float(np.mean(shares)), 3) if shares else 1.0, "seconds": round(float(np.mean(seconds)), 3)}


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus chrF and BLEU (sacrebleu's defaults: chrF2, BLEU 13a, cased)."""
    return {"chrf": round(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score, 1),
            "bleu": round(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score, 1)}


def by_language(items: Iterable[Any], language: Callable[[Any], str]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(language(item), []).append(item)
    return groups


def summarize(outcomes: Sequence[RecordingOutcome], offline_files: dict[str, OfflineFile]) -> dict[str, Any]:
    """One mode's figures over ``outcomes`` (one language, or all of them when ``language`` is "all")."""
    languages = {o.language for o in outcomes}
    language = languages.pop() if len(languages) == 1 else None
    word_lags = [lag for o in outcomes for lag in o.word_lags]
    final_lags = [lag for o in outcomes for lag in o.final_lags]
    translation_lags = [lag for o in outcomes for lag in o.translation_lags]
    engines: Counter[str] = Counter()
    for outcome in outcomes:
        engines.update(outcome.engines)
    summary: dict[str, Any] = {"recordings": len(outcomes)}
    if language is not None:
        offline_texts = [offline_files[o.id].text for o in outcomes if o.id in offline_files]
        summary |= {
            "metric": "cer" if uses_cer(language) else "wer",
            "error_rate": round(error_rate([o.reference for o in outcomes], [o.hypothesis for o in outcomes],
                                           language), 4),
            "offline_error_rate": round(error_rate([o.reference for o in outcomes], offline_texts, language), 4)
            if len(offline_texts) == len(outcomes) else None,
        }
    summary |= {
        "word_lag_p50_s": percentile(word_lags, 50), "word_lag_p95_s": percentile(word_lags, 95),
        "final_lag_p50_s": percentile(final_lags, 50), "final_lag_p95_s": percentile(final_lags, 95),
        "final_lag_max_s": round(max(final_lags), 3) if final_lags else None,
        "finals_by_engine": dict(engines),
        "utterances_without_final": sum(o.utterances_without_final for o in outcomes),
        "translations": len(translation_lags),
        "translation_added_lag_p50_s": percentile(translation_lags, 50),
        "translation_added_lag_p95_s": percentile(translation_lags, 95),
        "untranslated_finals": sum(o.untranslated_finals for o in outcomes),
        "orphan_translations": sum(o.orphan_translations for o in outcomes),
        "mislabelled_translations": sum(o.mislabelled_translations for o in outcomes),
        "translations_not_received": sum(o.translations_not_received for o in outcomes),
        "english_track_unfinished": sum(o.english_track_unfinished for o in outcomes),
        **translation_scores([o.translation for o in outcomes], [o.reference_en for o in outcomes]),
        "locked_right": sum(o.room_language.language == o.language for o in outcomes),
        "never_locked": sum(o.room_language.language is None for o in outcomes),
        "language_changed": sum(o.room_language.changed for o in outcomes),
        "switches_in_segments": sum(o.room_language.switches_in_segments for o in outcomes),
        "captions_in_other_language": sum(count for o in outcomes for language, count in
                                          o.room_language.captions.items() if language != o.language),
        "locked_at_p50_s": percentile([o.room_language.locked_at_s for o in outcomes
                                       if o.room_language.locked_at_s is not None], 50),
        "errors": sum(o.error is not None for o in outcomes),
    }
    return summary


def summarize_offline(files: Sequence[OfflineFile], recordings: dict[str, SpokenRecording]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for language, group in by_language(files, lambda f: f.language).items():
        references = [recordings[f.id] for f in group]
        out[language] = {
            "metric": "cer" if uses_cer(language) else "wer",
            "error_rate": round(error_rate([r.text for r in references], [f.text for f in group], language), 4),
            **translation_scores([f.translation for f in group], [r.text_en for r in references]),
            "detected_right": sum(f.detected == language for f in group), "files": len(group),
            "rtf": round(sum(f.seconds for f in group) / sum(r.duration_s for r in references), 3),
            "partials": {task: {key: round(float(np.mean([f.partials[task][key] for f in group])), 3)
                                for key in ("kept", "seconds")} for task in ("transcribe", "translate")},
        }
    return out


def server_flags(server_args: Sequence[str], rooms: int, languages: Iterable[str]) -> list[str]:
    """``server_args`` plus ``--languages`` (the recordings' and ``auto``: the multilingual model loads
    before the server is ready, not inside the measurement) and room for ``rooms`` publishers, unless
    they say otherwise."""
    flags = list(server_args)
    if "--languages" not in flags:
        help_text = subprocess.run([sys.executable, "-m", "livecap", "serve", "--help"], capture_output=True,
                                   text=True, check=True).stdout
        if "--languages" in help_text:
            flags += ["--languages", ",".join([*sorted(set(languages)), AUTO])]
        else:
            print("warning: 'livecap serve' has no --languages: the multilingual model loads on the first "
                  "room, inside the measurement", file=sys.stderr)
    if "--max-publishers" not in flags:
        flags += ["--max-publishers", str(rooms)]
    return flags


async def counters(base: str) -> dict[str, dict[str, float]]:
    """The server's deadline misses, and hypotheses its guardrails suppressed, by kind, each by reason."""
    return {"deadline_misses": await server_counts(base, "livecap_deadline_misses"),
            **{f"suppressed_{kind}s": await server_counts(base, "livecap_suppressed_hypotheses", {"kind": kind})
               for kind in ("partial", "final", "translation")}}


def measure(recordings: Sequence[SpokenRecording], modes: Sequence[str], rooms: int,
            server_args: Sequence[str]) -> dict[str, Any]:
    """Every mode on one server, one after another; figures per mode."""
    runs: dict[str, Any] = {}
    audio_seconds = sum(r.duration_s + GAP_S for r in recordings)
    with serving(server_args) as (base, server):
        for mode in modes:
            before = asyncio.run(counters(base))
            cpu_before, began = cpu_seconds(server), time.monotonic()
            outcomes = asyncio.run(stream_mode(base, recordings, mode, rooms))
            wall, cpu = time.monotonic() - began, cpu_seconds(server) - cpu_before
            after = asyncio.run(counters(base))
            runs[mode] = {
                "wall_seconds": round(wall, 1), "audio_seconds": round(audio_seconds, 1),
                "server_cpu_per_audio_second": round(cpu / audio_seconds, 3),
                **{name: {reason: count - before[name].get(reason, 0.0) for reason, count in counts.items()}
                   for name, counts in after.items()},
                "outcomes": outcomes,
            }
    return runs


def report_mode(run: dict[str, Any], offline_files: dict[str, OfflineFile]) -> dict[str, Any]:
    outcomes: list[RecordingOutcome] = run.pop("outcomes")
    groups = by_language(outcomes, lambda o: o.language)
    return {
        **run,
        "skipped_partial_steps": run["deadline_misses"].get("skipped"),
        "languages": {language: summarize(group, offline_files) for language, group in groups.items()},
        "all": summarize(outcomes, offline_files),
        "recordings": [{**{k: v for k, v in asdict(o).items() if not k.endswith("_lags")},
                        "changed_language": o.room_language.changed,
                        "word_lag_p95_s": percentile(o.word_lags, 95),
                        "final_lag_p95_s": percentile(o.final_lags, 95),
                        "translation_added_lag_p95_s": percentile(o.translation_lags, 95)} for o in outcomes],
    }


def _cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.1f}%"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def print_table(report: dict[str, Any]) -> None:
    header = ("mode", "lang", "n", "metric", "live", "offline", "wlag50", "wlag95", "flag95", "tr+50", "tr+95",
              "chrF", "BLEU", "off chrF", "untr", "en left", "lock ok", "lock@50", "changed", "switch", "skipped")
    rows = [header]
    for mode, run in report["modes"].items():
        for language, s in [*run["languages"].items(), ("all", run["all"])]:
            offline_language = report["offline"]["languages"].get(language, {})
            rows.append((mode, language, str(s["recordings"]), s.get("metric", ""), _cell(s.get("error_rate"), True),
                         _cell(s.get("offline_error_rate"), True), _cell(s["word_lag_p50_s"]),
                         _cell(s["word_lag_p95_s"]), _cell(s["final_lag_p95_s"]),
                         _cell(s["translation_added_lag_p50_s"]), _cell(s["translation_added_lag_p95_s"]),
                         _cell(s["chrf"]), _cell(s["bleu"]), _cell(offline_language.get("chrf")),
                         str(s["untranslated_finals"]), str(s["english_track_unfinished"]),
                         f"{s['locked_right']}/{s['recordings']}", _cell(s["locked_at_p50_s"]),
                         str(s["language_changed"]), str(s["switches_in_segments"]),
                         _cell(run["skipped_partial_steps"]) if language == "all" else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if "auto" in report["modes"]:
        print("\nauto mode, per recording: expected → locked (detected), lock reached the client at, "
              "speech heard, captions by language")
        for r in report["modes"]["auto"]["recordings"]:
            seen = r["room_language"]
            print(f"  {r['id']}: {r['language']} → {seen['language']} ({seen['detected']}) at "
                  f"{_cell(seen['locked_at_s'])} s, {_cell(seen['locked_after_s'])} s speech, {seen['captions']}"
                  + (" CHANGED" if r["changed_language"] else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
    parser.add_argument("--rooms", type=int, default=1, help="rooms streaming at once (default: one after another)")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--ids", nargs="+", metavar="ID", help="only these recordings")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline decodes")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/multilingual-<label>.json)")
    parser.add_argument("--label", default="default")
    parser.add_argument("server_args", nargs="*", help="flags passed to 'livecap serve' (after --)")
    arguments = parser.parse_args(argv)
    recordings = load_recordings(arguments.manifest, arguments.ids)
    if not recordings:
        parser.error("no recordings")
    modes = MODES if arguments.mode == "all" else (arguments.mode,)
    flags = server_flags(arguments.server_args, arguments.rooms, (r.language for r in recordings))
    offline_files = [] if arguments.no_offline else offline(recordings)
    by_id = {f.id: f for f in offline_files}
    runs = measure(recordings, modes, arguments.rooms, flags)
    report = {
        "label": arguments.label, "server_args": flags, "cpu_count": os.cpu_count(), "model": MODEL,
        "rooms_at_once": arguments.rooms, "manifest": str(arguments.manifest),
        "sacrebleu": {"version": sacrebleu.__version__, "chrf": "chrF2 (char order 6, beta 2)",
                      "bleu": "BLEU, 13a tokenizer, cased, exp smoothing"},
        "modes": {mode: report_mode(run, by_id) for mode, run in runs.items()},
        "offline": {"languages": summarize_offline(offline_files, {r.id: r for r in recordings}),
                    "files": [asdict(f) for f in offline_files]},
    }
    print_table(report)
    write_results(arguments.out or RESULTS / f"multilingual-{arguments.label}.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
