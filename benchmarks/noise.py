"""Do silence and noise produce captions? They must not.

Feeds 60 s of digital silence and of several noises (white, pink and brown
at a few levels, and babble made of many time-reversed recordings of the
evaluation set laid over each other) to the engine in VAD-sized chunks and
counts the hypotheses that survive the guardrails. Also checks the other
side: no recording of the evaluation set may lose its text to them.

    python -m benchmarks.noise --model tiny.en
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.scoring import DEFAULT_MANIFEST, load_manifest, write_results
from livecap.asr.engine import SAMPLE_RATE, EngineOptions
from livecap.asr.guardrails import suppression_reason
from livecap.asr.whisper_onnx import WhisperOnnx, WindowPolicy
from livecap.audio import read_wav

RESULTS = Path(__file__).resolve().parent / "results"


def _at_level(signal: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(signal**2))) or 1.0
    return (signal * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def _coloured(seconds: float, exponent: float, seed: int) -> np.ndarray:
    """Noise whose power falls as 1/f**exponent: 0 white, 1 pink, 2 brown."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[1:] /= frequencies[1:] ** (exponent / 2)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n)


def babble(seconds: float, seed: int, manifest: Path = DEFAULT_MANIFEST, voices: int = 8) -> np.ndarray:
    """Many talkers at once, none intelligible: recordings reversed in time,
    looped to length and summed with random offsets."""
    rng = np.random.default_rng(seed)
    recordings = load_manifest(manifest)
    n = int(seconds * SAMPLE_RATE)
    mix = np.zeros(n)
    for index in rng.choice(len(recordings), size=voices, replace=False):
        voice = read_wav(recordings[index].audio).mono_16k()[::-1]
        voice = np.roll(np.resize(voice, n), int(rng.integers(n)))
        mix += voice / (np.sqrt(np.mean(voice**2)) + 1e-9)
    return mix


def noises(seconds: float = 60.0, manifest: Path = DEFAULT_MANIFEST) -> dict[str, np.ndarray]:
    """Name → signal, every one ``seconds`` long and reproducible (fixed seeds)."""
    signals = {"silence": np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)}
    for name, exponent in (("white", 0.0), ("pink", 1.0), ("brown", 2.0)):
        for level in (-50, -35, -20):
            signals[f"{name}{level}dB"] = _at_level(_coloured(seconds, exponent, seed=-level), level)
    for level in (-35, -20):
        signals[f"babble{level}dB"] = _at_level(babble(seconds, seed=-level, manifest=manifest), level)
    return signals


def chunks(signal: np.ndarray, seconds: Sequence[float]) -> list[np.ndarray]:
    """Cut ``signal`` into consecutive pieces of the given lengths, cycling through them."""
    pieces, start, k = [], 0, 0
    while start < len(signal):
        end = start + int(seconds[k % len(seconds)] * SAMPLE_RATE)
        pieces.append(signal[start:end])
        start, k = end, k + 1
    return pieces


@dataclass(frozen=True)
class Outcome:
    name: str
    text: str
    no_speech_probability: float | None
    mean_confidence: float
    reason: str | None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-cache", default=None)
    default = WindowPolicy()
    parser.add_argument("--buckets", default=",".join(f"{b:g}" for b in default.buckets_s))
    parser.add_argument("--margin", type=float, default=default.margin_s)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    window = WindowPolicy(tuple(float(b) for b in args.buckets.split(",")), args.margin)
    engine = WhisperOnnx(EngineOptions(args.model, "cpu", args.threads, args.model_cache), window)

    def outcome(name: str, audio: np.ndarray) -> Outcome:
        hypothesis = engine.transcribe(audio)
        confidence = float(np.mean([w.confidence for w in hypothesis.words])) if hypothesis.words else 0.0
        return Outcome(name, hypothesis.text, hypothesis.no_speech_probability, confidence,
                       suppression_reason(hypothesis))

    noise = [outcome(f"{name}#{k}", piece) for name, signal in noises().items()
             for k, piece in enumerate(chunks(signal, (20.0, 5.0, 10.0, 2.0, 20.0)))]
    speech = [outcome(r.id, read_wav(r.audio).mono_16k()) for r in load_manifest()]
    captions = [o for o in noise if o.text and o.reason is None]
    lost = [o for o in speech if o.reason is not None]
    print(f"noise/silence chunks: {len(noise)}, captions that passed: {len(captions)}")
    print(f"recordings: {len(speech)}, suppressed: {len(lost)}")
    for o in captions + lost:
        print(f"  {o.name}: {o.text!r} no_speech={o.no_speech_probability:.2f} conf={o.mean_confidence:.2f} {o.reason}")
    out = args.out or RESULTS / f"noise-{args.model}.json"
    write_results(out, {"model_version": engine.model_version, "window": asdict(window),
                        "noise": [asdict(o) for o in noise], "speech": [asdict(o) for o in speech]})
    return 1 if captions or lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
