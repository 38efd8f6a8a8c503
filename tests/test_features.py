"""Whisper log-mel features against a plain, loop-by-loop reference."""

from __future__ import annotations

import numpy as np

from livecap.asr.engine import SAMPLE_RATE
from livecap.asr.features import HOP_LENGTH, N_FFT, log_mel_spectrogram, mel_filters


def _slaney_mel(hz: float) -> float:
    return hz / (200 / 3) if hz < 1000 else 15 + np.log(hz / 1000) * 27 / np.log(6.4)


def _slaney_hz(mel: float) -> float:
    return mel * (200 / 3) if mel < 15 else 1000 * np.exp((mel - 15) * np.log(6.4) / 27)


def _reference_filters(n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels, htk=False, norm='slaney'), one triangle at a time."""
    top = _slaney_mel(SAMPLE_RATE / 2)
    edges = [_slaney_hz(top * k / (n_mels + 1)) for k in range(n_mels + 2)]
    filters = np.zeros((n_mels, N_FFT // 2 + 1))
    for m in range(n_mels):
        low, centre, high = edges[m : m + 3]
        for k in range(N_FFT // 2 + 1):
            f = k * SAMPLE_RATE / N_FFT
            if low <= f <= centre:
                filters[m, k] = (f - low) / (centre - low)
            elif centre < f <= high:
                filters[m, k] = (high - f) / (high - centre)
        filters[m] *= 2 / (high - low)
    return filters


def _reference_log_mel(audio: np.ndarray, frames: int) -> np.ndarray:
    """torch.stft(center=True, reflect) by explicit DFT over the audio followed by zeros,
    one frame per hop plus one, normalised, then padded with 0.0 (faster-whisper)."""
    spoken = len(audio) // HOP_LENGTH + 1
    padded = np.concatenate([audio, np.zeros(spoken * HOP_LENGTH + N_FFT)]).astype(np.float64)
    padded = np.concatenate([padded[1 : N_FFT // 2 + 1][::-1], padded])
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)
    basis = np.exp(-2j * np.pi * np.outer(np.arange(N_FFT // 2 + 1), n) / N_FFT)
    power = np.stack([np.abs(basis @ (padded[t * HOP_LENGTH : t * HOP_LENGTH + N_FFT] * window)) ** 2
                      for t in range(spoken)], axis=1)
    log_spec = np.log10(np.maximum(_reference_filters(80) @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8)
    return np.pad((log_spec + 4) / 4, ((0, 0), (0, frames - spoken)))


def test_mel_filters_match_slaney_definition() -> None:
    np.testing.assert_allclose(mel_filters(80), _reference_filters(80), atol=1e-7)
    assert mel_filters(128).shape == (128, 201)


def test_log_mel_matches_reference() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    frames = 150  # the last 50 frames are padding
    ours = log_mel_spectrogram(audio, frames)
    assert ours.shape == (80, frames) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _reference_log_mel(audio, frames), atol=2e-4)


def test_padding_is_zero_after_normalisation() -> None:
    audio = np.random.default_rng(2).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1
    mel = log_mel_spectrogram(audio, 300)
    assert np.all(mel[:, 101:] == 0.0) and np.all(mel[:, :101] != 0.0)


def test_audio_beyond_the_window_is_cut() -> None:
    audio = np.random.default_rng(3).standard_normal(3 * SAMPLE_RATE).astype(np.float32)
    np.testing.assert_array_equal(log_mel_spectrogram(audio, 100), log_mel_spectrogram(audio[: 100 * HOP_LENGTH], 100))
