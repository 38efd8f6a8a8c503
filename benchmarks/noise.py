"""Guardrails, both ways: non-speech must give no caption, speech must lose none.

Plays through the server's own VAD and recognition stage
(``benchmarks.replay``, as live but without timing effects), for a given
engine:

- **non-speech**: digital silence; white, pink and brown noise at three
  levels; babble (many time-reversed recordings at once); pure tones,
  sweeps and DTMF; a door chime with its click; keyboard clicks; applause;
  synthetic music (plucked melodies and chords, with and without drums).
  Every caption that survives is a failure.
- **speech**: every recording of the evaluation set, one at a time. Every
  utterance whose final is suppressed (by a guardrail, or as not speech) is
  reported with what the engine hears in it when asked directly, and the
  WER of the finals is given.

    python -m benchmarks.noise --engine whisper-onnx --model tiny.en
    python -m benchmarks.noise --engine pocketsphinx

Exit status 1 when a non-speech signal was captioned or a recording lost an
utterance whose audio the engine transcribes to words of its reference.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.replay import ReplayedUtterance, replay_scheduler, replay_sync
from benchmarks.scoring import DEFAULT_MANIFEST, load_manifest, normalize, word_error_rate, write_results
from livecap.asr.engine import ENGINES, SAMPLE_RATE, Engine, EngineOptions
from livecap.audio import read_wav

RESULTS = Path(__file__).resolve().parent / "results"
SR = SAMPLE_RATE


def _at_level(signal: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(signal**2))) or 1.0
    return (signal * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def _coloured(seconds: float, exponent: float, seed: int) -> np.ndarray:
    """Noise whose power falls as 1/f**exponent: 0 white, 1 pink, 2 brown."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n, 1 / SR)
    spectrum[1:] /= frequencies[1:] ** (exponent / 2)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n)


def babble(seconds: float, seed: int, manifest: Path = DEFAULT_MANIFEST, voices: int = 8) -> np.ndarray:
    """Many talkers at once, none intelligible: recordings reversed in time,
    looped to length and summed with random offsets."""
    rng = np.random.default_rng(seed)
    recordings = load_manifest(manifest)
    n = int(seconds * SR)
    mix = np.zeros(n)
    for index in rng.choice(len(recordings), size=voices, replace=False):
        voice = read_wav(recordings[index].audio).mono_16k()[::-1]
        voice = np.roll(np.resize(voice, n), int(rng.integers(n)))
        mix += voice / (np.sqrt(np.mean(voice**2)) + 1e-9)
    return mix


def _t(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SR)) / SR


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR))


def _tone(frequency: float, seconds: float, decay: float = 0.0, harmonics: int = 1) -> np.ndarray:
    """A tone with ``harmonics`` partials (1/k amplitudes), an exponential decay
    (per second; 0 = steady) and 5 ms fades, as bells, plucked strings and beeps have."""
    t = _t(seconds)
    wave = np.sum([np.sin(2 * np.pi * frequency * k * t) / k for k in range(1, harmonics + 1)], axis=0)
    envelope = np.exp(-decay * t) * np.minimum(1.0, np.minimum(t, seconds - t) / 0.005)
    return np.asarray(wave * envelope)


def _spaced(pieces: Sequence[np.ndarray], gap_s: float) -> np.ndarray:
    return np.concatenate([part for piece in pieces for part in (piece, _silence(gap_s))])


def tones() -> np.ndarray:
    """Beeps at 440 Hz, 1 kHz and 2.5 kHz, a 1 kHz test tone of 3 s, and a 200 Hz-4 kHz sweep."""
    t = _t(3.0)
    sweep = np.sin(2 * np.pi * (200 * t + (4000 - 200) * t**2 / (2 * 3.0)))
    return _spaced([_tone(440, 0.5), _tone(1000, 0.3), _tone(2500, 0.2), _tone(1000, 3.0), sweep], 1.5)


def dtmf(seed: int = 3) -> np.ndarray:
    """A phone number dialled with touch tones (ITU-T Q.23 pairs), 0.15 s each."""
    rng = np.random.default_rng(seed)
    low, high = (697, 770, 852, 941), (1209, 1336, 1477)
    keys = [_tone(low[rng.integers(4)], 0.15) + _tone(high[rng.integers(3)], 0.15) for _ in range(10)]
    return _spaced([np.concatenate([part for key in keys for part in (key, _silence(0.1))])], 2.0)


def chimes() -> np.ndarray:
    """A click and a two-tone door chime (988 Hz, 784 Hz), as ../shared/cases/chime.wav, and a three-note
    airport-style chime with harmonics; each three times."""
    click = np.sign(np.sin(2 * np.pi * 1000 * _t(0.004)))
    door = np.concatenate([click, _silence(0.5), _tone(988, 0.15, 6), _tone(784, 0.25, 6)])
    airport = np.concatenate([_tone(f, 0.6, 3, harmonics=4) for f in (523, 659, 784)])
    return _spaced([door, airport] * 3, 2.3)


def clicks(seed: int = 5) -> np.ndarray:
    """Keyboard typing: short filtered noise bursts at random intervals of 60-300 ms."""
    rng = np.random.default_rng(seed)
    out = _silence(12.0)
    position = int(0.5 * SR)
    while position < len(out) - SR:
        burst = rng.standard_normal(int(0.008 * SR)) * np.exp(-np.arange(int(0.008 * SR)) / 20)
        out[position : position + len(burst)] += burst
        position += int(rng.uniform(0.06, 0.3) * SR)
    return out


def applause(seconds: float = 10.0, seed: int = 7, clappers: int = 30) -> np.ndarray:
    """Many people clapping: each clap a 10 ms burst of band-passed noise, each clapper at 3-5 claps a second."""
    rng = np.random.default_rng(seed)
    out = _silence(seconds)
    for _ in range(clappers):
        rate = rng.uniform(3, 5)
        for onset in np.arange(rng.uniform(0, 0.3), seconds - 0.02, 1 / rate):
            start = int((onset + rng.normal(0, 0.01)) * SR)
            burst = rng.standard_normal(int(0.01 * SR)) * np.exp(-np.arange(int(0.01 * SR)) / 30)
            out[max(0, start) : max(0, start) + len(burst)] += burst * rng.uniform(0.5, 1.0)
    spectrum = np.fft.rfft(out)
    frequencies = np.fft.rfftfreq(len(out), 1 / SR)
    spectrum[(frequencies < 500) | (frequencies > 5000)] *= 0.1
    return np.fft.irfft(spectrum, len(out))


def music(seconds: float = 20.0, seed: int = 11, drums: bool = False) -> np.ndarray:
    """A melody of plucked notes over held chords (C, Am, F, G), 120 beats a minute;
    with ``drums``, a kick and a hi-hat on the beats."""
    rng = np.random.default_rng(seed)
    out = _silence(seconds)
    beat = 0.5
    chords = ((261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6), (196.0, 246.9, 293.7))
    for bar, start in enumerate(np.arange(0, seconds - 2.0, 4 * beat)):
        i = int(start * SR)
        chord = np.sum([_tone(f, 4 * beat, 0.8, harmonics=3) for f in chords[bar % 4]], axis=0)
        out[i : i + len(chord)] += 0.3 * chord
        for step in range(8):
            note = chords[bar % 4][rng.integers(3)] * 2 ** rng.integers(1, 3)
            pluck = _tone(note, beat / 2, 6, harmonics=5)
            j = i + int(step * beat / 2 * SR)
            out[j : j + len(pluck)] += 0.5 * pluck
        if drums:
            for step in range(4):
                j = i + int(step * beat * SR)
                kick = np.sin(2 * np.pi * 60 * _t(0.15)) * np.exp(-_t(0.15) * 25)
                hat = rng.standard_normal(int(0.03 * SR)) * np.exp(-_t(0.03) * 150) * 0.3
                out[j : j + len(kick)] += kick
                out[j : j + len(hat)] += hat
    return out


def non_speech(seconds: float = 20.0, manifest: Path = DEFAULT_MANIFEST) -> dict[str, np.ndarray]:
    """Name → signal (16 kHz float32), reproducible (fixed seeds); noises,
    applause and music last ``seconds``, the others 10-15 s."""
    signals: dict[str, np.ndarray] = {"silence": _silence(seconds)}
    for name, exponent in (("white", 0.0), ("pink", 1.0), ("brown", 2.0)):
        for level in (-50, -35, -20):
            signals[f"{name}{level}dB"] = _at_level(_coloured(seconds, exponent, seed=-level), level)
    for level in (-35, -20):
        signals[f"babble{level}dB"] = _at_level(babble(seconds, seed=-level, manifest=manifest), level)
    for name, signal in (("tones", tones()), ("dtmf", dtmf()), ("chimes", chimes()), ("clicks", clicks()),
                         ("applause", applause(seconds)), ("music", music(max(seconds, 4.0))),
                         ("music_drums", music(max(seconds, 4.0), drums=True))):
        for level in (-30, -12):
            signals[f"{name}{level}dB"] = _at_level(signal, level)
    return {name: np.clip(signal, -1, 1).astype(np.float32) for name, signal in signals.items()}


@dataclass(frozen=True)
class Lost:
    recording: str
    start_s: float
    end_s: float
    reason: str
    heard: str
    """What the engine makes of the utterance's audio when asked directly."""
    in_reference: bool
    """Whether ``heard`` holds a word of the recording's reference (a real loss, not a breath)."""


def build_engine(name: str, model: str, threads: int) -> Engine:
    from livecap import asr  # noqa: F401  (engines register themselves on import)

    return ENGINES[name](EngineOptions(model=model, device="cpu", threads=threads))


def _heard(engine: Engine, audio: np.ndarray) -> str:
    stream = engine.open_stream()
    stream.feed(audio)
    return stream.finish().text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="whisper-onnx", choices=["whisper-onnx", "pocketsphinx"])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    engine = build_engine(args.engine, args.model, args.threads)
    began = time.perf_counter()

    captions: dict[str, list[str]] = {}
    for name, signal in non_speech(manifest=args.manifest).items():
        texts = [u.final for u in replay_sync(replay_scheduler(engine), signal) if u.final]
        captions[name] = texts
        print(f"  {name}: {texts or 'no caption'}", flush=True)

    recordings = load_manifest(args.manifest)
    lost: list[Lost] = []
    finals: list[str] = []
    utterances = 0
    for recording in recordings:
        audio = read_wav(recording.audio).mono_16k()
        replayed: list[ReplayedUtterance] = replay_sync(replay_scheduler(engine), audio)
        utterances += len(replayed)
        finals.append(" ".join(u.final for u in replayed))
        reference = set(normalize(recording.text).split())
        for u in replayed:
            if u.suppressed is not None:
                heard = _heard(engine, audio[int(u.start_s * SR) : int(u.end_s * SR)])
                lost.append(Lost(recording.id, u.start_s, u.end_s, u.suppressed, heard,
                                 bool(set(normalize(heard).split()) & reference)))
    captioned = {name: texts for name, texts in captions.items() if texts}
    real_losses = [entry for entry in lost if entry.in_reference]
    wer = word_error_rate([r.text for r in recordings], finals)
    print(f"{engine.model_version}: non-speech signals {len(captions)}, captioned {len(captioned)}; "
          f"speech utterances {utterances}, suppressed {len(lost)} ({len(real_losses)} with reference words); "
          f"WER of finals {wer:.2%}; {time.perf_counter() - began:.0f} s")
    for entry in lost:
        print(f"  suppressed {entry.recording} {entry.start_s:.1f}-{entry.end_s:.1f} s ({entry.reason}): "
              f"{entry.heard!r}{' <- real words' if entry.in_reference else ''}")
    label = args.model if args.engine == "whisper-onnx" else args.engine
    write_results(args.out or RESULTS / f"noise-{label}.json", {
        "engine": args.engine, "model_version": engine.model_version,
        "non_speech": {"signals": len(captions), "captioned": captioned, "all": captions},
        "speech": {"recordings": len(recordings), "utterances": utterances, "suppressed": [asdict(e) for e in lost],
                   "suppressed_with_reference_words": len(real_losses), "wer_finals": wer},
    })
    getattr(engine, "close", lambda: None)()
    return 1 if captioned or real_losses else 0


if __name__ == "__main__":
    raise SystemExit(main())
