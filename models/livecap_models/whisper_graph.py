"""Whisper as two ONNX graphs, built node by node from CTranslate2 weights.

The architecture is the one in the Whisper paper (Radford et al. 2022, fig. 1)
and openai-whisper's ``model.py``: a pre-norm Transformer encoder over two
convolutions, and a pre-norm decoder with self- and cross-attention whose
output projection is tied to the token embedding. LayerNorm eps is 1e-5 and
GELU is the exact (erf) one.

Two choices make decoding cheap:

* the **encoder** also emits every decoder layer's cross-attention keys and
  values, so they are computed once per audio window instead of once per
  token; keys come pre-transposed (``[batch, heads, head_dim, frames]``) so the
  decoder multiplies without a transpose;
* the **decoder** takes and returns a self-attention cache and computes logits
  (and the alignment heads' cross-attention scores used for word timing) for
  the last input position only: a 200-token prompt then costs no
  200 x vocabulary projection.

The past length is read from the cache's shape, so no input can disagree with
it. Batch is dynamic everywhere, so a scheduler may batch rooms together.
Edges are float32 (``mel``, ``hidden``, ``logits``, ``alignment_qk``); the
caches use the compute precision, float32 or float16.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from livecap_models.ct2 import CT2Model

OPSET = 17
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of a Whisper model, read from its weights."""

    n_mels: int
    n_audio_ctx: int
    n_text_ctx: int
    n_vocab: int
    d_model: int
    n_heads: int
    n_encoder_layers: int
    n_decoder_layers: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def multilingual(self) -> bool:
        """openai-whisper's own test (``is_multilingual``): English-only vocabularies are one token shorter."""
        return self.n_vocab >= 51865


def _layer_count(model: CT2Model, prefix: str) -> int:
    # "layer_norm" also starts with "layer_": count only numbered layers.
    numbered = re.compile(rf"{prefix}/layer_(\d+)/")
    return len({match[1] for name in model.variables if (match := numbered.match(name))})


def dims_of(model: CT2Model) -> WhisperDims:
    """Read the sizes from a ``WhisperSpec`` model."""
    if model.spec != "WhisperSpec":
        raise ValueError(f"expected a WhisperSpec model, got {model.spec}")
    n_mels = model.variables["encoder/conv1/weight"].shape[1]
    n_audio_ctx, d_model = model.variables["encoder/position_encodings/encodings"].shape
    return WhisperDims(
        n_mels=n_mels,
        n_audio_ctx=n_audio_ctx,
        n_text_ctx=model.variables["decoder/position_encodings/encodings"].shape[0],
        n_vocab=model.variables["decoder/embeddings/weight"].shape[0],
        d_model=d_model,
        n_heads=model.scalar("encoder/num_heads"),
        n_encoder_layers=_layer_count(model, "encoder"),
        n_decoder_layers=_layer_count(model, "decoder"),
    )


class _GraphBuilder:
    """Collects nodes and initializers; every helper returns its output's name."""

    def __init__(self, model: CT2Model, dims: WhisperDims, dtype: type[np.floating]) -> None:
        self.weights = model.variables
        self.dims = dims
        self.dtype = np.dtype(dtype)
        self.onnx_type = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def weight(self, name: str, value: np.ndarray | None = None) -> str:
        """The CTranslate2 variable ``name`` (or ``value`` derived from it) in the compute precision."""
        array = self.weights[name] if value is None else value
        return self.initializer(name, array.astype(self.dtype))

    def ints(self, values: Sequence[int] | int) -> str:
        """An int64 constant; a plain int gives a scalar."""
        return self.initializer(self._name("const"), np.array(values, dtype=np.int64))

    def scalar(self, value: float) -> str:
        """A scalar in the compute precision."""
        return self.initializer(self._name("const"), np.array(value, dtype=self.dtype))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs: Any) -> str:
        """Add a node; with ``outputs > 1`` the names are ``<first>``, ``<first>.1`` … (see ``split``)."""
        first = name or self._name(op_type.lower())
        names = [first] + [f"{first}.{i}" for i in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=first, **attrs))
        return first

    def split(self, x: str, sizes: Sequence[int]) -> list[str]:
        first = self.op("Split", x, self.ints(sizes), outputs=len(sizes), axis=-1)
        return [first] + [f"{first}.{i}" for i in range(1, len(sizes))]

    def linear(self, x: str, prefix: str, scale_rows: int = 0) -> str:
        """``x @ W.T + b``; the first ``scale_rows`` outputs are multiplied by
        1/sqrt(head_dim): that folds attention's query scaling into the weights."""
        weight = self.weights[f"{prefix}/weight"].astype(np.float32)
        bias = self.weights[f"{prefix}/bias"].astype(np.float32)
        if scale_rows:
            factor = np.ones(weight.shape[0], dtype=np.float32)
            factor[:scale_rows] = 1.0 / math.sqrt(self.dims.head_dim)
            weight, bias = weight * factor[:, None], bias * factor
        product = self.op("MatMul", x, self.weight(f"{prefix}/weight", weight.T))
        return self.op("Add", product, self.weight(f"{prefix}/bias", bias))

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op("LayerNormalization", x, self.weight(f"{prefix}/gamma"), self.weight(f"{prefix}/beta"),
                       axis=-1, epsilon=LAYER_NORM_EPS)

    def gelu(self, x: str) -> str:
        # written exactly as onnxruntime's GeluFusion pattern expects, so it becomes one Gelu kernel
        scaled = self.op("Div", x, self.scalar(math.sqrt(2)))
        erf = self.op("Add", self.op("Erf", scaled), self.scalar(1.0))
        return self.op("Mul", self.op("Mul", x, erf), self.scalar(0.5))

    def heads(self, x: str, perm: Sequence[int], name: str | None = None) -> str:
        """``[batch, seq, d_model]`` → per-head layout given by ``perm`` of ``[batch, seq, heads, head_dim]``."""
        shaped = self.op("Reshape", x, self.ints([0, 0, self.dims.n_heads, self.dims.head_dim]))
        return self.op("Transpose", shaped, perm=list(perm), name=name)

    def attend(self, q: str, k_t: str, v: str, prefix: str, mask: str | None = None) -> tuple[str, str]:
        """Scaled dot-product attention from per-head tensors; returns (output, raw scores)."""
        scores = self.op("MatMul", q, k_t)
        masked = scores if mask is None else self.op("Add", scores, mask)
        context = self.op("MatMul", self.op("Softmax", masked, axis=-1), v)
        merged = self.op("Reshape", self.op("Transpose", context, perm=[0, 2, 1, 3]), self.ints([0, 0, -1]))
        return self.linear(merged, prefix), scores

    def ffn(self, x: str, prefix: str) -> str:
        hidden = self.gelu(self.linear(self.layer_norm(x, f"{prefix}/layer_norm"), f"{prefix}/linear_0"))
        return self.op("Add", x, self.linear(hidden, f"{prefix}/linear_1"))

    def to_float32(self, x: str, name: str) -> str:
        if self.onnx_type == TensorProto.FLOAT:
            return self.op("Identity", x, name=name)
        return self.op("Cast", x, name=name, to=TensorProto.FLOAT)

    def cache_info(self, prefix: str, layer: int, length: str) -> list[onnx.ValueInfoProto]:
        """``{prefix}_k_{layer}`` (keys pre-transposed) and ``{prefix}_v_{layer}``, ``length`` long."""
        n, size = self.dims.n_heads, self.dims.head_dim
        return [helper.make_tensor_value_info(f"{prefix}_k_{layer}", self.onnx_type, ["batch", n, size, length]),
                helper.make_tensor_value_info(f"{prefix}_v_{layer}", self.onnx_type, ["batch", n, length, size])]

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
              ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="livecap")
        model.ir_version = 8  # onnxruntime >= 1.14 reads IR 8; newer IRs add nothing we use
        return model


def build_encoder(model: CT2Model, dtype: type[np.floating] = np.float32) -> onnx.ModelProto:
    """``mel [batch, n_mels, 2*frames]`` → ``hidden`` and ``cross_k_i`` / ``cross_v_i`` per decoder layer.

    ``2*frames`` may be shorter than 30 s (3000); the positional embedding is
    sliced to fit.
    """
    dims = dims_of(model)
    g = _GraphBuilder(model, dims, dtype)
    mel = "mel" if g.onnx_type == TensorProto.FLOAT else g.op("Cast", "mel", to=g.onnx_type)
    x = g.gelu(g.op("Conv", mel, g.weight("encoder/conv1/weight"), g.weight("encoder/conv1/bias"),
                    kernel_shape=[3], pads=[1, 1]))
    x = g.gelu(g.op("Conv", x, g.weight("encoder/conv2/weight"), g.weight("encoder/conv2/bias"),
                    kernel_shape=[3], pads=[1, 1], strides=[2]))
    x = g.op("Transpose", x, perm=[0, 2, 1])
    frames = g.op("Shape", x, start=1, end=2)
    positions = g.op("Slice", g.weight("encoder/position_encodings/encodings"), g.ints([0]), frames, g.ints([0]))
    x = g.op("Add", x, positions)
    d = dims.d_model
    for i in range(dims.n_encoder_layers):
        prefix = f"encoder/layer_{i}/self_attention"
        qkv = g.linear(g.layer_norm(x, f"{prefix}/layer_norm"), f"{prefix}/linear_0", scale_rows=d)
        q, k, v = g.split(qkv, [d, d, d])
        out, _ = g.attend(g.heads(q, [0, 2, 1, 3]), g.heads(k, [0, 2, 3, 1]), g.heads(v, [0, 2, 1, 3]),
                          f"{prefix}/linear_1")
        x = g.ffn(g.op("Add", x, out), f"encoder/layer_{i}/ffn")
    x = g.layer_norm(x, "encoder/layer_norm")
    outputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "frames", d])]
    g.to_float32(x, "hidden")
    for i in range(dims.n_decoder_layers):
        k, v = g.split(g.linear(x, f"decoder/layer_{i}/attention/linear_1"), [d, d])
        g.heads(k, [0, 2, 3, 1], name=f"cross_k_{i}")
        g.heads(v, [0, 2, 1, 3], name=f"cross_v_{i}")
        outputs += g.cache_info("cross", i, "frames")
    inputs = [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", dims.n_mels, "mel_frames"])]
    return g.model("whisper_encoder", inputs, outputs)


def build_decoder(
    model: CT2Model, alignment_heads: Sequence[tuple[int, int]], dtype: type[np.floating] = np.float32
) -> onnx.ModelProto:
    """One decoding step over ``tokens [batch, t]`` given ``past_k_i`` / ``past_v_i`` and the
    encoder's ``cross_k_i`` / ``cross_v_i``.

    Outputs ``logits [batch, vocab]`` and ``alignment_qk [batch, len(alignment_heads), frames]``
    (pre-softmax cross-attention scores, scaled by 1/sqrt(head_dim) as in
    openai-whisper's ``qkv_attention``) for the last of the ``t`` tokens, and
    ``present_k_i`` / ``present_v_i``: the cache including the new tokens.
    """
    dims = dims_of(model)
    g = _GraphBuilder(model, dims, dtype)
    d = dims.d_model
    past = g.op("Shape", "past_k_0", start=3, end=4)
    end = g.op("Add", past, g.op("Shape", "tokens", start=1, end=2))
    positions = g.op("Slice", g.weight("decoder/position_encodings/encodings"), past, end, g.ints([0]))
    # One [d_model, vocab] matrix serves the embedding (Gather on axis 1) and
    # the tied output projection (MatMul), so the file holds it once.
    embeddings = g.weight("decoder/embeddings/weight_t", g.weights["decoder/embeddings/weight"].T)
    x = g.op("Add", g.op("Transpose", g.op("Gather", embeddings, "tokens", axis=1), perm=[1, 2, 0]), positions)
    # Causal mask [t, past + t]: query row r (absolute position past + r) sees keys 0 … past + r.
    zero, one = g.ints([0]), g.ints(1)
    stop = g.op("Squeeze", end, zero)
    rows = g.op("Unsqueeze", g.op("Range", g.op("Squeeze", past, zero), stop, one), g.ints([1]))
    cols = g.op("Range", g.ints(0), stop, one)
    mask = g.op("Where", g.op("LessOrEqual", cols, rows), g.scalar(0.0), g.scalar(-np.inf))
    last = g.ints(-1)
    heads_by_layer: dict[int, list[int]] = {}
    for layer, head in sorted(alignment_heads):
        heads_by_layer.setdefault(layer, []).append(head)
    alignment: list[str] = []
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "tokens"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", dims.n_vocab]),
               helper.make_tensor_value_info("alignment_qk", TensorProto.FLOAT,
                                             ["batch", len(alignment_heads), "frames"])]
    for i in range(dims.n_decoder_layers):
        prefix = f"decoder/layer_{i}"
        qkv = g.linear(g.layer_norm(x, f"{prefix}/self_attention/layer_norm"), f"{prefix}/self_attention/linear_0",
                       scale_rows=d)
        q, k, v = g.split(qkv, [d, d, d])
        k_all = g.op("Concat", f"past_k_{i}", g.heads(k, [0, 2, 3, 1]), axis=3, name=f"present_k_{i}")
        v_all = g.op("Concat", f"past_v_{i}", g.heads(v, [0, 2, 1, 3]), axis=2, name=f"present_v_{i}")
        out, _ = g.attend(g.heads(q, [0, 2, 1, 3]), k_all, v_all, f"{prefix}/self_attention/linear_1", mask)
        x = g.op("Add", x, out)
        q = g.linear(g.layer_norm(x, f"{prefix}/attention/layer_norm"), f"{prefix}/attention/linear_0", scale_rows=d)
        out, scores = g.attend(g.heads(q, [0, 2, 1, 3]), f"cross_k_{i}", f"cross_v_{i}",
                               f"{prefix}/attention/linear_2")
        if i in heads_by_layer:
            last_row = g.op("Gather", scores, last, axis=2)
            alignment.append(g.op("Gather", last_row, g.ints(heads_by_layer[i]), axis=1))
        x = g.ffn(g.op("Add", x, out), f"{prefix}/ffn")
        inputs += g.cache_info("past", i, "past") + g.cache_info("cross", i, "frames")
        outputs += g.cache_info("present", i, "past_plus_tokens")
    x = g.layer_norm(g.op("Gather", x, last, axis=1), "decoder/layer_norm")
    g.to_float32(g.op("MatMul", x, embeddings), "logits")
    g.to_float32(g.op("Concat", *alignment, axis=1), "alignment_qk")
    return g.model("whisper_decoder", inputs, outputs)
