"""The whisper-onnx engine and its model cache, with the real tiny.en model."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from livecap_models import Manifest, cli, ensure_model, list_models, verify

from benchmarks.scoring import word_error_rate
from livecap.asr.engine import ENGINES, SAMPLE_RATE, EngineOptions, Hypothesis
from livecap.asr.guardrails import echoes_prompt
from livecap.asr.whisper_onnx import WhisperOnnx, WindowPolicy, create_engine, repeated_tail
from tests.speech import audio, recordings

SHORT = ["librispeech-2412-153948-0002", "librispeech-3752-4944-0001", "vctk-p225_002", "ljspeech-LJ050-0159",
         "commonvoice-en-16812"]


def _check_words(hypothesis: Hypothesis, duration: float) -> None:
    starts = [w.start for w in hypothesis.words]
    assert starts == sorted(starts)
    assert all(0.0 <= w.start <= w.end <= duration for w in hypothesis.words)
    assert all(0.0 < w.confidence <= 1.0 for w in hypothesis.words)


def test_registered(whisper_engine: WhisperOnnx) -> None:
    assert ENGINES["whisper-onnx"] is create_engine
    assert whisper_engine.provider == "CPUExecutionProvider"
    assert whisper_engine.model_version.startswith("tiny.en-int8-")


def test_wer_on_real_speech(whisper_engine: WhisperOnnx) -> None:
    hypotheses = [whisper_engine.transcribe(audio(i)) for i in SHORT]
    assert word_error_rate([recordings()[i].text for i in SHORT], [h.text for h in hypotheses]) <= 0.10
    assert all(h.no_speech_probability is not None and h.no_speech_probability < 0.5 for h in hypotheses)


def test_stream_final_has_word_timestamps(whisper_engine: WhisperOnnx) -> None:
    samples = audio("jfk-inaugural-ask-not")
    stream = whisper_engine.open_stream()
    for piece in np.array_split(samples, 37):
        stream.feed(piece)
    partial = stream.hypothesis()
    final = stream.finish()
    assert final.text == partial.text == whisper_engine.transcribe(samples).text
    assert "ask not what your country can do for you" in final.text.lower()
    duration = len(samples) / SAMPLE_RATE
    _check_words(final, duration)
    # speech runs from about 0.3 s to the end of the clip
    assert final.words[0].start < 1.5 and final.words[-1].end > duration - 2.0
    by_text = {w.text.strip(",.").lower(): w for w in final.words}
    assert by_text["americans"].end <= by_text["ask"].start  # word order survives in time


def test_prompt_biases_spelling(whisper_engine: WhisperOnnx) -> None:
    stream = whisper_engine.open_stream(prompt="Sintra.")
    stream.feed(audio("fleurs-en_us-test-002"))  # "... the town of Sintra ...", "Stintra" without the prompt
    assert "Sintra" in stream.finish().text


def test_prompt_is_not_echoed_over_non_speech() -> None:
    """base, prompted with the captions before it, copies them over the
    second before a speaker starts (no-speech probability 0.92, yet confident);
    decoded again without the prompt, it writes no such sentence."""
    ensure_model("base", "int8")
    base = WhisperOnnx(EngineOptions(model="base", device="cpu", threads=2))
    prompt = ("Had he married a more amiable woman, he might have been made still more respectable than he was. "
              "He might even have been made amiable himself.")
    before_speech = audio("ami-ES2011a-headset0-40s-46s")[: SAMPLE_RATE]
    hypothesis = base.transcribe(before_speech, prompt)
    assert not echoes_prompt(hypothesis.text, prompt, 0.0), hypothesis.text
    assert len(hypothesis.words) <= 1


def test_long_audio_is_split_into_windows(whisper_engine: WhisperOnnx) -> None:
    samples = audio("osr-us-000-0034-8k")  # 35.5 s
    final = whisper_engine.transcribe(samples, word_timestamps=True)
    assert word_error_rate([recordings()["osr-us-000-0034-8k"].text], [final.text]) <= 0.10
    _check_words(final, len(samples) / SAMPLE_RATE)
    assert final.words[-1].end > 30.0


def test_concurrent_streams(whisper_engine: WhisperOnnx) -> None:
    audios = [audio(i) for i in SHORT[:2]]
    expected = [whisper_engine.transcribe(a).text for a in audios]
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda a: whisper_engine.transcribe(a).text, audios * 2)) == expected * 2


def test_fp16_variant() -> None:
    """The CUDA variant, run here on the CPU: same words as int8 on clear speech."""
    engine = WhisperOnnx(EngineOptions(model="tiny.en", device="cpu", extra={"precision": "fp16"}))
    assert engine.manifest.precision == "fp16"
    recording = "librispeech-2412-153948-0002"
    assert word_error_rate([recordings()[recording].text], [engine.transcribe(audio(recording)).text]) == 0.0


def test_repeated_tail() -> None:
    assert repeated_tail([1, 2, 3, 4]) is None
    assert repeated_tail([9] + [5] * 12) == 2
    assert repeated_tail([9, 8] + [1, 2, 3, 4] * 3) == 6
    assert repeated_tail([1, 2] * 3) is None  # three short copies can be speech ("no, no, no")
    sentence = list(range(100, 114))
    assert repeated_tail([7, *sentence, *sentence]) == 15  # a sentence written twice
    assert repeated_tail([7, *sentence[:6], *sentence[:6]]) is None


def test_window_policy() -> None:
    assert [WindowPolicy().frames(s) for s in (0.5, 5.0, 5.1, 10.1, 25.0)] == [1500, 1500, 2000, 3000, 3000]
    assert WindowPolicy((30.0,), 0.0).frames(3.0) == 3000
    assert WindowPolicy((10.0,), 0.0).frames(12.0) == 3000  # nothing fits: the full window


def test_model_cache_is_reused(tiny_manifest: Manifest) -> None:
    assert ensure_model("tiny.en", "int8") == tiny_manifest
    assert tiny_manifest in list_models(tiny_manifest.directory.parent)
    assert tiny_manifest.graphs["decoder"].inputs[:2] == ("tokens", "past_k_0")


def test_verify_detects_tampering(tiny_manifest: Manifest, tmp_path: Path) -> None:
    copy = tmp_path / tiny_manifest.directory.name
    shutil.copytree(tiny_manifest.directory, copy)
    manifest = Manifest.load(copy)
    assert verify(manifest) == []
    assert cli.main(["verify", "--cache-dir", str(tmp_path)]) == 0
    with (copy / "decoder.onnx").open("r+b") as file:
        file.seek(1_000_000)
        byte = file.read(1)
        file.seek(1_000_000)
        file.write(bytes([byte[0] ^ 0xFF]))
    (copy / "config.json").unlink()
    problems = verify(manifest)
    assert any(p.startswith("decoder.onnx: SHA-256") for p in problems)
    assert "config.json: missing" in problems
    assert cli.main(["verify", "--cache-dir", str(tmp_path)]) == 1


def test_missing_file_is_rebuilt_identically(tmp_path: Path) -> None:
    built = ensure_model("tiny.en", "fp32", tmp_path)
    (built.directory / "decoder.onnx").unlink()
    rebuilt = ensure_model("tiny.en", "fp32", tmp_path)
    assert rebuilt == built and verify(rebuilt) == []


def test_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    def interrupt(stage: str, fraction: float) -> None:
        if stage == "decoder":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_model("tiny.en", "fp32", tmp_path, interrupt)
    assert list_models(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == [".tiny.en-fp32.lock"]
