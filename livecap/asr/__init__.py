"""Speech recognition: engines, the streaming policy and the scheduler.

Importing this package registers the built-in engines in ``ENGINES``."""

from livecap.asr import pocketsphinx_engine, whisper_onnx  # noqa: F401
