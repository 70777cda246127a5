"""ModernBERT's encoder written with ONNX Runtime's fused ops, from the checkpoint's own weights.

Why by hand: ONNX Runtime's transformer optimizer has no ModernBERT pattern. On Optimum's trace it finds only
SkipLayerNormalization and Gelu, and leaves the rotary embedding (cos/sin from positions, Slice/Concat/Neg/Mul), the
unfused attention and the sliding-window shape arithmetic as small ops: 311 nodes for a 2-layer model, 182 after the
session's own optimizations, against 35 for BERT of the same size. At serving sizes those ops cost more than the
layers (docs/export.md, "Families"). Each layer here is the op sequence ORT has kernels for:

    SkipLayerNormalization (attn_norm; layer 0 has none) -> MatMul Wqkv -> Split q, k, v
    -> RotaryEmbedding q, k -> MultiHeadAttention (key padding mask; band bias on sliding-window layers)
    -> MatMul Wo -> SkipLayerNormalization (mlp_norm) -> MatMul Wi -> Split -> Gelu(input) * gate -> MatMul Wo

The gate compares the graph with transformers' ModernBertModel on the same batches as every other graph, and
`fusable` refuses (falling back to the traced graph) any configuration this writer does not reproduce.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.graphs import HIDDEN, prune_unused

MS_DOMAIN = "com.microsoft"
ACTIVATIONS = {"gelu": "Gelu", "gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu_fast": "FastGelu"}


def fusable(graph_path: Path, config) -> str | None:
    """Why the encoder of the graph at `graph_path` (ModernBERT `config`) cannot be written here (None when it can):
    a rotary scaling or activation this writer does not reproduce, or a graph without last_hidden_state (the
    cross-encoder's text-classification trace)."""
    import onnx

    scaling = getattr(config, "rope_scaling", None)
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        return f"rope_scaling {scaling}"
    if config.hidden_activation not in ACTIVATIONS:
        return f"hidden_activation {config.hidden_activation!r}"
    graph = onnx.load(str(graph_path), load_external_data=False).graph
    if not any(HIDDEN in node.output for node in graph.node):
        return f"the graph has no {HIDDEN!r} to replace"
    return None


def replace_encoder(graph_path: Path, target: Path, model) -> Path:
    """Write `target`: the graph at `graph_path` (Optimum's traced encoder plus bertforge's head or pooling) with
    every node that only computes `last_hidden_state` replaced by the fused encoder of `model` (ModernBertModel or
    ModernBertForMaskedLM)."""
    import onnx

    # the traced producer of last_hidden_state goes; the head or pooling stays; the fused encoder comes first
    traced = onnx.load(str(graph_path))
    graph = traced.graph
    others = [node for node in graph.node if HIDDEN not in node.output]
    fused_nodes, weights = encoder_nodes_of(getattr(model, "base_model", model),
                                            [value.name for value in graph.input])
    del graph.node[:]
    graph.node.extend(fused_nodes + others)
    graph.initializer.extend(weights)

    # what no output needs any more (the rest of the traced encoder, its weights) is dropped
    prune_unused(traced)
    if not any(opset.domain == MS_DOMAIN for opset in traced.opset_import):
        traced.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(traced, str(target))
    return target


def encoder_nodes_of(encoder, graph_inputs: list[str]) -> tuple[list, list]:
    """(nodes, initializers) computing `last_hidden_state` from input_ids and attention_mask: ModernBertModel's
    forward (padded, as its sdpa/eager paths compute it) in ORT's fused ops."""
    from onnx import helper

    config = encoder.config
    weights = _Weights()
    nodes = []
    heads, hidden = config.num_attention_heads, config.hidden_size
    if "attention_mask" not in graph_inputs:
        raise ValueError(f"the traced graph has no attention_mask input (inputs: {graph_inputs})")

    # embeddings: token rows, then LayerNorm (ModernBERT has no position embeddings: RoPE in every layer)
    embeddings = encoder.embeddings
    nodes.append(helper.make_node("Gather", [weights.add("fused/embeddings/tokens", embeddings.tok_embeddings.weight),
                                             "input_ids"], ["fused/embeddings/rows"], name="fused/embeddings/Gather"))
    nodes.append(_layer_norm("fused/embeddings/norm", "fused/embeddings/rows", embeddings.norm, weights))
    stream = normed = "fused/embeddings/norm"  # the residual stream, and what the next attention reads
    previous_mlp = ""  # the last layer's MLP output, added to the stream by the next norm

    # what every layer shares: the key padding mask (int32), position offset 0, the sliding-window band if any
    nodes.append(helper.make_node("Cast", ["attention_mask"], ["fused/encoder/key_padding_mask"], to=6,
                                  name="fused/encoder/mask"))
    weights.add_array("fused/encoder/position_offset", np.zeros(1, dtype=np.int64))
    band = None

    for index, layer in enumerate(encoder.layers):
        prefix = f"fused/layers.{index}"
        attention = layer.attn
        # attention: pre-norm (layer 0 attends the embeddings' norm directly), Wqkv, rotary q and k, MHA, Wo
        if index > 0:
            nodes.append(_skip_layer_norm(f"{prefix}/attn_norm", previous_mlp, stream, layer.attn_norm, weights))
            normed, stream = f"{prefix}/attn_norm", f"{prefix}/attn_norm/sum"
        qkv = _linear(nodes, f"{prefix}/attn/Wqkv", normed, attention.Wqkv, weights)
        nodes.append(helper.make_node("Split", [qkv, weights.add_shared("fused/qkv_split", np.array(
            [hidden] * 3, dtype=np.int64))], [f"{prefix}/q", f"{prefix}/k", f"{prefix}/v"], axis=2,
            name=f"{prefix}/attn/Split"))
        cos, sin = _rotary_tables(attention, weights, prefix)
        for part in ("q", "k"):
            nodes.append(helper.make_node(
                "RotaryEmbedding", [f"{prefix}/{part}", "fused/encoder/position_offset", cos, sin], [f"{prefix}/{part}_rot"],
                domain=MS_DOMAIN, num_heads=heads, interleaved=0, name=f"{prefix}/attn/rotary_{part}"))
        attention_inputs = [f"{prefix}/q_rot", f"{prefix}/k_rot", f"{prefix}/v", "", "fused/encoder/key_padding_mask"]
        if attention.local_attention != (-1, -1):
            band = band or _sliding_window_band(nodes, config, weights)
            attention_inputs.append(band)
        nodes.append(helper.make_node("MultiHeadAttention", attention_inputs, [f"{prefix}/attn/context"],
                                      domain=MS_DOMAIN, num_heads=heads, name=f"{prefix}/attn/MultiHeadAttention"))
        attention_out = _linear(nodes, f"{prefix}/attn/Wo", f"{prefix}/attn/context", attention.Wo, weights)

        # MLP: residual add and mlp_norm in one op, Wi, GLU (act(input) * gate), Wo
        nodes.append(_skip_layer_norm(f"{prefix}/mlp_norm", attention_out, stream, layer.mlp_norm, weights))
        stream = f"{prefix}/mlp_norm/sum"
        mlp = layer.mlp
        inner = _linear(nodes, f"{prefix}/mlp/Wi", f"{prefix}/mlp_norm", mlp.Wi, weights)
        width = mlp.Wo.in_features
        nodes.append(helper.make_node("Split", [inner, weights.add_shared("fused/glu_split", np.array(
            [width, width], dtype=np.int64))], [f"{prefix}/mlp/input", f"{prefix}/mlp/gate"], axis=2,
            name=f"{prefix}/mlp/Split"))
        nodes.append(helper.make_node(ACTIVATIONS[config.hidden_activation], [f"{prefix}/mlp/input"],
                                      [f"{prefix}/mlp/act"], domain=MS_DOMAIN, name=f"{prefix}/mlp/act"))
        nodes.append(helper.make_node("Mul", [f"{prefix}/mlp/act", f"{prefix}/mlp/gate"], [f"{prefix}/mlp/glu"],
                                      name=f"{prefix}/mlp/Mul"))
        previous_mlp = _linear(nodes, f"{prefix}/mlp/Wo", f"{prefix}/mlp/glu", mlp.Wo, weights)

    # the final norm over the last residual sum: last_hidden_state
    nodes.append(_skip_layer_norm("fused/final_norm", previous_mlp, stream, encoder.final_norm, weights, output=HIDDEN))
    return nodes, weights.initializers


class _Weights:
    """The initializers the fused encoder reads, named after the module they come from."""

    def __init__(self):
        self.initializers = []
        self.shared: dict[bytes, str] = {}

    def add_shared(self, name: str, array: np.ndarray) -> str:
        """One initializer for equal constants (rotary tables, split sizes) however many layers read them."""
        key = array.dtype.str.encode() + str(array.shape).encode() + array.tobytes()
        if key not in self.shared:
            self.shared[key] = self.add_array(name, array)
        return self.shared[key]

    def add(self, name: str, tensor) -> str:
        return self.add_array(name, tensor.detach().float().cpu().numpy())

    def add_array(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name


def _linear(nodes: list, name: str, source: str, linear, weights: _Weights) -> str:
    """MatMul with the transposed weight (+ Add when the layer has a bias); returns the output's name."""
    from onnx import helper

    nodes.append(helper.make_node("MatMul", [source, weights.add_array(f"{name}.weight", linear.weight.detach().float()
                                                                        .cpu().numpy().T)],
                                  [f"{name}/out" if linear.bias is None else f"{name}/product"], name=f"{name}/MatMul"))
    if linear.bias is None:
        return f"{name}/out"
    nodes.append(helper.make_node("Add", [f"{name}/product", weights.add(f"{name}.bias", linear.bias)], [f"{name}/out"],
                                  name=f"{name}/Add"))
    return f"{name}/out"


def _layer_norm(name: str, source: str, norm, weights: _Weights):
    from onnx import helper

    return helper.make_node("LayerNormalization", [source, *_norm_weights(name, norm, weights)], [name], axis=-1,
                            epsilon=float(norm.eps), name=f"{name}/LayerNormalization")


def _skip_layer_norm(name: str, source: str, skip: str, norm, weights: _Weights, output: str | None = None):
    """LayerNorm(source + skip); output 3 is the sum itself (the residual stream the next layer adds to)."""
    from onnx import helper

    return helper.make_node("SkipLayerNormalization", [source, skip, *_norm_weights(name, norm, weights)],
                            [output or name, "", "", f"{name}/sum"], domain=MS_DOMAIN, epsilon=float(norm.eps),
                            name=f"{name}/SkipLayerNormalization")


def _norm_weights(name: str, norm, weights: _Weights) -> list[str]:
    gamma = weights.add(f"{name}.weight", norm.weight)
    if norm.bias is None:  # ModernBERT's norms have no bias by default
        return [gamma, weights.add_array(f"{name}.bias", np.zeros(norm.weight.shape[0], dtype=np.float32))]
    return [gamma, weights.add(f"{name}.bias", norm.bias)]


def _rotary_tables(attention, weights: _Weights, prefix: str) -> tuple[str, str]:
    """cos and sin caches (positions, head_dim / 2) of the layer's own rotary embedding (its theta and length),
    shared by the layers that have the same: transformers' rotate_half convention, so RotaryEmbedding runs with
    interleaved=0."""
    rotary = attention.rotary_emb
    rows = int(rotary.max_seq_len_cached)
    inverse_frequencies = rotary.inv_freq.detach().double().cpu().numpy()
    angles = np.outer(np.arange(rows, dtype=np.float64), inverse_frequencies)
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    return (weights.add_shared(f"{prefix}/attn/rotary_cos", (np.cos(angles) * scaling).astype(np.float32)),
            weights.add_shared(f"{prefix}/attn/rotary_sin", (np.sin(angles) * scaling).astype(np.float32)))


def _sliding_window_band(nodes: list, config, weights: _Weights) -> str:
    """The sliding-window layers' additive bias (1, 1, S, S): 0 where |i - j| <= local_attention / 2, else the
    float32 minimum (transformers' _update_attention_mask), built from the batch's length S once per graph (a
    table of every length would hold max_positions² floats: 268 MB at ModernBERT-base's 8,192)."""
    from onnx import helper

    name = "fused/encoder/band"
    half = weights.add_array(f"{name}/half_window", np.array(config.local_attention // 2, dtype=np.int64))
    zero, one = (weights.add_array(f"{name}/{label}", np.array(value, dtype=np.int64))
                 for label, value in (("zero", 0), ("one", 1)))
    inside, outside = (weights.add_array(f"{name}/{label}", np.array(value, dtype=np.float32))
                       for label, value in (("zero_bias", 0.0), ("masked_bias", np.finfo(np.float32).min)))
    axis0, axis1, axes01 = (weights.add_array(f"{name}/axes{label}", np.array(value, dtype=np.int64))
                            for label, value in (("0", [0]), ("1", [1]), ("01", [0, 1])))
    nodes.extend([
        # positions 0..S-1 of this batch, their distances |i - j| (S, S), the band as 0 / float32 min (1, 1, S, S)
        helper.make_node("Shape", ["input_ids"], [f"{name}/length"], start=1, end=2, name=f"{name}/Shape"),
        helper.make_node("Squeeze", [f"{name}/length"], [f"{name}/length_scalar"], name=f"{name}/Squeeze"),
        helper.make_node("Range", [zero, f"{name}/length_scalar", one], [f"{name}/positions"], name=f"{name}/Range"),
        helper.make_node("Unsqueeze", [f"{name}/positions", axis1], [f"{name}/rows"], name=f"{name}/rows"),
        helper.make_node("Unsqueeze", [f"{name}/positions", axis0], [f"{name}/columns"], name=f"{name}/columns"),
        helper.make_node("Sub", [f"{name}/rows", f"{name}/columns"], [f"{name}/offset"], name=f"{name}/Sub"),
        helper.make_node("Abs", [f"{name}/offset"], [f"{name}/distance"], name=f"{name}/Abs"),
        helper.make_node("LessOrEqual", [f"{name}/distance", half], [f"{name}/inside"], name=f"{name}/LessOrEqual"),
        helper.make_node("Where", [f"{name}/inside", inside, outside], [f"{name}/square"], name=f"{name}/Where"),
        helper.make_node("Unsqueeze", [f"{name}/square", axes01], [name], name=f"{name}/Unsqueeze"),
    ])
    return name
