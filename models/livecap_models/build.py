"""Reproducible builds of the ONNX models into a cache directory.

Each model and precision gets its own directory (``<cache>/tiny.en-int8``).
A build writes into a temporary sibling and renames it into place only once
every file and the manifest are written, so an interrupted build never leaves
a half model; a file lock keeps two processes from building the same model at
once. Precisions:

* ``int8``: float32 graphs with dynamic int8 quantization (onnxruntime's
  ``quantize_dynamic``) of the weights of the MatMuls and of the embedding,
  for the CPU; see ``FLOAT_WEIGHTS`` for the two kinds of layer left in float;
* ``fp16``: float16 weights and arithmetic, for CUDA, where onnxruntime does
  not run int8 ``MatMulInteger`` natively;
* ``fp32``: the unquantized reference.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import QuantType, quantize_dynamic

from livecap_models import ct2, whisper_graph
from livecap_models.catalog import (
    ModelSource,
    distribution_versions,
    read_weights,
    resource_paths,
    source_for,
    weights_sha256,
)
from livecap_models.manifest import BUILDER_VERSION, MANIFEST_FILE, FileEntry, GraphIO, Manifest, Source

PRECISIONS = ("int8", "fp16", "fp32")
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
"""CTranslate2's ``config.json``: suppressed tokens and alignment heads."""

FLOAT_WEIGHTS = {"encoder": "/self_attention/linear_0/weight", "decoder": "/ffn/linear_1/weight"}
"""Weights (by name suffix) that the int8 build leaves in float32: the
encoder's fused QKV projection and the decoder's second FFN layer. Measured
on the evaluation set, quantizing every layer doubled the KL divergence of
the next-token distribution from float32 (tiny.en 0.0147 vs 0.0070, base
0.038 vs 0.021) and cost 0.7-0.8 points of WER, while keeping these two in
float costs 5-10 % speed and 12 MB (tiny.en) / 33 MB (base)."""

Progress = Callable[[str, float], None]
"""Called with (stage, overall fraction done in [0, 1])."""


def default_cache_dir() -> Path:
    """``$LIVECAP_MODEL_CACHE``, else ``$XDG_CACHE_HOME/livecap/models``, else ``~/.cache/livecap/models``."""
    if explicit := os.environ.get("LIVECAP_MODEL_CACHE"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "livecap" / "models"


def ensure_model(
    name: str,
    precision: str = "int8",
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    *,
    force: bool = False,
) -> Manifest:
    """The built model, building it first unless a build from the same source
    weights and builder version is already in the cache (or ``force``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    source = source_for(name)
    cache = cache_dir or default_cache_dir()
    target = cache / f"{name}-{precision}"
    source_sha = weights_sha256(source)
    if not force and (current := _up_to_date(target, source_sha)):
        return current
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{target.name}.lock"):
        if not force and (current := _up_to_date(target, source_sha)):
            return current  # another process built it while we waited
        return _build(source, precision, source_sha, target, progress or (lambda stage, fraction: None))


def list_models(cache_dir: Path | None = None) -> list[Manifest]:
    """Every built model in the cache whose manifest can be read."""
    cache = cache_dir or default_cache_dir()
    manifests = []
    for directory in sorted(cache.glob("*")) if cache.is_dir() else []:
        if directory.name.startswith(".") or not (directory / MANIFEST_FILE).is_file():
            continue
        try:
            manifests.append(Manifest.load(directory))
        except (OSError, ValueError):
            continue
    return manifests


def _up_to_date(directory: Path, source_sha: str) -> Manifest | None:
    try:
        manifest = Manifest.load(directory)
    except (OSError, ValueError):
        return None
    fresh = manifest.source.sha256 == source_sha and manifest.builder_version == BUILDER_VERSION
    # sizes only: hashing every file on each start is what ``verify`` is for
    intact = all(_size(manifest.path(f.path)) == f.size for f in manifest.files)
    return manifest if fresh and intact else None


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save(model: onnx.ModelProto, path: Path, precision: str, keep_float: str) -> None:
    """Write ``model``, quantized for ``int8`` except MatMuls with a weight named ``*keep_float``."""
    if precision != "int8":
        onnx.save(model, path)
        return
    excluded = [node.name for node in model.graph.node
                if node.op_type == "MatMul" and any(name.endswith(keep_float) for name in node.input)]
    # Only weight matrices are quantized (MatMulConstBOnly): quantizing the
    # attention products as well was no faster here and adds error.
    with _quiet_quantizer():
        quantize_dynamic(model, path, op_types_to_quantize=["MatMul", "Gather"], weight_type=QuantType.QInt8,
                         nodes_to_exclude=excluded, extra_options={"MatMulConstBOnly": True})


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop the quantizer's advice to pre-process the model (a root-logger
    warning on every call); our graphs carry full shape information."""

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _build(source: ModelSource, precision: str, source_sha: str, target: Path, progress: Progress) -> Manifest:
    progress("read weights", 0.0)
    model = ct2.read_model(read_weights(source))
    dtype = np.float16 if precision == "fp16" else np.float32
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with resource_paths((source.config, source.tokenizer)) as (config, tokenizer):
            shutil.copyfile(config, staging / CONFIG_FILE)
            shutil.copyfile(tokenizer, staging / TOKENIZER_FILE)
        alignment_heads = [(int(layer), int(head)) for layer, head in
                           json.loads((staging / CONFIG_FILE).read_text())["alignment_heads"]]
        progress("encoder", 0.05)
        _save(whisper_graph.build_encoder(model, dtype), staging / ENCODER_FILE, precision, FLOAT_WEIGHTS["encoder"])
        progress("decoder", 0.2)
        _save(whisper_graph.build_decoder(model, alignment_heads, dtype), staging / DECODER_FILE, precision,
              FLOAT_WEIGHTS["decoder"])
        progress("manifest", 0.9)
        files = tuple(FileEntry.of(staging, f) for f in (ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE, CONFIG_FILE))
        manifest = Manifest(
            name=source.name,
            version=f"{source.name}-{precision}-{files[0].sha256[:8]}",
            precision=precision,
            quantization=_describe(precision),
            builder_version=BUILDER_VERSION,
            source=Source(distribution_versions(source), source_sha, source.licence),
            dims=whisper_graph.dims_of(model),
            graphs={key: GraphIO.of(file, onnx.load(staging / file, load_external_data=False))
                    for key, file in (("encoder", ENCODER_FILE), ("decoder", DECODER_FILE))},
            files=files,
            directory=target,
        )
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        _replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress("done", 1.0)
    return manifest


def _describe(precision: str) -> str:
    return {
        "int8": f"dynamic int8 weights (MatMul, Gather) except {', '.join(FLOAT_WEIGHTS.values())}, "
                f"onnxruntime {onnxruntime.__version__}",
        "fp16": "float16 weights and arithmetic",
        "fp32": "none (float32)",
    }[precision]


def _replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an older ``target`` is moved aside first
    (directories cannot be renamed over each other) and then deleted."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(old / "model")
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
