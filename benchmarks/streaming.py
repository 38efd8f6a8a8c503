"""Streaming WER without load: what the streaming policy itself costs.

The whole evaluation set is played back to back (1 s apart, as in
``benchmarks/live.py``) through the server's own VAD and recognition stage
(``benchmarks.replay``): each utterance is decoded again every ``--step``
seconds of new audio and committed by the LocalAgreement policy, as live,
but as if inference took no time: the result is deterministic and free of
scheduling effects, so a change to the policy can be judged in minutes.

Reports ``wer_offline`` (each recording transcribed whole,
``benchmarks/offline.py``) and ``wer_finals`` (the finals viewers keep):
their difference is the cost of streaming (segmentation, early commitment).

    python -m benchmarks.streaming --model tiny.en
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.replay import replay_scheduler, replay_sync
from benchmarks.scoring import DEFAULT_MANIFEST, Recording, load_manifest, word_error_rate, write_results
from livecap.asr.engine import SAMPLE_RATE, EngineOptions
from livecap.asr.streaming import StreamingOptions
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.audio import read_wav
from livecap.vad import VadOptions

RESULTS = Path(__file__).resolve().parent / "results"
GAP_S = 1.0


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
    utterances = replay_sync(replay_scheduler(engine), audio, options, vad_options)
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
        "suppressed": sum(u.suppressed is not None for u in utterances),
        "wer_offline": word_error_rate([r.text for r in recordings], offline),
        "wer_finals": word_error_rate([references], [" ".join(u.final for u in utterances)]),
        "offline": {recording.id: text for recording, text in zip(recordings, offline, strict=True)},
        "detail": [asdict(u) for u in utterances],
    }
    print(f"{engine.model_version} step {args.step:g} s: {len(utterances)} utterances; WER offline "
          f"{result['wer_offline']:.2%}, finals {result['wer_finals']:.2%}")
    suffix = f"-{args.label}" if args.label else ""
    out = args.out or RESULTS / f"streaming-{args.model}-{engine.manifest.precision}{suffix}.json"
    write_results(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
