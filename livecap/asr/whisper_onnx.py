"""The primary engine: Whisper as ONNX graphs on onnxruntime, greedy decoding.

A stream keeps the utterance's audio and re-decodes all of it on each
``hypothesis()``; agreement between successive hypotheses is the caller's
business (LocalAgreement). One engine serves many streams from many threads:
it holds only the sessions, and ``InferenceSession.run`` is thread-safe.

Decoding follows openai-whisper's greedy path without timestamps: prompt
``<|startofprev|>`` + previous text, then ``<|startoftranscript|>`` (plus
the language and the task, ``<|fr|><|translate|>``, for multilingual models)
and ``<|notimestamps|>``; the model's ``suppress_ids`` at every step and
``suppress_ids_begin`` at the first; the no-speech probability, and for a
stream without a language the language's, read at the
``<|startoftranscript|>`` position (openai-whisper's ``detect_language``,
at no extra cost). Two bounds keep a confused model from looping: a token budget that
grows with the audio's length and a guard that stops at a tail repeated over
and over or a sentence written twice (only one copy is kept).

Audio longer than 30 s (the model's context; the VAD cuts utterances at 20 s,
so this is a fallback) is split into equal windows of at most 30 s, each
prompted with the text before it; a word cut at a window edge may be garbled.

Encoder calls of different streams that fall due within
``encoder_batch_window_ms`` of each other run as one batch (on CUDA by
default; see ``livecap.asr.batching``); the decoder still runs one stream at
a time.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from livecap_models import Manifest, SourceMissing, ensure_model
from livecap_models.build import CONFIG_FILE, TOKENIZER_FILE

from livecap.asr import alignment
from livecap.asr.batching import MicroBatcher
from livecap.asr.biasing import TermMatcher, TermTrie, compile_terms
from livecap.asr.engine import SAMPLE_RATE, EngineOptions, Hypothesis, Word, register_engine
from livecap.asr.features import FRAMES_PER_SECOND, log_mel_spectrogram
from livecap.asr.guardrails import echoes_prompt
from livecap.asr.tokenizer import Task, WhisperTokenizer
from livecap.errors import ModelError
from livecap.language import ENGLISH

logger = logging.getLogger(__name__)

ENGINE_NAME = "whisper-onnx"
MAX_WINDOW_S = 30.0
TOKENS_PER_SECOND_BOUND = 12.0
"""Budget of text tokens per second of audio; fast English speech needs about 6."""
MIN_TOKEN_BUDGET = 16
CUDA_ENCODER_BATCH_WINDOW_MS = 10.0
"""Default batching window on CUDA: small beside CUDA's 0.5 s latency budget,
long enough for rooms whose steps fall due together (16 rooms on an H200 met
every deadline with it; not compared with batching off). Off (0) on the CPU,
where a batch costs what its calls cost."""
MAX_ENCODER_BATCH = 8
"""Bound on one batched encoder run, which holds B windows' activations at once."""
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
"""cuDNN's default, an exhaustive search, benchmarks every new input shape:
each window bucket and batch size stalled its first call for most of a second
(measured on an H200), which live steps pay as missed deadlines."""


@dataclass(frozen=True)
class WindowPolicy:
    """How many seconds of (silence-padded) audio the encoder sees.

    Whisper was trained on 30 s windows. A shorter window is cheaper (the
    encoder's attention is quadratic in its length) but only safe with a
    generous silent margin after the speech: windows that end close to the
    speech make the decoder loop or write a sentence twice. The smallest
    bucket that holds the audio plus ``margin_s`` is used.

    The default (15/20/30 s, 10 s margin) was measured against the full
    window on the evaluation set (see ``models/README.md``): offline WER
    within 0.5 points (-0.34 tiny.en, +0.08 base), no looping on the partial
    hypotheses of growing prefixes, and half the time per partial. A 10 s
    bucket or a margin of 3-8 s made some partials loop.
    ``WindowPolicy((30.0,))`` is the full window.
    """

    buckets_s: tuple[float, ...] = (15.0, 20.0, MAX_WINDOW_S)
    margin_s: float = 10.0

    def frames(self, duration_s: float) -> int:
        """Mel frames (100 per second, even) for audio of ``duration_s``."""
        fitting = [b for b in sorted(self.buckets_s) if duration_s + self.margin_s <= b]
        seconds = fitting[0] if fitting else MAX_WINDOW_S
        return 2 * math.ceil(seconds * FRAMES_PER_SECOND / 2)


@dataclass(frozen=True)
class TimingSnapshot:
    """Inference calls and the seconds they took since the engine started."""

    encoder_calls: int
    """Encoder runs; a batched run counts once, however many windows it held."""
    encoder_seconds: float
    decoder_calls: int
    decoder_seconds: float
    encoder_batches: dict[int, int] = field(default_factory=dict)
    """Histogram of encoder runs by batch size (windows per run): ``{size: runs}``."""

    @property
    def encoder_windows(self) -> int:
        """Windows encoded, i.e. encoder requests, over all runs."""
        return sum(size * runs for size, runs in self.encoder_batches.items())


class _Timings:
    """Thread-safe counters behind ``WhisperOnnx.timings()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = [0, 0.0, 0, 0.0]
        self._batches: dict[int, int] = {}

    def add(self, encoder: bool, seconds: float, batch: int = 1) -> None:
        index = 0 if encoder else 2
        with self._lock:
            self._totals[index] += 1
            self._totals[index + 1] += seconds
            if encoder:
                self._batches[batch] = self._batches.get(batch, 0) + 1

    def snapshot(self) -> TimingSnapshot:
        with self._lock:
            calls_e, seconds_e, calls_d, seconds_d = self._totals
            batches = dict(self._batches)
        return TimingSnapshot(int(calls_e), seconds_e, int(calls_d), seconds_d, batches)


@dataclass(frozen=True)
class _Decoded:
    """Greedy result for one window: text tokens, their probabilities and the
    alignment heads' scores (text tokens + 1 rows)."""

    tokens: list[int]
    probabilities: list[float]
    """The model's own, without any glossary bonus."""
    alignment: np.ndarray
    no_speech_probability: float
    language: str
    language_probability: float | None
    """Of the detected language; None when the caller named it."""
    helped: list[bool]
    """Tokens a glossary bonus chose over the model's own choice (``biasing``)."""


def repeated_tail(tokens: Sequence[int], min_tokens: int = 12, sentence: int = 12, max_ngram: int = 48) -> int | None:
    """Length to cut ``tokens`` to when they end in a loop, keeping one copy;
    ``None`` when they do not. A loop is an n-gram repeated at least three
    times over at least ``min_tokens`` tokens, or one of at least
    ``sentence`` tokens said twice in a row: Whisper's usual failure is to
    write its last sentence again instead of ending."""
    tokens = list(tokens)
    for n in range(1, min(max_ngram, len(tokens) // 2) + 1):
        tail = tokens[-n:]
        repeats = 1
        while (repeats + 1) * n <= len(tokens) and tokens[-(repeats + 1) * n : -repeats * n] == tail:
            repeats += 1
        if (repeats >= 3 and repeats * n >= min_tokens) or (repeats >= 2 and n >= sentence):
            return len(tokens) - (repeats - 1) * n
    return None


def _cuda_works() -> bool:
    """Whether CUDA really runs: onnxruntime-gpu lists the provider even on a
    machine without a GPU, and only a session tells the truth."""
    if _CUDA not in ort.get_available_providers():
        return False
    # onnxruntime-gpu >= 1.21 finds CUDA and cuDNN installed as nvidia-* wheels
    # only when asked to; system-wide libraries are found either way
    with contextlib.suppress(OSError):
        getattr(ort, "preload_dlls", lambda: None)()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    probe.ir_version = 8
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=[_CUDA])
    except Exception:  # onnxruntime raises bare RuntimeError/Fail subclasses here
        return False
    return bool(session.get_providers()[0] == _CUDA)


def _choose_device(device: str, precision: str | None) -> tuple[str, list[str | tuple[str, dict[str, str]]]]:
    """(precision, providers) for ``device`` in auto|cuda|cpu: float16 on CUDA,
    int8 on the CPU, unless ``precision`` says otherwise."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device!r}")
    if device != "cpu" and _cuda_works():
        return precision or "fp16", [(_CUDA, _CUDA_OPTIONS), _CPU]
    if device == "cuda":
        raise ModelError("device 'cuda' requested but onnxruntime cannot run CUDAExecutionProvider here")
    return precision or "int8", [_CPU]


class WhisperOnnx:
    """Engine over one built model (``tiny.en`` or ``base``); see the module docstring.

    ``options.extra["precision"]`` (int8, fp16, fp32) overrides the
    precision chosen for the device. ``options.extra["encoder_batch_window_ms"]``
    sets the encoder batching window (0 = off; default
    ``CUDA_ENCODER_BATCH_WINDOW_MS`` on CUDA, off on the CPU), for batches
    of at most ``max_encoder_batch`` windows. int8 models never batch: their
    activations are quantized with one scale per tensor (onnxruntime's
    ``DynamicQuantizeLinear``), which a batch shares, so a room's encoding,
    and its words, would depend on the rooms batched with it.
    """

    name = ENGINE_NAME

    def __init__(self, options: EngineOptions, window: WindowPolicy | None = None,
                 max_encoder_batch: int = MAX_ENCODER_BATCH) -> None:
        precision, providers = _choose_device(options.device, options.extra.get("precision"))
        cache = Path(options.model_cache) if options.model_cache else None
        try:
            self.manifest: Manifest = ensure_model(options.model, precision, cache)
        except SourceMissing as error:
            raise ModelError(str(error)) from error
        self.model_version = self.manifest.version
        self.window = window or WindowPolicy()
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Several rooms share the cores: idle worker threads must sleep, not spin.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        graphs = self.manifest.graphs
        self._encoder = ort.InferenceSession(self.manifest.path(graphs["encoder"].file), session_options,
                                             providers=providers)
        self._decoder = ort.InferenceSession(self.manifest.path(graphs["decoder"].file), session_options,
                                             providers=providers)
        self.provider: str = self._decoder.get_providers()[0]
        self.device = "cuda" if self.provider == _CUDA else "cpu"
        logger.info("whisper-onnx %s runs on %s with %d thread(s)", self.model_version, self.provider, options.threads)
        dims = self.manifest.dims
        self.tokenizer = WhisperTokenizer(self.manifest.path(TOKENIZER_FILE), dims.multilingual)
        self.languages = frozenset(self.tokenizer.languages)
        self.translates = dims.multilingual
        config = json.loads(self.manifest.path(CONFIG_FILE).read_text())
        special = self.tokenizer.special
        self._suppress = np.array(sorted(set(config["suppress_ids"]) | set(range(special.eot + 1, dims.n_vocab))))
        self._suppress_begin = np.array(config["suppress_ids_begin"])
        self._layers = dims.n_decoder_layers
        cache_type = np.float16 if self.manifest.precision == "fp16" else np.float32
        self._empty_k = np.zeros((1, dims.n_heads, dims.head_dim, 0), dtype=cache_type)
        self._empty_v = np.zeros((1, dims.n_heads, 0, dims.head_dim), dtype=cache_type)
        self._timings = _Timings()
        window_ms = options.extra.get("encoder_batch_window_ms")
        batch_window_ms = float(window_ms) if window_ms else (
            CUDA_ENCODER_BATCH_WINDOW_MS if self.device == "cuda" else 0.0)
        if batch_window_ms and self.manifest.precision == "int8":
            if window_ms:
                logger.warning("encoder batching is off for int8 models (a batch shares one quantization scale)")
            batch_window_ms = 0.0
        self._encode: MicroBatcher[np.ndarray, list[ort.OrtValue]] = MicroBatcher(
            self._encode_batch, batch_window_ms / 1000.0, max_encoder_batch)

    @property
    def warm_up_durations_s(self) -> tuple[float, ...]:
        """Speech lengths the scheduler's warm-up decodes (``scheduler.warm_up``): the longest each
        encoder window holds, so that each window's first, slower call (memory for its
        activations) is made before a room speaks."""
        return tuple(bucket - self.window.margin_s - 0.5 for bucket in sorted(self.window.buckets_s)
                     if bucket - self.window.margin_s > 0.5)

    @property
    def encoder_batch_window_s(self) -> float:
        """How long an encoder call waits for others to batch with (0 = batching off)."""
        return self._encode.window_s if self._encode.enabled else 0.0

    def timings(self) -> TimingSnapshot:
        return self._timings.snapshot()

    def open_stream(self, prompt: str = "", terms: Sequence[str] = (), language: str | None = ENGLISH,
                    task: Task = "transcribe", candidates: Sequence[str] = ()) -> WhisperStream:
        self.tokenizer.sot_sequence(language or ENGLISH, task)  # ValueError for what the model cannot do
        if not {language or ENGLISH, *candidates} <= self.languages:
            raise ValueError(f"{self.model_version} does not speak {language!r} {tuple(candidates)}")
        return WhisperStream(self, prompt, self.compile(tuple(terms)) if terms else None, language, task,
                             tuple(candidates))

    @functools.lru_cache(maxsize=64)  # noqa: B019 - the engine lives as long as the process
    def compile(self, terms: tuple[str, ...]) -> TermTrie:
        """The token trie of ``terms`` (``biasing``), compiled once per glossary."""
        return compile_terms(terms, self.tokenizer.encode, self.tokenizer.decode)

    def transcribe(self, audio: np.ndarray, prompt: str = "", word_timestamps: bool = False,
                   settled: str = "", terms: TermTrie | None = None, language: str | None = ENGLISH,
                   task: Task = "transcribe", candidates: Sequence[str] = ()) -> Hypothesis:
        """Recognise a whole utterance (16 kHz mono float32).

        ``prompt`` is earlier text that biases spelling and style; a window
        whose text merely repeats it is decoded again without it
        (``guardrails.echoes_prompt``). Without
        ``word_timestamps`` every word spans its whole window. ``settled`` is
        leading text taken as given (forced in one decoder call instead of one
        call per token: on a long partial this halves the decoder's time); it
        needs one window and no word timestamps, and is ignored otherwise.
        ``terms`` are glossary terms favoured in decoding (``biasing``).
        ``language``: what is spoken (None: detected on the first window, among
        ``candidates`` if any); ``task``: ``translate`` writes it in English.
        """
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if not len(samples):
            return Hypothesis((), self.name, self.model_version, 1.0, language=language or ENGLISH)
        max_samples = int(MAX_WINDOW_S * SAMPLE_RATE)
        pieces = max(1, math.ceil(len(samples) / max_samples))
        bounds = [round(len(samples) * k / pieces) for k in range(pieces + 1)]
        words: list[Word] = []
        helped: list[bool] = []
        no_speech = 1.0
        detected: float | None = None
        context = prompt
        forced = self.tokenizer.encode(" " + settled.strip()) if settled.strip() and pieces == 1 \
            and not word_timestamps else []
        for start, end in itertools.pairwise(bounds):
            window = functools.partial(self._transcribe_window, samples[start:end], word_timestamps=word_timestamps,
                                       terms=terms, language=language, task=task, candidates=candidates)
            window_words, window_no_speech, decoded = window(context, forced=forced)
            if context and echoes_prompt(" ".join(w.text for w, _ in window_words), context, window_no_speech):
                window_words, window_no_speech, decoded = window("")
            if language is None:  # the first window's detection holds for the utterance
                language, detected = decoded.language, decoded.language_probability
            offset = start / SAMPLE_RATE
            words += [Word(w.text, w.start + offset, w.end + offset, w.confidence) for w, _ in window_words]
            helped += [h for _, h in window_words]
            # an utterance is speech if any of its windows is
            no_speech = min(no_speech, window_no_speech)
            context = " ".join([context] + [w.text for w, _ in window_words]).strip()
        # The guardrails judge how sure the model was of the words it chose itself: a term's
        # tokens are rare to the model alone, and would drag a real sentence under their bound.
        unhelped = [w.confidence for w, h in zip(words, helped, strict=True) if not h]
        confidence = _geometric_mean(unhelped) if any(helped) and unhelped else None
        return Hypothesis(tuple(words), self.name, self.model_version, no_speech, confidence,
                          language or ENGLISH, detected)

    def _transcribe_window(self, audio: np.ndarray, prompt: str, word_timestamps: bool,
                           forced: Sequence[int] = (), terms: TermTrie | None = None,
                           language: str | None = ENGLISH, task: Task = "transcribe", candidates: Sequence[str] = ()
                           ) -> tuple[list[tuple[Word, bool]], float, _Decoded]:
        """The window's words, each with whether a glossary bonus chose any of its tokens, its
        no-speech probability, and the decoding."""
        duration = len(audio) / SAMPLE_RATE
        mel = log_mel_spectrogram(audio, self.window.frames(duration), self.manifest.dims.n_mels)
        cross = self._encode(mel)
        prompt_tokens = self.tokenizer.encode(" " + prompt.strip()) if prompt.strip() else []
        budget = max(MIN_TOKEN_BUDGET, math.ceil(duration * TOKENS_PER_SECOND_BOUND))
        decoded = self._decode(cross, prompt_tokens, min(budget, self.manifest.dims.n_text_ctx // 2), forced, terms,
                               language, task, candidates)
        spans = alignment.word_spans([self.tokenizer.starts_word(t) for t in decoded.tokens])
        texts = [self.tokenizer.decode(decoded.tokens[a:b]).strip() for a, b in spans]
        if word_timestamps and spans:
            audio_frames = math.ceil(len(audio) * alignment.ENCODER_FRAMES_PER_SECOND / SAMPLE_RATE)
            times = alignment.token_boundaries(decoded.alignment, audio_frames)
            starts, ends = alignment.clamp_long_words(
                np.array([times[a] for a, _ in spans]), np.array([times[b] for _, b in spans]), texts)
        else:
            starts, ends = np.zeros(len(spans)), np.full(len(spans), duration)
        words = [
            (Word(text, float(min(start, duration)), float(min(end, duration)),
                  float(np.mean(decoded.probabilities[a:b]))), any(decoded.helped[a:b]))
            for (a, b), text, start, end in zip(spans, texts, starts, ends, strict=True)
            if text
        ]
        return words, decoded.no_speech_probability, decoded

    def _encode_batch(self, mels: list[np.ndarray]) -> list[list[ort.OrtValue]]:
        """Cross-attention keys and values of every decoder layer for each
        ``[n_mels, frames]`` mel, on the engine's device, in one encoder run.

        Mels of different lengths are padded with 0.0 to the longest: the
        features are already 0.0 past the audio (``log_mel_spectrogram``), so a
        shorter request is encoded exactly as if ``WindowPolicy`` had chosen
        the longer bucket for it, which is as safe (a larger silent margin).
        """
        frames = max(mel.shape[-1] for mel in mels)
        batch = np.zeros((len(mels), mels[0].shape[0], frames), dtype=np.float32)
        for row, mel in zip(batch, mels, strict=True):
            row[:, : mel.shape[-1]] = mel
        names = self._cross_names()
        began = time.perf_counter()
        if len(mels) == 1:
            binding = self._encoder.io_binding()
            binding.bind_cpu_input("mel", batch)
            for name in names:
                binding.bind_output(name, self.device)
            self._encoder.run_with_iobinding(binding)
            self._timings.add(True, time.perf_counter() - began)
            return [list(binding.get_outputs())]
        # onnxruntime's Python API cannot slice an OrtValue on the device, so a
        # batch's outputs come to the host and each row goes back: on CUDA two
        # copies of B x 2 x layers x heads x head_dim x frames/2 values (about
        # 9 MB per window for tiny.en fp16 at 30 s: about 1 ms each way over PCIe, estimated),
        # small beside the encoder run they share. On the CPU no copy is made.
        outputs = self._encoder.run(names, {"mel": batch})
        self._timings.add(True, time.perf_counter() - began, len(mels))
        return [[ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(output[i : i + 1]), self.device, 0)
                 for output in outputs] for i in range(len(mels))]

    def _cross_names(self) -> list[str]:
        return [f"cross_{kind}_{i}" for i in range(self._layers) for kind in ("k", "v")]

    def _step(self, tokens: list[int], cache: list[ort.OrtValue], cross: list[ort.OrtValue]
              ) -> tuple[np.ndarray, np.ndarray, list[ort.OrtValue]]:
        """One decoder call: (last position's logits, its alignment scores, the new cache)."""
        binding = self._decoder.io_binding()
        binding.bind_cpu_input("tokens", np.array([tokens], dtype=np.int64))
        for i in range(self._layers):
            binding.bind_ortvalue_input(f"past_k_{i}", cache[2 * i])
            binding.bind_ortvalue_input(f"past_v_{i}", cache[2 * i + 1])
        for name, value in zip(self._cross_names(), cross, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        binding.bind_output("alignment_qk", "cpu")
        for i in range(self._layers):
            binding.bind_output(f"present_k_{i}", self.device)
            binding.bind_output(f"present_v_{i}", self.device)
        began = time.perf_counter()
        self._decoder.run_with_iobinding(binding)
        self._timings.add(False, time.perf_counter() - began)
        logits, scores, *present = binding.get_outputs()
        return logits.numpy()[0], scores.numpy()[0], present

    def _empty_cache(self) -> list[ort.OrtValue]:
        return [ort.OrtValue.ortvalue_from_numpy(empty, self.device, 0)
                for _ in range(self._layers) for empty in (self._empty_k, self._empty_v)]

    def _decode(self, cross: list[ort.OrtValue], prompt_tokens: list[int], budget: int,
                forced: Sequence[int] = (), terms: TermTrie | None = None, language: str | None = ENGLISH,
                task: Task = "transcribe", candidates: Sequence[str] = ()) -> _Decoded:
        """Greedy decoding after the ``forced`` text tokens; alignment rows
        exist only for what is decoded, so word times need ``forced`` empty.
        ``terms`` are favoured as ``biasing`` describes. ``language`` None:
        the most probable language token at ``<|startoftranscript|>`` (among
        ``candidates``, if any: their probabilities renormalised)."""
        special, tokenizer = self.tokenizer.special, self.tokenizer
        max_prompt = self.manifest.dims.n_text_ctx // 2 - 1
        prefix = [special.start_of_prev, *prompt_tokens[-max_prompt:]] if prompt_tokens else []
        # First call ends at <|startoftranscript|>: its logits give the no-speech probability.
        logits, _, cache = self._step([*prefix, special.sot], self._empty_cache(), cross)
        no_speech = float(_softmax(logits)[special.no_speech])
        detected: float | None = None
        if language is None:  # as openai-whisper's detect_language: without the prompt, the room's
            # earlier captions, which would carry a wrong guess over to every later utterance
            codes = list(candidates) or list(self.tokenizer.languages)
            detection = self._step([special.sot], self._empty_cache(), cross)[0] if prefix else logits
            odds = _softmax(detection[[self.tokenizer.languages[code] for code in codes]])
            best = int(np.argmax(odds))
            language, detected = codes[best], float(odds[best])
        logits, scores, cache = self._step([*self.tokenizer.sot_sequence(language, task)[1:], special.no_timestamps,
                                            *forced], cache, cross)
        tokens = list(forced)
        probabilities = [1.0] * len(forced)
        helped = [False] * len(forced)
        rows = [scores]
        matcher = TermMatcher(terms, primed=terms.first_tokens_in(prompt_tokens)) \
            if terms is not None and len(terms) > 1 else None
        mark: tuple[np.ndarray, list[ort.OrtValue]] | None = None
        """Logits and cache where the term being followed began: where an undo returns to."""
        while len(tokens) < budget:
            raw = logits
            probability = _softmax(raw[: special.eot])  # the model's own, before suppression and bonuses
            logits = logits.copy() if matcher is not None else logits
            logits[self._suppress] = -np.inf
            if not tokens:
                logits[self._suppress_begin] = -np.inf
            token = int(np.argmax(logits))
            cost = 0.0
            if matcher is not None:
                after_word = bool(tokens) and tokenizer.after_word(tokens[-1])
                if bonuses := matcher.bonuses(len(tokens), after_word):
                    ids = np.fromiter(bonuses, dtype=np.int64, count=len(bonuses))
                    logits[ids] += np.fromiter(bonuses.values(), dtype=np.float32, count=len(bonuses))
                chosen, token = token, int(np.argmax(logits))
                cost = float(raw[chosen] - raw[token]) if token != chosen else 0.0
                if matcher.advance(len(tokens), token, cost, after_word, tokenizer.ends_word(token)):
                    assert mark is not None
                    logits, cache = mark
                    del tokens[matcher.undo_to :], probabilities[matcher.undo_to :], helped[matcher.undo_to :]
                    del rows[matcher.undo_to - len(forced) + 1 :]
                    mark = None
                    continue
                if matcher.begun_at == len(tokens):
                    mark = (raw, cache)
            if token == special.eot:
                break
            tokens.append(token)
            probabilities.append(float(probability[token]))
            helped.append(cost > 0)
            logits, scores, cache = self._step([token], cache, cross)
            rows.append(scores)
            if (cut := repeated_tail(tokens)) is not None:
                tokens, probabilities, helped, rows = tokens[:cut], probabilities[:cut], helped[:cut], rows[: cut + 1]
                break
        return _Decoded(tokens, probabilities, np.stack(rows), no_speech, language, detected, helped)


@register_engine(ENGINE_NAME)
def create_engine(options: EngineOptions) -> WhisperOnnx:
    """The registry's factory: ``ENGINES["whisper-onnx"](options)``."""
    return WhisperOnnx(options)


def _geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(max(v, 1e-6)) for v in values) / len(values))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return np.asarray(shifted / shifted.sum())


class WhisperStream:
    """One utterance: audio accumulates; each result re-decodes all of it."""

    def __init__(self, engine: WhisperOnnx, prompt: str, terms: TermTrie | None, language: str | None,
                 task: Task, candidates: tuple[str, ...] = ()) -> None:
        self._engine = engine
        self._prompt = prompt
        self._terms = terms
        self._language = language
        self._task = task
        self._candidates = candidates
        self._pieces: list[np.ndarray] = []

    def feed(self, audio: np.ndarray) -> None:
        self._pieces.append(np.array(audio, dtype=np.float32).reshape(-1))

    def _audio(self) -> np.ndarray:
        if len(self._pieces) != 1:
            self._pieces = [np.concatenate(self._pieces) if self._pieces else np.zeros(0, dtype=np.float32)]
        return self._pieces[0]

    def hypothesis(self, settled: str = "") -> Hypothesis:
        return self._engine.transcribe(self._audio(), self._prompt, settled=settled, terms=self._terms,
                                       language=self._language, task=self._task, candidates=self._candidates)

    def finish(self) -> Hypothesis:
        return self._engine.transcribe(self._audio(), self._prompt, word_timestamps=True, terms=self._terms,
                                       language=self._language, task=self._task, candidates=self._candidates)
