"""Word timing from Whisper's cross-attention, as in openai-whisper's ``timing.py``.

Some decoder heads (the model's ``alignment_heads``) attend to the audio frame
being spoken. Their scores for each text token are softmaxed over the real
audio frames, standardised per frame across tokens, median-filtered along
time and averaged over heads; dynamic time warping (DTW) through the negated
matrix then gives a monotonic token → frame path. A token starts at the frame
where the path enters its row. Pure numpy; the decoder supplies the scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from livecap.asr.features import FRAMES_PER_SECOND

ENCODER_FRAMES_PER_SECOND = FRAMES_PER_SECOND // 2
"""The encoder's second convolution has stride 2: one output frame per 20 ms."""
MEDIAN_FILTER_WIDTH = 7
SENTENCE_END = tuple(".!?。！？")


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a window of ``width`` (odd) along the last axis, reflect-padded
    at both ends like openai-whisper's ``median_filter``."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    return np.asarray(np.median(np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1), axis=-1))


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic path of least total ``cost`` from (0, 0) to (n-1, m-1), steps
    right, down or diagonal; returns (row indices, column indices).

    Ties break as in openai-whisper's ``dtw_cpu``. Each row is computed with
    whole-array operations: along a row ``c[j] = x[j] + min(b[j], c[j-1])``
    (``b`` from the row above) unrolls to ``S[j] + min_{k<=j}(b[k] - S[k-1])``
    with ``S`` the running sum of ``x``, a cumulative minimum.
    """
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 diagonal, 1 from above, 2 from the left
    for i in range(1, n + 1):
        above = total[i - 1]
        best_above = np.minimum(above[:-1], above[1:])  # entering cell j from (i-1, j-1) or (i-1, j)
        running = np.cumsum(cost[i - 1])
        before = np.concatenate(([0.0], running[:-1]))
        total[i, 1:] = running + np.minimum.accumulate(best_above - before)
        diagonal, vertical, left = above[:-1], above[1:], total[i, :-1]
        trace[i, 1:] = np.where((diagonal < vertical) & (diagonal < left), 0,
                                np.where((vertical < diagonal) & (vertical < left), 1, 2))
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    path: list[tuple[int, int]] = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def token_boundaries(scores: np.ndarray, audio_frames: int) -> np.ndarray:
    """Times in seconds where each row's token begins, plus one final end time.

    ``scores`` is ``[rows, heads, frames]``: raw cross-attention scores of the
    alignment heads, one row per decoder input from the token before the
    first text token to the last text token (so ``rows`` = text tokens + 1).
    ``audio_frames`` counts the encoder frames that hold real audio.
    """
    weights = scores[:, :, :audio_frames].transpose(1, 0, 2).astype(np.float64)
    weights = np.exp(weights - weights.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    weights = (weights - weights.mean(axis=-2, keepdims=True)) / (weights.std(axis=-2, keepdims=True) + 1e-10)
    matrix = median_filter(weights, MEDIAN_FILTER_WIDTH).mean(axis=0)
    rows, cols = dtw(-matrix)
    jumps = np.diff(rows, prepend=-1).astype(bool)
    return np.asarray(cols[jumps], dtype=np.float64) / ENCODER_FRAMES_PER_SECOND


def word_spans(starts_word: Sequence[bool]) -> list[tuple[int, int]]:
    """``[first, end)`` token index ranges of the words: a word begins at each
    token that starts with a space (and at the first token)."""
    firsts = [i for i, starts in enumerate(starts_word) if starts or i == 0]
    return list(zip(firsts, [*firsts[1:], len(starts_word)], strict=True))


def clamp_long_words(starts: np.ndarray, ends: np.ndarray, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Shorten words that absorbed a pause, as openai-whisper's heuristics do:
    the first word may not start, and a sentence's last word may not end,
    more than twice the median word duration (at most 1.4 s) away."""
    durations = ends - starts
    spoken = durations[durations > 0]
    if not len(spoken):
        return starts, ends
    longest = 2 * min(0.7, float(np.median(spoken)))
    starts, ends = starts.copy(), ends.copy()
    starts[0] = max(starts[0], ends[0] - longest)
    for k, text in enumerate(texts):
        if k == len(texts) - 1 or text.endswith(SENTENCE_END):
            ends[k] = min(ends[k], starts[k] + longest)
    return starts, ends
