"""The VAD segmenter on real recordings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks import noise
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.audio import read_wav
from livecap.vad import (
    SpeechCheck,
    UtteranceAudio,
    UtteranceEnded,
    UtteranceStarted,
    VadEvent,
    VadOptions,
    VadSegmenter,
)
from tests.cases import case
from tests.speech import audio, recordings

SR = 16_000


def segments(events: list[VadEvent]) -> list[tuple[int, int, str, np.ndarray]]:
    """(start, end, reason, audio) per utterance."""
    result: list[tuple[int, int, str, np.ndarray]] = []
    start, chunks = 0, list[np.ndarray]()
    for event in events:
        match event:
            case UtteranceStarted(start=s):
                start, chunks = s, []
            case UtteranceAudio(samples=samples):
                chunks.append(samples)
            case UtteranceEnded(end=end, reason=reason):
                result.append((start, end, reason, np.concatenate(chunks)))
    return result


def run(signal: np.ndarray, chunk_sizes: list[int], options: VadOptions = VadOptions()) -> list[VadEvent]:
    segmenter, events, i, k = VadSegmenter(options), [], 0, 0
    while i < len(signal):
        size = chunk_sizes[k % len(chunk_sizes)]
        events += segmenter.feed(signal[i : i + size], arrival=float(k))
        i, k = i + size, k + 1
    return events + segmenter.flush(arrival=float(k))


@pytest.mark.parametrize("recording", ["edacc-C02-000000000", "commonvoice-en-16814", "librispeech-2412-153948-0000"])
def test_chunking_does_not_change_segments(recording: str) -> None:
    signal = audio(recording)[: 8 * SR]
    reference = segments(run(signal, [320]))
    assert reference, "real speech yields at least one utterance"
    rng = np.random.default_rng(7)
    for chunks in ([1], [len(signal)], list(rng.integers(1, 4000, size=50))):
        other = segments(run(signal, chunks))
        assert [(s, e, r) for s, e, r, _ in other] == [(s, e, r) for s, e, r, _ in reference]
        for (*_, a), (*_, b) in zip(other, reference, strict=True):
            np.testing.assert_array_equal(a, b)


def test_utterance_audio_is_contiguous_and_matches_the_input() -> None:
    signal = audio("edacc-C02-000000003")
    for start, end, _, samples in segments(run(signal, [480])):
        assert len(samples) == end - start
        np.testing.assert_array_equal(samples, signal[start:end])


def test_pauses_split_utterances_and_speech_is_covered() -> None:
    signal = audio("librispeech-2412-153948-0000")
    found = segments(run(signal, [320]))
    assert len(found) >= 2, "the recording has a clear pause after 'circumstances'"
    assert found[0][0] < 0.4 * SR, "speech starts at about 0.3 s; the pre-roll keeps its onset"
    assert found[-1][1] >= len(signal) - 0.1 * SR


def test_silence_and_quiet_noise_make_no_utterance() -> None:
    rng = np.random.default_rng(1)
    silence = np.zeros(10 * SR, dtype=np.float32)
    hiss = (rng.normal(0, 10 ** (-65 / 20), 10 * SR)).astype(np.float32)
    assert segments(run(silence, [320])) == []
    assert segments(run(hiss, [320])) == []


def test_long_speech_without_pauses_is_cut_at_the_maximum() -> None:
    options = VadOptions(soft_max_utterance_s=4.0, max_utterance_s=6.0)
    signal = audio("fleurs-en_us-test-005")  # 11.4 s with no long pause
    found = segments(run(signal, [320], options))
    assert len(found) >= 2
    assert all(end - start <= 6.0 * SR + 480 for start, end, _, _ in found)
    covered = sum(end - start for start, end, _, _ in found)
    assert covered >= 0.9 * (found[-1][1] - found[0][0]), "cutting loses no speech between utterances"


def test_flush_ends_the_open_utterance() -> None:
    signal = audio("librispeech-2412-153948-0002")[: 2 * SR]  # cut mid-speech
    segmenter = VadSegmenter()
    events = segmenter.feed(signal, 1.0)
    assert not any(isinstance(e, UtteranceEnded) for e in events)
    ended = [e for e in segmenter.flush(2.0) if isinstance(e, UtteranceEnded)]
    assert len(ended) == 1 and ended[0].reason == "flush" and ended[0].end == len(signal)


@pytest.mark.parametrize("level_db", [0.0, -40.0])
def test_a_quiet_microphone_is_heard_like_a_loud_one(level_db: float) -> None:
    """Speech 40 dB down (about -65 dBFS, a far or badly set microphone) still
    makes utterances covering the speech; steady hiss at that level does not."""
    signal = audio("librispeech-2412-153948-0000") * np.float32(10 ** (level_db / 20))
    rng = np.random.default_rng(2)
    floor = rng.normal(0, float(np.sqrt(np.mean(signal**2))) / 30, len(signal)).astype(np.float32)
    found = segments(run(signal + floor, [320]))
    covered = sum(end - start for start, end, _, _ in found)
    assert covered >= 0.8 * len(signal), f"{covered / len(signal):.0%} of the speech is in utterances"


def test_a_cut_mid_speech_opens_the_next_utterance_at_the_same_sample() -> None:
    """Run-on speech (../shared/cases/runon.wav has no pause over 0.15 s):
    where no pause comes, the cut is hard and the next utterance starts at
    once, so no audio between them is lost."""
    options = VadOptions(soft_max_utterance_s=3.0, max_utterance_s=4.0, min_pause_ms=600)
    signal = read_wav(case("runon.wav")).mono_16k()[: 20 * SR]
    found = segments(run(signal, [320], options))
    assert [r for *_, r, _ in found[:-1]].count("max_length") >= 3
    for (_, end, reason, _), (start, *_) in itertools.pairwise(found):
        if reason == "max_length":
            assert start == end, "the next utterance begins where the cut one ended"


def test_short_pauses_end_long_utterances_before_the_hard_cut() -> None:
    """In fluent speech webrtcvad's hang-over calls 0.1-0.2 s breaks voiced;
    past the soft maximum a deep dip in level counts as the pause it is."""
    own = _run_on(["ljspeech-LJ050-0160", "vctk-p226_003", "librispeech-2412-153948-0000", "jfk-inaugural-ask-not"])
    for signal in (read_wav(case("runon.wav")).mono_16k(), own):
        found = segments(run(signal, [320]))
        assert found and all(reason != "max_length" for _, _, reason, _ in found)
        assert all(end - start <= 15.0 * SR for start, end, _, _ in found)


def _run_on(recordings: list[str], gap_s: float = 0.12) -> np.ndarray:
    """Recordings back to back, their leading and trailing silence trimmed, ``gap_s`` of quiet between."""
    pieces = []
    for recording in recordings:
        signal = audio(recording)
        level = np.convolve(np.abs(signal), np.ones(160) / 160, mode="same")
        voiced = np.flatnonzero(level > 0.05 * level.max())
        pieces += [signal[voiced[0] : voiced[-1]], np.zeros(int(gap_s * SR), dtype=np.float32)]
    return np.concatenate(pieces)


def test_flush_keeps_a_last_word_too_short_for_an_onset() -> None:
    """A speaker who says one short word and stops: the stream ends before the onset window fills."""
    word = audio("vctk-p226_003")
    level = np.convolve(np.abs(word), np.ones(160) / 160, mode="same")
    begin = int(np.flatnonzero(level > 0.1 * level.max())[0])
    signal = np.concatenate([np.zeros(SR, dtype=np.float32), word[begin : begin + int(0.14 * SR)]])
    found = segments(run(signal, [320]))
    assert len(found) == 1 and found[0][2] == "flush" and found[0][1] == len(signal)


@pytest.mark.parametrize("name", ["chime.wav"])
def test_speech_check_rejects_the_handed_non_speech(name: str) -> None:
    check = SpeechCheck()
    assert not check.feed(read_wav(case(name)).mono_16k())


@pytest.mark.parametrize("signal", ["tones", "dtmf", "chimes", "clicks", "applause", "music"])
def test_speech_check_rejects_other_non_speech(signal: str) -> None:
    samples = getattr(noise, signal)()
    for level in (-30, -12):
        assert not SpeechCheck().feed(noise._at_level(samples, level)), f"{signal} at {level} dBFS"


def test_speech_check_confirms_speech_within_a_second_after_its_first_word(whisper_engine: WhisperOnnx) -> None:
    """Every recording of the evaluation set (accents, telephone bandwidth,
    far and quiet microphones) is confirmed as speech within a second after its first
    word, so the first partial waits for little."""
    late = []
    for recording in recordings():
        signal = audio(recording)
        first = next(w for w in whisper_engine.transcribe(signal, word_timestamps=True).words if w.text.strip(".,"))
        if not SpeechCheck().feed(signal[: int((first.end + 1.0) * SR)]):
            late.append(recording)
    assert not late


@pytest.mark.parametrize("recording", ["vctk-p226_003", "commonvoice-en-16814", "jfk-inaugural-ask-not"])
def test_a_stream_that_opens_mid_speech_is_heard_from_its_first_sample(recording: str) -> None:
    """A publisher that (re)connects while the speaker talks: the noise floor
    is not known yet, so the onset comes late; the first utterance still
    reaches back to the stream's first sample."""
    signal = audio(recording)
    level = np.convolve(np.abs(signal), np.ones(160) / 160, mode="same")
    loud = np.flatnonzero(level > 0.05 * level.max())
    found = segments(run(signal[loud[0] :], [320]))
    assert found[0][0] == 0
