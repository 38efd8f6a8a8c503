"""Streaming WER without load: what the streaming policy itself costs.

The whole evaluation set is played back to back (1 s apart, as in
``benchmarks/live.py``) through the server's VAD segmenter. Each utterance is
decoded again every ``--step`` seconds of new audio and committed by the
LocalAgreement policy, as the transcriber does, but as if inference took no
time: the result is deterministic and free of scheduling effects, so a
change to the policy can be judged in a few minutes.

Reports three WERs whose differences locate the loss:

- ``wer_offline``: each recording transcribed whole (``benchmarks/offline.py``);
- ``wer_segmented``: each VAD utterance transcribed once, at its end, with the
  room's prompt (the final hypothesis alone): the cost of segmentation;
- ``wer_finals``: the finals viewers keep (stable words of the partials plus
  the final hypothesis' tail): the cost of committing words early.

    python -m benchmarks.streaming --model tiny.en
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.scoring import DEFAULT_MANIFEST, Recording, load_manifest, word_error_rate, write_results
from livecap.asr.engine import SAMPLE_RATE, EngineOptions, Hypothesis, Word
from livecap.asr.guardrails import suppression_reason
from livecap.asr.streaming import LocalAgreement, StreamingOptions
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.audio import read_wav
from livecap.vad import UtteranceAudio, UtteranceEnded, UtteranceStarted, VadOptions, VadSegmenter

RESULTS = Path(__file__).resolve().parent / "results"
GAP_S = 1.0
CHUNK_S = 0.02


@dataclass(frozen=True)
class UtteranceResult:
    start_s: float
    end_s: float
    partials: list[str]
    stable: str
    """Words the partials had committed when the utterance ended."""
    final_hypothesis: str
    final: str


def _words(hypothesis: Hypothesis) -> tuple[Word, ...]:
    return () if suppression_reason(hypothesis) else hypothesis.words


def stream(engine: WhisperOnnx, audio: np.ndarray, options: StreamingOptions,
           vad_options: VadOptions) -> list[UtteranceResult]:
    """Run one room's audio through VAD, partial steps and LocalAgreement."""
    vad = VadSegmenter(vad_options)
    results: list[UtteranceResult] = []
    finals: list[str] = []
    chunk = int(CHUNK_S * SAMPLE_RATE)
    received = decoded = start = 0
    agreement, recognizer, partials = LocalAgreement(), engine.open_stream(), list[str]()
    events = [event for i in range(0, len(audio), chunk) for event in vad.feed(audio[i : i + chunk], 0.0)]
    for event in [*events, *vad.flush(0.0)]:
        match event:
            case UtteranceStarted(_, begin):
                prompt = " ".join(" ".join(finals).split()[-options.prompt_words :])
                agreement = LocalAgreement(options.agreement_horizon_s, options.agreement_min_audio_s)
                recognizer, partials = engine.open_stream(prompt), []
                received = decoded = 0
                start = begin
            case UtteranceAudio(_, samples, _):
                recognizer.feed(samples)
                received += len(samples)
                due = options.first_step_s if decoded == 0 else options.step_s
                if received - decoded >= due * SAMPLE_RATE:
                    settled = " ".join(word.text for word in agreement.stable)
                    hypothesis = recognizer.hypothesis(settled)
                    decoded = received
                    if not suppression_reason(hypothesis):
                        agreement.update(hypothesis.words, received / SAMPLE_RATE)
                        partials.append(hypothesis.text)
            case UtteranceEnded(_, end, _, _):
                final_hypothesis = recognizer.finish()
                words = agreement.finish(_words(final_hypothesis))
                text = " ".join(word.text for word in words)
                finals.append(text)
                results.append(UtteranceResult(start / SAMPLE_RATE, end / SAMPLE_RATE, partials,
                                               " ".join(word.text for word in agreement.stable),
                                               " ".join(w.text for w in _words(final_hypothesis)), text))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-cache", default=None)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--ids", nargs="*", help="only these recording ids")
    defaults = StreamingOptions()
    parser.add_argument("--step", type=float, default=defaults.step_s, help="seconds of new audio between partials")
    parser.add_argument("--horizon", type=float, default=defaults.agreement_horizon_s,
                        help="seconds of audio between the two hypotheses that must agree")
    parser.add_argument("--min-audio", type=float, default=defaults.agreement_min_audio_s,
                        help="seconds of audio a hypothesis needs before it can settle words")
    parser.add_argument("--prompt-words", type=int, default=defaults.prompt_words,
                        help="words of earlier finals given as context")
    vad_defaults = VadOptions()
    parser.add_argument("--soft-max", type=float, default=vad_defaults.soft_max_utterance_s,
                        help="utterance length (s) after which the VAD looks for a shorter pause")
    parser.add_argument("--max-utterance", type=float, default=vad_defaults.max_utterance_s,
                        help="utterance length (s) at which the VAD cuts")
    parser.add_argument("--label", default="", help="added to the output file name")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/streaming-MODEL-PRECISION[-LABEL].json")
    args = parser.parse_args(argv)

    recordings: list[Recording] = load_manifest(args.manifest, args.ids)
    engine = WhisperOnnx(EngineOptions(args.model, args.device, args.threads, args.model_cache))
    options = StreamingOptions(step_s=args.step, prompt_words=args.prompt_words,
                               agreement_horizon_s=args.horizon, agreement_min_audio_s=args.min_audio)
    vad_options = VadOptions(soft_max_utterance_s=args.soft_max, max_utterance_s=args.max_utterance)
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    files = [read_wav(recording.audio).mono_16k() for recording in recordings]
    audio = np.concatenate([piece for samples in files for piece in (samples, gap)])
    references = " ".join(recording.text for recording in recordings)

    began = time.perf_counter()
    utterances = stream(engine, audio, options, vad_options)
    seconds = time.perf_counter() - began
    offline = [engine.transcribe(samples).text for samples in files]
    result = {
        "engine": engine.name,
        "model_version": engine.model_version,
        "streaming": asdict(options),
        "vad": asdict(vad_options),
        "audio_seconds": len(audio) / SAMPLE_RATE,
        "seconds": seconds,
        "utterances": len(utterances),
        "wer_offline": word_error_rate([r.text for r in recordings], offline),
        "wer_segmented": word_error_rate([references], [" ".join(u.final_hypothesis for u in utterances)]),
        "wer_finals": word_error_rate([references], [" ".join(u.final for u in utterances)]),
        "offline": {recording.id: text for recording, text in zip(recordings, offline, strict=True)},
        "detail": [asdict(u) for u in utterances],
    }
    print(f"{engine.model_version} step {args.step:g} s: {len(utterances)} utterances; WER offline "
          f"{result['wer_offline']:.2%}, segmented {result['wer_segmented']:.2%}, finals {result['wer_finals']:.2%}")
    suffix = f"-{args.label}" if args.label else ""
    out = args.out or RESULTS / f"streaming-{args.model}-{engine.manifest.precision}{suffix}.json"
    write_results(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
