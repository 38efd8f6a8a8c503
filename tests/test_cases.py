"""The failing cases of issue 11 (kinds 1-3) and other members of their kinds.

Recognition runs through the server's own VAD and recognition stage with the
real tiny.en model (``benchmarks.replay``: as live, but deterministic); the
end-to-end tests at the bottom go through real sockets.

- words lost at utterance boundaries (``runon.wav``: a phrase spoken across
  the hard cut appeared in no caption);
- guardrails that cut both ways (``chime.wav`` became "beep"; real "Thank
  you." was deleted; fallback finals were judged by Whisper's rules);
- a final worse than what viewers saw (``numbers.wav``: a settled "for the"
  made "$5" of "45 dollars").
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import jiwer
import numpy as np
import pytest
import websockets

from benchmarks import noise
from benchmarks.replay import ReplayedUtterance, replay_scheduler, replay_sync
from benchmarks.scoring import normalize, word_error_rate
from livecap.asr.engine import EngineOptions
from livecap.asr.pocketsphinx_engine import PocketsphinxEngine
from livecap.asr.streaming import StreamingOptions
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.audio import read_wav
from livecap.client import stream_audio
from livecap.vad import VadOptions
from tests.cases import case
from tests.conftest import LiveServer, start_server, timeout
from tests.speech import audio, recordings

SR = 16_000
RUNON = ["ljspeech-LJ050-0159", "ljspeech-LJ050-0160", "ljspeech-LJ050-0161", "ljspeech-LJ050-0162",
         "jfk-inaugural-ask-not", "vctk-p226_003", "librispeech-2412-153948-0000"]
"""The recordings ``runon.wav`` is made of, in order."""
NUMBERS = "The next session starts at 10:30 on March 3rd, 2025, in room 204. Tickets cost 45 dollars. " \
          "Call 555 0199 for details."


def _replay(engine: WhisperOnnx | PocketsphinxEngine, signal: np.ndarray,
            vad: VadOptions = VadOptions()) -> list[ReplayedUtterance]:
    return replay_sync(replay_scheduler(engine), signal, vad_options=vad)


def _finals(utterances: list[ReplayedUtterance]) -> str:
    return " ".join(u.final for u in utterances if u.final)


def longest_loss(reference: str, hypothesis: str) -> int:
    """The longest run of reference words missing from ``hypothesis`` (deleted, after normalisation)."""
    output = jiwer.process_words(normalize(reference), normalize(hypothesis))
    return max((c.ref_end_idx - c.ref_start_idx for c in output.alignments[0] if c.type == "delete"), default=0)


def _trimmed(recording: str) -> np.ndarray:
    """The recording from its first to its last loud sample: speech right at the start and the end."""
    signal = audio(recording)
    level = np.convolve(np.abs(signal), np.ones(160) / 160, mode="same")
    loud = np.flatnonzero(level > 0.05 * level.max())
    return signal[loud[0] : loud[-1]]


def _espeak(text: str, directory: Path) -> np.ndarray:
    path = directory / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True)
    silence = np.zeros(int(0.4 * SR), dtype=np.float32)
    return np.concatenate([silence, read_wav(path).mono_16k(), silence, silence])


@pytest.fixture(scope="module")
def sphinx() -> PocketsphinxEngine:
    return PocketsphinxEngine(EngineOptions())


# --- kind 1: no word lost at a cut -----------------------------------------------------------------------------


def test_runon_case_loses_no_phrase(whisper_engine: WhisperOnnx) -> None:
    """runon.wav: seven sentences, no pause over 0.15 s. "The Secret Service
    should not", spoken across the 15 s cut, was in no caption."""
    reference = " ".join(recordings()[r].text for r in RUNON)
    finals = _finals(_replay(whisper_engine, read_wav(case("runon.wav")).mono_16k()))
    assert longest_loss(reference, finals) <= 2, finals
    assert "secret service should not" in normalize(finals)
    assert word_error_rate([reference], [finals]) <= 0.12


@pytest.mark.parametrize(("start_s", "step_s"), [(0.0, 1.6), (27.33, 1.1)])
def test_runon_case_loses_no_phrase_at_slower_steps(whisper_engine: WhisperOnnx, start_s: float,
                                                    step_s: float) -> None:
    """runon.wav decoded less often, as on a busy machine (in CI, once): the
    utterance after the soft cut at 39.6 s opens with "for her brother Bob."
    and Whisper's final skipped it for the sentence after, which the partials
    had not settled; started at 27.3 s, the 15 s cut leaves "to myself" alone
    in a last utterance, decoded as an unsure guess and suppressed. Both are
    decoded again after the speech before them (``skipped_head``)."""
    signal = read_wav(case("runon.wav")).mono_16k()[round(start_s * SR) :]
    utterances = replay_sync(replay_scheduler(whisper_engine), signal, StreamingOptions(step_s=step_s))
    reference = " ".join(recordings()[r].text for r in RUNON)
    if start_s:  # it starts at "ask not"
        reference = reference[reference.index("ask not") :]
    finals = _finals(utterances)
    assert longest_loss(reference, finals) <= 1, finals
    assert word_error_rate([reference], [finals]) <= 0.12


def test_hard_cuts_mid_sentence_lose_no_words(whisper_engine: WhisperOnnx) -> None:
    """Other run-on speech, cut every 6 s wherever the speech is (no pause is
    long enough): the words at each cut go on into the next utterance."""
    parts = ["fleurs-en_us-test-005", "librispeech-1988-24833-0001", "ljspeech-LJ050-0160", "vctk-p226_003"]
    signal = np.concatenate([_trimmed(r) for r in parts])
    vad = VadOptions(soft_max_utterance_s=5.9, max_utterance_s=6.0, min_pause_ms=600)
    utterances = _replay(whisper_engine, signal, vad)
    assert len(utterances) >= 5
    reference = " ".join(recordings()[r].text for r in parts)
    finals = _finals(utterances)
    assert longest_loss(reference, finals) <= 2, finals
    assert word_error_rate([reference], [finals]) <= 0.2


@pytest.mark.parametrize("recording", ["vctk-p226_003", "librispeech-2412-153948-0002", "jfk-inaugural-ask-not"])
def test_first_and_last_words_survive_speech_at_the_very_edges(whisper_engine: WhisperOnnx, recording: str) -> None:
    """Speech from the first sample to the last (the stream opens late and stops at once)."""
    finals = normalize(_finals(_replay(whisper_engine, _trimmed(recording)))).split()
    reference = normalize(recordings()[recording].text).split()
    assert finals[:1] == reference[:1] and finals[-1:] == reference[-1:], finals


# --- kind 2: guardrails that cut both ways ---------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["whisper", "pocketsphinx"])
def test_chime_case_gives_no_caption(whisper_engine: WhisperOnnx, sphinx: PocketsphinxEngine, engine: str) -> None:
    utterances = _replay(whisper_engine if engine == "whisper" else sphinx, read_wav(case("chime.wav")).mono_16k())
    assert not [u.partials for u in utterances if u.partials] and not _finals(utterances)


def test_other_non_speech_gives_no_caption(whisper_engine: WhisperOnnx) -> None:
    """Tones, touch tones, chimes, keyboard clicks, applause, music, noise and babble, at two levels."""
    captioned = {}
    for name, signal in noise.non_speech(seconds=6.0).items():
        utterances = _replay(whisper_engine, signal)
        if shown := [text for u in utterances for text in (*u.partials, u.final) if text]:
            captioned[name] = shown
    assert not captioned


@pytest.mark.parametrize("text", ["Thank you.", "Okay.", "Yeah.", "Bye bye.", "So."])
def test_real_short_utterances_are_captioned(whisper_engine: WhisperOnnx, tmp_path: Path, text: str) -> None:
    """Really said, these are words, not Whisper's hallucinations on silence."""
    utterances = _replay(whisper_engine, _espeak(text, tmp_path))
    assert normalize(_finals(utterances)) == normalize(text), utterances


def test_fallback_finals_are_not_dropped(sphinx: PocketsphinxEngine) -> None:
    """PocketSphinx's confidences are not Whisper's: none of its finals of real speech is suppressed."""
    for recording in ["vctk-p226_003", "librispeech-2412-153948-0000", "commonvoice-en-16812", "ljspeech-LJ050-0159"]:
        utterances = _replay(sphinx, audio(recording))
        assert all(u.suppressed in (None, "not_speech") for u in utterances), (recording, utterances)
        assert len(_finals(utterances).split()) >= 0.7 * len(recordings()[recording].text.split()), utterances


# --- kind 3: the final is never worse than what viewers saw --------------------------------------------------


@pytest.fixture(scope="module")
def base_engine() -> WhisperOnnx:
    return WhisperOnnx(EngineOptions(model="base", device="cpu", threads=2))


def test_numbers_case_keeps_every_quantity(base_engine: WhisperOnnx) -> None:
    """numbers.wav: "for the" settled early, so the final said "$5" for "45
    dollars". With base, which hears "forty-five" in this synthetic voice
    (tiny.en writes "for the $5." even decoding the sentence whole, sure of
    it: no policy can fix that), every quantity survives."""
    utterances = _replay(base_engine, read_wav(case("numbers.wav")).mono_16k())
    finals = _finals(utterances)
    digits = "".join(re.findall(r"\d", finals))
    for quantity in ("1030", "2025", "204", "45", "5550199"):
        assert quantity in digits, finals
    assert "45 dollars" in finals or "$45" in finals, finals
    last_partials = " ".join(u.partials[-1] for u in utterances if u.partials)
    assert word_error_rate([NUMBERS], [finals]) <= word_error_rate([NUMBERS], [last_partials])


@pytest.mark.parametrize(("text", "quantities"), [
    ("The keynote starts at 10:15 in hall 3, seats 1 to 250.", ["1015", "3", "1", "250"]),
    ("The fee is 120 dollars, or 80 dollars with a student card, until June 30th 2026.",
     ["120", "80", "30", "2026"]),
    ("Please call 555 0142 or write to room 1207 before 5 pm on Friday, the 14th.", ["5550142", "1207", "5", "14"])])
def test_quantities_survive_the_final(base_engine: WhisperOnnx, tmp_path: Path, text: str,
                                      quantities: list[str]) -> None:
    """Other sentences full of numbers: the finals keep at least the
    quantities the last partials showed, and are no worse word for word."""
    utterances = _replay(base_engine, _espeak(text, tmp_path))
    finals, last_partials = _finals(utterances), " ".join(u.partials[-1] for u in utterances if u.partials)

    def found(caption: str) -> int:
        digits = "".join(re.findall(r"\d", caption))
        return sum(quantity in digits for quantity in quantities)

    assert found(finals) >= found(last_partials), (finals, last_partials)
    assert found(finals) >= len(quantities) - 1, finals
    assert word_error_rate([text], [finals]) <= word_error_rate([text], [last_partials])


@pytest.mark.parametrize("recording", ["fleurs-en_us-test-002", "librivox-sense_and_sensibility_01-0880",
                                       "hifitts-6097-roots_04_morris_0057"])
def test_finals_are_not_worse_than_the_last_partials(whisper_engine: WhisperOnnx, recording: str) -> None:
    """The final, decoded with all the audio, against the last partial of each utterance."""
    utterances = _replay(whisper_engine, audio(recording))
    reference = recordings()[recording].text
    last_partials = " ".join(u.partials[-1] for u in utterances if u.partials)
    assert word_error_rate([reference], [_finals(utterances)]) <= word_error_rate([reference], [last_partials])


# --- end to end, through real sockets ----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    server = await start_server(tmp_path_factory.mktemp("cases"), max_audio_rate=4.0)
    yield server
    await server.runner.cleanup()


@pytest.mark.slow
async def test_chime_and_runon_through_the_server(whisper_server: LiveServer) -> None:
    """The handed files at their own rate through a real Whisper server: the
    chime makes no caption event at all, the run-on speech loses no phrase."""
    chime = await stream_audio(whisper_server.ingest_url("chime"), read_wav(case("chime.wav")).mono_16k(), speed=2.0)
    assert [m for m in chime.messages if m.get("type") == "caption"] == []
    runon = await stream_audio(whisper_server.ingest_url("runon"), read_wav(case("runon.wav")).mono_16k())
    finals = " ".join(m["text"] for m in runon.finals)
    reference = " ".join(recordings()[r].text for r in RUNON)
    assert longest_loss(reference, finals) <= 2, finals
    async with websockets.connect(whisper_server.captions_url("runon", after_seq=0)) as viewer:
        replayed = [await asyncio.wait_for(viewer.recv(), timeout(10)) for _ in runon.finals]
    assert len(replayed) == len(runon.finals)
