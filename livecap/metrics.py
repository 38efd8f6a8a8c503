"""Every Prometheus metric livecap exports, defined in one place.

Names and units follow the Prometheus naming guide (base units: seconds,
bytes; ``_total`` for counters). Each application gets its own
``CollectorRegistry``, so several servers can live in one process (tests).
Room names are user-controlled, so the ``room`` label is bounded: the first
``MAX_ROOM_LABELS`` rooms keep their name and later ones share ``"other"``;
a flood of rooms cannot explode the number of series. Only rooms a publisher
took ask for a name (``Room.take_publisher_place``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import Metric

from livecap import __version__

MAX_ROOM_LABELS = 50
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
HOP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self._rooms: set[str] = set()
        # recognition
        self.step_seconds = Histogram("livecap_decode_step_seconds", "Time of one recognizer call (step or final)",
                                      ["engine", "kind"], buckets=STEP_BUCKETS, registry=registry)
        self.deadline_misses = Counter("livecap_deadline_misses_total",
                                       "Primary steps that missed (or were predicted to miss) their deadline",
                                       ["engine", "reason"], registry=registry)
        self.engine_failures = Counter("livecap_engine_failures_total", "Recognizer calls that raised",
                                       ["engine"], registry=registry)
        self.fallback_steps = Counter("livecap_fallback_steps_total", "Recognizer calls served by the fallback",
                                      ["kind"], registry=registry)
        self.utterances = Counter("livecap_utterances_total", "Finished utterances by the engine of their final",
                                  ["room", "engine"], registry=registry)
        self.engine_healthy = Gauge("livecap_engine_healthy", "1 while the engine is considered healthy",
                                    ["engine"], registry=registry)
        self.queue_depth = Gauge("livecap_executor_queue_depth", "Recognizer calls waiting for an inference thread",
                                 ["executor"], registry=registry)
        self.queue_wait_seconds = Histogram("livecap_executor_wait_seconds", "Time a call waited for a thread",
                                            ["executor"], buckets=STEP_BUCKETS, registry=registry)
        self.publisher_capacity = Gauge("livecap_publisher_capacity",
                                        "Publishers admitted at once: measured from the decode step cost, "
                                        "or max_publishers", registry=registry)
        self.step_cost_seconds = Gauge("livecap_decode_step_cost_seconds",
                                       "Measured engine time (without waits for a CPU) of a primary decode step, "
                                       "behind the capacity", registry=registry)
        self.publishers = Gauge("livecap_publishers", "Publishers streaming now", registry=registry)
        self.suppressed = Counter("livecap_suppressed_hypotheses_total",
                                  "Hypotheses dropped by guardrails (hallucinations on silence or noise), "
                                  "and utterances not shown because they held no speech",
                                  ["reason", "kind"], registry=registry)
        # latency as people see it
        self.word_lag_seconds = Histogram("livecap_word_lag_seconds",
                                          "Server side: first publication of a final's word at its position minus "
                                          "the arrival of the audio where the word ends",
                                          ["room", "engine"], buckets=LATENCY_BUCKETS, registry=registry)
        self.final_lag_seconds = Histogram("livecap_final_lag_seconds",
                                           "Final caption sent minus arrival of the utterance's last voiced frame",
                                           ["room", "engine"], buckets=LATENCY_BUCKETS, registry=registry)
        self.speech_to_screen_seconds = Histogram(
            "livecap_speech_to_screen_seconds",
            "Viewer acknowledged rendering minus arrival of the newest audio the caption covers",
            ["room"], buckets=LATENCY_BUCKETS, registry=registry)
        # traffic
        self.audio_seconds = Counter("livecap_audio_seconds_total", "Audio ingested", ["room"], registry=registry)
        self.captions_sent = Counter("livecap_captions_total", "Caption events published", ["room", "kind"],
                                     registry=registry)
        self.connections = Gauge("livecap_connections", "Open WebSocket connections", ["role"], registry=registry)
        self.viewers = Gauge("livecap_viewers", "Viewers connected to a room", ["room"], registry=registry)
        self.rooms = Gauge("livecap_rooms", "Rooms held in memory", registry=registry)
        self.partials_coalesced = Counter("livecap_viewer_partials_coalesced_total",
                                          "Queued partials replaced by a newer event before a viewer got them",
                                          ["room"], registry=registry)
        self.publisher_warnings = Counter("livecap_publisher_warnings_total",
                                          "Warnings sent to publishers about their audio, by code", ["code"],
                                          registry=registry)
        self.disconnects = Counter("livecap_disconnects_total", "Connections closed by the server, by error code",
                                   ["code"], registry=registry)
        self.refusals = Counter("livecap_refusals_total", "Requests refused without closing anything, by error code",
                                ["code"], registry=registry)
        self.masked_words = Counter("livecap_masked_words_total", "Words of finals masked by the room's profanity mask",
                                    ["room"], registry=registry)
        self.glossary_terms = Counter("livecap_glossary_terms_total",
                                      "Glossary terms in finals, spelled as in the room's glossary", ["room"],
                                      registry=registry)
        self.corrections = Counter("livecap_corrections_total", "Lines an editor corrected, by what produced them",
                                   ["engine", "model_version"], registry=registry)
        self.flags = Counter("livecap_caption_flags_total", "Lines a viewer flagged as wrong (one per viewer and line)",
                             ["engine", "model_version"], registry=registry)
        self.rating_stars = Histogram("livecap_caption_rating_stars",
                                      "Viewers' 1-5 star ratings of a room's captions, by the model version "
                                      "of its latest final", ["model_version"], buckets=(1, 2, 3, 4, 5),
                                      registry=registry)
        self.languages_locked = Counter("livecap_languages_locked_total",
                                        "Auto rooms whose language was detected and locked, by language",
                                        ["language"], registry=registry)
        self.language_lock_speech_seconds = Histogram(
            "livecap_language_lock_speech_seconds", "Speech an auto room had heard when its language locked",
            buckets=(1, 2, 3, 5, 8, 13, 20, 30, 60), registry=registry)
        self.translation_lag_seconds = Histogram(
            "livecap_translation_lag_seconds", "Last voiced frame of an utterance to its translation's publication",
            ["room"], buckets=LATENCY_BUCKETS, registry=registry)
        # room outputs (livecap.outputs)
        output_labels = ["room", "output", "kind"]
        self.output_sent = Counter("livecap_output_sent_total", "Requests a room output's destination accepted",
                                   output_labels, registry=registry)
        self.output_failures = Counter("livecap_output_failures_total",
                                       "Requests to a room output's destination that failed (each retry counts)",
                                       output_labels, registry=registry)
        self.output_dropped = Counter("livecap_output_dropped_total",
                                      "Lines an output gave up: its queue overflowed, or it was stopped or removed "
                                      "with lines undelivered", [*output_labels, "reason"], registry=registry)
        self.output_state = Gauge("livecap_output_state", "A room output's health: 0 ok, 1 retrying, 2 failing",
                                  output_labels, registry=registry)
        self.output_lag_seconds = Histogram("livecap_output_lag_seconds",
                                            "Caption published to its destination accepting it", ["kind"],
                                            buckets=LATENCY_BUCKETS, registry=registry)
        # scale-out (--redis)
        self.cluster_reachable = Gauge("livecap_cluster_redis_reachable",
                                       "1 while this node reaches the cluster's Redis", registry=registry)
        self.cluster_pending = Gauge("livecap_cluster_pending_writes",
                                     "Events and seq reservations this node owes Redis (it is out or slow)",
                                     registry=registry)
        self.cluster_events_written = Counter("livecap_cluster_events_written_total",
                                              "Caption events this node wrote to the shared log", registry=registry)
        self.cluster_events_skipped = Counter("livecap_cluster_events_skipped_total",
                                              "Events not written because the log held their seq already (a retry "
                                              "that had got through, or a node that had lost its lease)",
                                              registry=registry)
        self.cluster_hop_seconds = Histogram("livecap_cluster_hop_seconds",
                                             "From an event made on its room's node to its arrival on this one",
                                             buckets=HOP_BUCKETS, registry=registry)
        self.build_info = Gauge("livecap_build_info", "Always 1; the version in a label", ["version"],
                                registry=registry)
        self.build_info.labels(__version__).set(1)

    def room(self, name: str) -> str:
        """The bounded label value for a room."""
        if name in self._rooms:
            return name
        if len(self._rooms) < MAX_ROOM_LABELS:
            self._rooms.add(name)
            return name
        return "other"


class NodeLabelled:
    """A registry's metrics with a ``node`` label on every sample (``--redis``): one scrape
    configuration, or a federating Prometheus, sums the nodes without relabelling."""

    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        self.registry = registry
        self.node = node

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [sample._replace(labels={**sample.labels, "node": self.node})
                              for sample in family.samples]
            yield family
