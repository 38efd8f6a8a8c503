"""All server settings, in one place.

Each setting is a field of ``ServerOptions`` with a documented default. A
value is taken from, in order of precedence: a command-line flag
(``--endpoint-ms 700``), an environment variable (``LIVECAP_ENDPOINT_MS=700``),
a TOML config file (``endpoint_ms = 700``, file given by ``--config`` or
``LIVECAP_CONFIG``), then the default. ``livecap serve --help`` lists them all
and README.md's table is checked against this module by a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import ssl
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from livecap.asr.faults import MAX_DELAY_S, Faults
from livecap.asr.scheduler import SchedulerOptions
from livecap.asr.streaming import StreamingOptions
from livecap.ingest import IngestLimits
from livecap.vad import VadOptions

_VAD, _STREAMING, _LIMITS, _SCHEDULER = VadOptions(), StreamingOptions(), IngestLimits(), SchedulerOptions()
ENV_PREFIX = "LIVECAP_"


def default_data_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "livecap"


def _setting(default: Any, help: str, secret: bool = False, shown: str | None = None) -> Any:
    """A field with its help text; ``shown`` is the default as documented when
    the real one depends on the machine."""
    return field(default=default, metadata={"help": help, "secret": secret,
                                            "shown": "***" if secret else shown or str(default)})


@dataclass(frozen=True)
class ServerOptions:
    # network
    host: str = _setting("127.0.0.1", "address to listen on (0.0.0.0 for all interfaces)")
    port: int = _setting(8765, "TCP port (0 picks a free one)")
    public_url: str = _setting("", "URL attendees use to reach the server, for links and QR codes "
                                   "(default: http://HOST:PORT)")
    tls_cert: Path | None = _setting(None, "PEM certificate (chain) to serve HTTPS and WSS; browsers allow the "
                                           "speaker page's microphone only over HTTPS, except on localhost")
    tls_key: Path | None = _setting(None, "PEM private key of tls_cert (default: the key inside tls_cert)")
    # security
    secret: str = _setting("", "server secret from which all room keys derive "
                               "(default: generated once and kept in DATA_DIR/secret)", secret=True)
    viewer_keys: bool = _setting(False, "require a viewer key to read captions")
    data_dir: Path = _setting(default_data_dir(), "where transcripts (finals, and the settled words of the "
                                                  "utterance in progress) and the secret are kept",
                              shown="$XDG_STATE_HOME/livecap or ~/.local/state/livecap")
    recording_retention_days: float = _setting(7.0, "recordings of rooms whose recording an operator switched on "
                                                    "are deleted after this many days")
    # recognition
    engine: str = _setting("whisper-onnx", "primary speech engine: whisper-onnx or pocketsphinx")
    fallback_engine: str = _setting("pocketsphinx", "engine that serves when the primary misses its deadline "
                                                    "(pocketsphinx or none)")
    latency_budget_s: float = _setting(0.0, "deadline of each decoding step, from audio arrival to caption "
                                            "(seconds; 0 = by device: 1.0 on CPU, 0.5 on CUDA)")
    primary_retry_s: float = _setting(_SCHEDULER.retry_after_s,
                                      "after a miss, a room tries the primary again this much later (seconds); "
                                      "doubles per failed try up to 12 times this")
    model: str = _setting("tiny.en", "Whisper model for whisper-onnx: tiny.en or base")
    multilingual_model: str = _setting("base", "Whisper model for speech in other languages than English, language "
                                               "detection (auto) and translation; tiny.en speaks English only")
    languages: str = _setting("", "load the multilingual model at start-up, before the server is ready, for rooms in "
                                  "these languages (comma-separated Whisper codes, or auto); empty: on first need")
    device: Literal["auto", "cpu", "cuda"] = _setting("auto", "inference device; auto uses CUDA when a session gets it")
    model_cache: Path | None = _setting(None, "directory of built ONNX models",
                                        shown="$LIVECAP_MODEL_CACHE or ~/.cache/livecap/models")
    inference_threads: int = _setting(max(1, min(4, os.cpu_count() or 1)),
                                      "threads of the shared inference executor (calls that run at once)",
                                      shown="CPU cores, at most 4")
    engine_threads: int = _setting(0, "threads one engine call may use (0 = CPU cores / inference_threads, at "
                                      "least 1); more than that oversubscribes the cores when all calls run at once")
    encoder_batch_window_ms: float = _setting(
        -1.0, "whisper-onnx: encoder calls of different rooms due within this window run as one batch, "
              "padded to a common length, at most 8 and at most inference_threads per batch (ms; 0 = off, "
              "-1 = by device: 10 on CUDA, off on CPU, where a batch gains nothing; int8 models never batch)")
    step_s: float = _setting(_STREAMING.step_s, "re-decode an utterance after this much new audio (seconds)")
    glossary: str = _setting("", "names and jargon spelled as written, comma-separated (\"Sintra, OBS, Kubernetes\"): "
                                 "the server-wide default of every room's glossary (README.md, Glossaries)")
    # voice activity detection
    vad_aggressiveness: int = _setting(_VAD.aggressiveness, "webrtcvad mode 0-3 (3 rejects the most noise)")
    onset_ms: int = _setting(_VAD.onset_ms, "voiced audio needed to start an utterance (ms)")
    endpoint_ms: int = _setting(_VAD.endpoint_ms, "silence that ends an utterance and makes it final (ms)")
    max_utterance_s: float = _setting(_VAD.max_utterance_s, "utterances are cut at this length (seconds)")
    # limits
    max_message_bytes: int = _setting(_LIMITS.max_message_bytes, "largest accepted WebSocket message")
    max_audio_rate: float = _setting(_LIMITS.max_audio_rate, "sustained audio seconds per second a publisher may send")
    max_rooms: int = _setting(100, "rooms a publisher holds at once (one more publisher is refused with "
                              "server_busy); a room whose publisher left gives its place up when it is needed")
    max_viewer_rooms: int = _setting(100, "rooms with nothing to show held for keyless viewers (no publisher "
                                     "yet, no transcript: a phone waiting for a talk, or an invented name); "
                                     "counted apart, so viewers never take a publisher's place")
    max_publishers: int = _setting(_SCHEDULER.max_publishers,
                                   "publishers streaming at once; beyond it 'start' is refused with server_busy "
                                   "(0 = as many as the inference threads serve within the latency budget, "
                                   "measured at start-up and while serving)")
    max_viewers_per_room: int = _setting(2000, "viewer connections per room")
    max_connections_per_ip: int = _setting(1000, "WebSocket connections from one IP address (a venue's phones "
                                                 "may share one NAT address)")
    idle_timeout_s: float = _setting(60.0, "close a publisher that sends nothing for this long (seconds)")
    viewer_backlog: int = _setting(200, "captions queued for a viewer before it is dropped as too slow")
    viewer_max_lag_s: float = _setting(10.0, "a viewer whose oldest caption not yet delivered (acked by a page, else "
                                             "confirmed by a pong) is older than this is closed with "
                                             "viewer_too_slow and resumes; one that does not take the close either "
                                             "is cut off as long again later (seconds)")
    heartbeat_s: float = _setting(20.0, "WebSocket ping interval when a peer sends nothing; one that does not answer "
                                        "within half of it is dropped (seconds)")
    # scale-out
    redis: str = _setting("", "Redis URL (redis://host:6379/0) shared by several livecap nodes: rooms, seqs and "
                              "captions are shared, a publisher may stream to any node and viewers watch from "
                              "any node (README.md, Scale-out); empty: this node alone")
    node: str = _setting("", "this node's name in the cluster, unique among the nodes (default: host name and port)")
    lease_s: float = _setting(3.0, "how long a room's owner holds its lease in Redis unrenewed (it renews it 5 times "
                                   "a second): a dead node's rooms go to a publisher reconnecting elsewhere at most "
                                   "this long after (seconds)")
    redis_retention_days: float = _setting(30.0, "a room's finals, corrections and translations stay in Redis this "
                                                 "long after its last line (partials: only the latest events)")
    # fault injection (tests and demos of the latency budget only)
    inject_primary_delay_s: float = _setting(0.0, "fault injector: delay added to every primary decoding step "
                                             f"(0-{MAX_DELAY_S:g} s)")
    inject_primary_failure_rate: float = _setting(0.0, "fault injector: share of primary steps that raise")
    # demo and logs
    demo: bool = _setting(False, "play a public-domain recording in a loop into the room 'demo'")
    log_format: Literal["text", "json"] = _setting("text", "log line format")
    log_level: Literal["debug", "info", "warning", "error"] = _setting("info", "log level")

    def __post_init__(self) -> None:
        Faults(self.inject_primary_delay_s, self.inject_primary_failure_rate)  # ValueError when out of range

    @property
    def node_name(self) -> str:
        """This node's name in a cluster: ``node``, else the host's name and the port (and, for
        port 0, the process id)."""
        return self.node or f"{socket.gethostname()}:{self.port or os.getpid()}"

    @property
    def vad(self) -> VadOptions:
        soft_share = _VAD.soft_max_utterance_s / _VAD.max_utterance_s
        return dataclasses.replace(_VAD, aggressiveness=self.vad_aggressiveness, onset_ms=self.onset_ms,
                                   endpoint_ms=self.endpoint_ms, max_utterance_s=self.max_utterance_s,
                                   soft_max_utterance_s=self.max_utterance_s * soft_share)

    @property
    def threads_per_call(self) -> int:
        return self.engine_threads or max(1, (os.cpu_count() or 1) // self.inference_threads)

    @property
    def engine_extra(self) -> dict[str, str]:
        """Engine-specific settings for ``EngineOptions.extra``; engines ignore what they do not use."""
        extra = {}
        if self.encoder_batch_window_ms >= 0:
            extra["encoder_batch_window_ms"] = str(self.encoder_batch_window_ms)
        return extra

    def scheduler(self, device: str) -> SchedulerOptions:
        """Scheduler settings once the primary's device is known."""
        budget = self.latency_budget_s or (0.5 if device == "cuda" else 1.0)
        return SchedulerOptions(latency_budget_s=budget, workers=self.inference_threads,
                                retry_after_s=self.primary_retry_s, max_retry_after_s=12 * self.primary_retry_s,
                                max_publishers=self.max_publishers)

    @property
    def streaming(self) -> StreamingOptions:
        return dataclasses.replace(_STREAMING, step_s=self.step_s)

    @property
    def ingest_limits(self) -> IngestLimits:
        return dataclasses.replace(_LIMITS, max_message_bytes=self.max_message_bytes,
                                   max_audio_rate=self.max_audio_rate)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context to serve HTTPS/WSS with, or None for plain HTTP."""
        if self.tls_cert is None:
            if self.tls_key is not None:
                raise ValueError("tls_key is set but tls_cert is not")
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def masked(self) -> dict[str, Any]:
        """Effective settings for the start-up log, secrets replaced by '***'."""
        return {f.name: ("***" if f.metadata.get("secret") and getattr(self, f.name) else getattr(self, f.name))
                for f in fields(self)}


def _types() -> dict[str, Any]:
    return get_type_hints(ServerOptions)


def _convert(name: str, value: Any) -> Any:
    """Turn a string (env, CLI) or TOML value into the field's type."""
    kind = _types()[name]
    if kind is bool and isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{name}: expected a boolean, got {value!r}")
        return value.lower() in ("1", "true", "yes", "on")
    if kind in (int, float, str):
        return kind(value)
    if kind is Path or kind == Path | None:
        return Path(value).expanduser() if value not in ("", None) else None
    choices = get_args(kind)
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags stay None so lower layers show through."""
    parser.add_argument("--config", type=Path, help=f"TOML config file (env {ENV_PREFIX}CONFIG)")
    for f in fields(ServerOptions):
        flag = "--" + f.name.replace("_", "-")
        help = f"{f.metadata['help']} [default: {f.metadata['shown']}]"
        if _types()[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            parser.add_argument(flag, default=None, metavar=f.name.upper(), help=help)


def load_options(arguments: argparse.Namespace | None = None,
                 environ: Mapping[str, str] = os.environ) -> ServerOptions:
    """CLI flags > environment > config file > defaults."""
    values: dict[str, Any] = {}
    config_path = getattr(arguments, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        with open(config_path, "rb") as file:
            for name, value in tomllib.load(file).items():
                if name not in _types():
                    raise ValueError(f"{config_path}: unknown setting {name!r}")
                values[name] = _convert(name, value)
    for f in fields(ServerOptions):
        if (env := environ.get(ENV_PREFIX + f.name.upper())) is not None:
            values[f.name] = _convert(f.name, env)
        if arguments is not None and (flag := getattr(arguments, f.name, None)) is not None:
            values[f.name] = _convert(f.name, flag)
    return ServerOptions(**values)


def settings_table() -> Sequence[tuple[str, str, str, str]]:
    """(flag, env, default, help) rows for the README."""
    return [("--" + f.name.replace("_", "-"), ENV_PREFIX + f.name.upper(), f.metadata["shown"], f.metadata["help"])
            for f in fields(ServerOptions)]
