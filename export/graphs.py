"""Turn Optimum's encoder graph (last_hidden_state) into the two served graphs.

- fill_mask: gather the hidden states at `mask_positions` (flat b*T+t), run the MLM head only there,
  softmax, top-k -> `top_ids` (int64) and `top_probs` (float32). The head never sees other positions.
- embed: the model's pooling (every sentence-transformers mode, concatenated in its order), Dense layers,
  optional L2 normalisation -> `sentence_embedding`.
- logits: the MLM head over every position (`logits`, [B, T, V]) for `--output` mode, so the
  folder loads with optimum's ORTModelForMaskedLM.

Weights of the head come from the PyTorch checkpoint (export.families.mlm_head: each family's MLM head).
"""

from __future__ import annotations

import math

import numpy as np

from bertforge import contract

HIDDEN = "last_hidden_state"
LOGITS = "logits"
GELU_ACTIVATIONS = {"gelu", "gelu_python"}
TANH_GELU_ACTIVATIONS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}


def add_fill_mask_head(encoder, head: dict, max_top_k: int):
    """encoder graph -> fill_mask graph: gather at mask_positions, MLM head, softmax, top-k."""
    from onnx import TensorProto, helper

    graph = _start(encoder)
    hidden_size = head["dense_weight"].shape[0]
    vocab_size = head["decoder_weight"].shape[1]
    top_k = min(max_top_k, vocab_size)
    graph.input.append(helper.make_tensor_value_info(contract.ONNX_MASK_POSITIONS, TensorProto.INT64, ["masks"]))
    # (B, T, H) -> (B*T, H) -> (M, H): the head only runs where a [MASK] is
    _constant(graph, "head/flat_shape", np.array([-1, hidden_size], dtype=np.int64))
    graph.node.append(helper.make_node("Reshape", [HIDDEN, "head/flat_shape"], ["head/flat_hidden"]))
    graph.node.append(helper.make_node("Gather", ["head/flat_hidden", contract.ONNX_MASK_POSITIONS], ["head/masked"], axis=0))
    logits = _prediction_head(graph, "head/masked", head)  # (M, V)
    # softmax in float32, then the k best (sorted, descending)
    graph.node.append(helper.make_node("Softmax", [logits], ["head/probs"], axis=-1))
    _constant(graph, "head/k", np.array([top_k], dtype=np.int64))
    graph.node.append(helper.make_node("TopK", ["head/probs", "head/k"], [contract.ONNX_TOP_PROBS, contract.ONNX_TOP_IDS],
                                       axis=-1, largest=1, sorted=1))
    graph.output.extend([
        helper.make_tensor_value_info(contract.ONNX_TOP_IDS, TensorProto.INT64, ["masks", top_k]),
        helper.make_tensor_value_info(contract.ONNX_TOP_PROBS, TensorProto.FLOAT, ["masks", top_k]),
    ])
    return _finish(encoder, graph, "bertforge fill_mask")


def add_logits_head(encoder, head: dict):
    """encoder graph -> MLM logits over every position (what ORTModelForMaskedLM expects)."""
    from onnx import TensorProto, helper

    graph = _start(encoder)
    vocab_size = head["decoder_weight"].shape[1]
    _prediction_head(graph, HIDDEN, head, output=LOGITS)  # (B, T, V)
    graph.output.append(helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch_size", "sequence_length", vocab_size]))
    return _finish(encoder, graph, "bertforge masked-lm logits")


def encoder_only(encoder):
    """encoder graph with only `last_hidden_state` (what ORTModelForFeatureExtraction expects)."""
    from onnx import TensorProto, helper

    graph = _start(encoder)
    hidden_size = _hidden_size(encoder)
    graph.output.append(helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, ["batch_size", "sequence_length", hidden_size]))
    return _finish(encoder, graph, "bertforge feature-extraction")


def add_pooling(encoder, pooling: str | tuple[str, ...] = "mean", normalize: bool = False, dense: tuple = ()):
    """encoder graph -> one vector per text, as sentence-transformers computes it: its pooling modes
    (export.model_definition; several are concatenated in the given order), its Dense layers, optional L2 norm.
    The server pads on the right, so "cls" is position 0 and "lasttoken" the last real token."""
    from onnx import TensorProto, helper

    graph = _start(encoder)
    modes = tuple(pooling.split("+")) if isinstance(pooling, str) else tuple(pooling)
    unknown = [mode for mode in modes if mode not in POOLING_BUILDERS]
    if unknown or not modes:
        raise ValueError(f"pooling modes must be among {list(POOLING_BUILDERS)}, got {pooling!r}")
    # the mask as float (B, T, 1), shared by every mode
    graph.node.append(helper.make_node("Cast", ["attention_mask"], ["pool/mask"], to=TensorProto.FLOAT))
    _constant(graph, "pool/last_axis", np.array([-1], dtype=np.int64))
    _constant(graph, "pool/seq_axis", np.array([1], dtype=np.int64))
    _constant(graph, "pool/eps", np.array(1e-9, dtype=np.float32))
    graph.node.append(helper.make_node("Unsqueeze", ["pool/mask", "pool/last_axis"], ["pool/mask3"]))
    pooled = [POOLING_BUILDERS[mode](graph) for mode in modes]
    result = pooled[0]
    if len(pooled) > 1:
        graph.node.append(helper.make_node("Concat", pooled, ["pool/concat"], axis=-1))
        result = "pool/concat"
    _project(graph, result, _hidden_size(encoder) * len(modes), dense, normalize)
    return _finish(encoder, graph, "bertforge embed")


def append_projection(model, dense: tuple, normalize: bool):
    """An embed graph (already fused) -> the same with sentence-transformers' Dense layers and Normalize after its
    pooling. The fusions run before these are added: ORT's symbolic shape inference cannot follow them."""
    import onnx

    graph = model.graph
    (output,) = [o for o in graph.output if o.name == contract.ONNX_SENTENCE_EMBEDDING]
    width = output.type.tensor_type.shape.dim[1].dim_value
    for node in graph.node:
        if output.name in node.output:
            node.output[:] = ["pool/pooled_out" if name == output.name else name for name in node.output]
            node.name = f"pool/pooled_out/{node.op_type}"
    del graph.output[:]
    _project(graph, "pool/pooled_out", width, dense, normalize)
    _name_nodes(graph)
    onnx.checker.check_model(model)
    return model


def _project(graph, result: str, width: int, dense: tuple, normalize: bool) -> None:
    """Dense layers, then optional L2 normalisation, then the `sentence_embedding` output."""
    from onnx import TensorProto, helper

    for index, layer in enumerate(dense):
        result, width = _dense(graph, result, layer, index), layer.weight.shape[0]
    if normalize:
        # x / max(||x||, 1e-12), as torch.nn.functional.normalize
        _constant(graph, "pool/norm_axis", np.array([-1], dtype=np.int64))
        _constant(graph, "pool/norm_eps", np.array(1e-12, dtype=np.float32))
        graph.node.extend([
            # ReduceSum+Sqrt, not ReduceL2: ORT's symbolic shape inference (needed by the fusions) lacks ReduceL2-18
            helper.make_node("Mul", [result, result], ["pool/squares"]),
            helper.make_node("ReduceSum", ["pool/squares", "pool/norm_axis"], ["pool/square_sum"], keepdims=1),
            helper.make_node("Sqrt", ["pool/square_sum"], ["pool/norm"]),
            helper.make_node("Max", ["pool/norm", "pool/norm_eps"], ["pool/norm_safe"]),
            helper.make_node("Div", [result, "pool/norm_safe"], ["pool/result"]),
        ])
        result = "pool/result"
    graph.node.append(helper.make_node("Identity", [result], [contract.ONNX_SENTENCE_EMBEDDING]))
    graph.output.append(helper.make_tensor_value_info(contract.ONNX_SENTENCE_EMBEDDING, TensorProto.FLOAT, ["batch_size", width]))


def _masked_sum(graph) -> tuple[str, str]:
    """(sum of hidden over real tokens (B, H), real-token count clamped at 1e-9 (B, 1)), built once."""
    from onnx import helper

    if not any(node.output[0] == "pool/sum" for node in graph.node):
        graph.node.extend([
            helper.make_node("Mul", [HIDDEN, "pool/mask3"], ["pool/masked"]),
            helper.make_node("ReduceSum", ["pool/masked", "pool/seq_axis"], ["pool/sum"], keepdims=0),  # (B, H)
            helper.make_node("ReduceSum", ["pool/mask3", "pool/seq_axis"], ["pool/count"], keepdims=0),  # (B, 1)
            helper.make_node("Max", ["pool/count", "pool/eps"], ["pool/count_safe"]),
        ])
    return "pool/sum", "pool/count_safe"


def _pool_mean(graph) -> str:
    from onnx import helper

    total, count = _masked_sum(graph)
    graph.node.append(helper.make_node("Div", [total, count], ["pool/mean"]))
    return "pool/mean"


def _pool_mean_sqrt_len(graph) -> str:
    from onnx import helper

    total, count = _masked_sum(graph)
    graph.node.extend([helper.make_node("Sqrt", [count], ["pool/sqrt_count"]),
                       helper.make_node("Div", [total, "pool/sqrt_count"], ["pool/mean_sqrt_len"])])
    return "pool/mean_sqrt_len"


def _pool_cls(graph) -> str:
    from onnx import helper

    _constant(graph, "pool/zero", np.array(0, dtype=np.int64))
    graph.node.append(helper.make_node("Gather", [HIDDEN, "pool/zero"], ["pool/cls"], axis=1))  # (B, H)
    return "pool/cls"


def _pool_max(graph) -> str:
    """max over real tokens (padding set to -inf first, as sentence-transformers does)."""
    from onnx import helper

    _constant(graph, "pool/zero_f", np.array(0.0, dtype=np.float32))
    _constant(graph, "pool/neg_inf", np.array(-np.inf, dtype=np.float32))
    graph.node.extend([
        helper.make_node("Equal", ["pool/mask3", "pool/zero_f"], ["pool/is_pad"]),
        helper.make_node("Where", ["pool/is_pad", "pool/neg_inf", HIDDEN], ["pool/max_in"]),
        helper.make_node("ReduceMax", ["pool/max_in", "pool/seq_axis"], ["pool/max"], keepdims=0),
    ])
    return "pool/max"


def _pool_weightedmean(graph) -> str:
    """sum(h_t * t * mask_t) / sum(t * mask_t), positions t counted from 1."""
    from onnx import helper, numpy_helper

    graph.node.extend([
        helper.make_node("Shape", ["pool/mask3"], ["pool/mask_shape"]),
        helper.make_node("ConstantOfShape", ["pool/mask_shape"], ["pool/ones"],
                         value=numpy_helper.from_array(np.array([1.0], dtype=np.float32))),
        helper.make_node("CumSum", ["pool/ones", "pool/seq_axis"], ["pool/positions"]),  # 1..T
        helper.make_node("Mul", ["pool/positions", "pool/mask3"], ["pool/weights"]),
        helper.make_node("Mul", [HIDDEN, "pool/weights"], ["pool/weighted"]),
        helper.make_node("ReduceSum", ["pool/weighted", "pool/seq_axis"], ["pool/weighted_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["pool/weights", "pool/seq_axis"], ["pool/weight_sum"], keepdims=0),
        helper.make_node("Max", ["pool/weight_sum", "pool/eps"], ["pool/weight_sum_safe"]),
        helper.make_node("Div", ["pool/weighted_sum", "pool/weight_sum_safe"], ["pool/weightedmean"]),
    ])
    return "pool/weightedmean"


def _pool_lasttoken(graph) -> str:
    """the last real token: where the running count of real tokens reaches the row's total."""
    from onnx import helper

    graph.node.extend([
        helper.make_node("CumSum", ["pool/mask3", "pool/seq_axis"], ["pool/running"]),
        helper.make_node("ReduceSum", ["pool/mask3", "pool/seq_axis"], ["pool/total"], keepdims=1),
        helper.make_node("Equal", ["pool/running", "pool/total"], ["pool/at_total"]),
        helper.make_node("Cast", ["pool/at_total"], ["pool/at_total_f"], to=1),
        helper.make_node("Mul", ["pool/at_total_f", "pool/mask3"], ["pool/last_onehot"]),
        helper.make_node("Mul", [HIDDEN, "pool/last_onehot"], ["pool/last_masked"]),
        helper.make_node("ReduceSum", ["pool/last_masked", "pool/seq_axis"], ["pool/lasttoken"], keepdims=0),
    ])
    return "pool/lasttoken"


POOLING_BUILDERS = {"cls": _pool_cls, "max": _pool_max, "mean": _pool_mean, "mean_sqrt_len_tokens": _pool_mean_sqrt_len,
                    "weightedmean": _pool_weightedmean, "lasttoken": _pool_lasttoken}


def _dense(graph, source: str, layer, index: int) -> str:
    """A sentence-transformers Dense module: activation(x W^T + b)."""
    from onnx import helper

    prefix = f"dense{index}"
    _constant(graph, f"{prefix}/weight", np.ascontiguousarray(layer.weight, dtype=np.float32))  # (out, in)
    _constant(graph, f"{prefix}/bias", np.asarray(layer.bias, dtype=np.float32))
    graph.node.append(helper.make_node("Gemm", [source, f"{prefix}/weight", f"{prefix}/bias"], [f"{prefix}/linear"],
                                       transB=1))
    if layer.activation is None:
        return f"{prefix}/linear"
    graph.node.append(helper.make_node(layer.activation, [f"{prefix}/linear"], [f"{prefix}/out"]))
    return f"{prefix}/out"


def _prediction_head(graph, source: str, head: dict, output: str = "head/logits") -> str:
    """dense -> activation -> LayerNorm -> decoder (tied embeddings) + bias, on the last axis."""
    from onnx import helper

    for name in ("dense_weight", "dense_bias", "norm_weight", "norm_bias", "decoder_weight", "decoder_bias"):
        _constant(graph, f"head/{name}", np.asarray(head[name], dtype=np.float32))
    graph.node.extend([
        helper.make_node("MatMul", [source, "head/dense_weight"], ["head/dense_mm"]),
        helper.make_node("Add", ["head/dense_mm", "head/dense_bias"], ["head/dense"]),
    ])
    activated = _activation(graph, "head/dense", head["activation"])
    graph.node.extend([
        helper.make_node("LayerNormalization", [activated, "head/norm_weight", "head/norm_bias"], ["head/normed"],
                         axis=-1, epsilon=head["norm_eps"]),
        helper.make_node("MatMul", ["head/normed", "head/decoder_weight"], ["head/decoder_mm"]),
        helper.make_node("Add", ["head/decoder_mm", "head/decoder_bias"], [output]),
    ])
    return output


def _activation(graph, source: str, activation: str) -> str:
    from onnx import helper

    if activation in GELU_ACTIVATIONS:  # 0.5 x (1 + erf(x / sqrt 2)), the pattern ORT fuses into Gelu
        _constant(graph, "head/sqrt2", np.array(math.sqrt(2), dtype=np.float32))
        _constant(graph, "head/one", np.array(1.0, dtype=np.float32))
        _constant(graph, "head/half", np.array(0.5, dtype=np.float32))
        graph.node.extend([
            helper.make_node("Div", [source, "head/sqrt2"], ["head/gelu_scaled"]),
            helper.make_node("Erf", ["head/gelu_scaled"], ["head/gelu_erf"]),
            helper.make_node("Add", ["head/gelu_erf", "head/one"], ["head/gelu_plus"]),
            helper.make_node("Mul", [source, "head/gelu_plus"], ["head/gelu_x"]),
            helper.make_node("Mul", ["head/gelu_x", "head/half"], ["head/act"]),
        ])
    elif activation in TANH_GELU_ACTIVATIONS:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        for name, value in [("c", math.sqrt(2 / math.pi)), ("a", 0.044715), ("one", 1.0), ("half", 0.5), ("three", 3.0)]:
            _constant(graph, f"head/tanh_{name}", np.array(value, dtype=np.float32))
        graph.node.extend([
            helper.make_node("Pow", [source, "head/tanh_three"], ["head/tanh_cube"]),
            helper.make_node("Mul", ["head/tanh_cube", "head/tanh_a"], ["head/tanh_cube_a"]),
            helper.make_node("Add", [source, "head/tanh_cube_a"], ["head/tanh_inner"]),
            helper.make_node("Mul", ["head/tanh_inner", "head/tanh_c"], ["head/tanh_scaled"]),
            helper.make_node("Tanh", ["head/tanh_scaled"], ["head/tanh"]),
            helper.make_node("Add", ["head/tanh", "head/tanh_one"], ["head/tanh_plus"]),
            helper.make_node("Mul", [source, "head/tanh_plus"], ["head/tanh_x"]),
            helper.make_node("Mul", ["head/tanh_x", "head/tanh_half"], ["head/act"]),
        ])
    elif activation == "relu":
        graph.node.append(helper.make_node("Relu", [source], ["head/act"]))
    else:
        raise ValueError(f"MLM head activation {activation!r} is not supported by the exporter "
                         f"(supported: {sorted(GELU_ACTIVATIONS | TANH_GELU_ACTIVATIONS | {'relu'})})")
    return "head/act"


def _start(encoder):
    """A copy of the encoder graph whose only output is last_hidden_state (pooler etc. are pruned later)."""
    import onnx

    graph = onnx.GraphProto()
    graph.CopyFrom(encoder.graph)
    if HIDDEN not in [output.name for output in graph.output]:
        raise ValueError(f"encoder graph has no {HIDDEN!r} output (outputs: {[o.name for o in graph.output]})")
    del graph.output[:]
    return graph


def _hidden_size(encoder) -> int:
    for output in encoder.graph.output:
        if output.name == HIDDEN:
            return output.type.tensor_type.shape.dim[2].dim_value
    raise ValueError(f"encoder graph has no {HIDDEN!r} output")


def _constant(graph, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(value, name))


def _finish(encoder, graph, doc: str):
    """Wrap the graph in a model with the encoder's opsets, drop nodes no output needs, and check it."""
    import onnx

    # keep the encoder's producer: ORT's transformer optimizer checks it
    model = onnx.helper.make_model(graph, opset_imports=list(encoder.opset_import), producer_name=encoder.producer_name,
                                   producer_version=encoder.producer_version)
    model.ir_version = encoder.ir_version
    model.doc_string = doc
    _name_nodes(model.graph)
    prune_unused(model)
    onnx.checker.check_model(model)
    return model


def _name_nodes(graph) -> None:
    """Name the nodes we added after their first output (quantization excludes the head by name)."""
    for node in graph.node:
        if not node.name:
            node.name = f"{node.output[0]}/{node.op_type}"


def prune_unused(model) -> None:
    """Remove nodes and initializers that no graph output depends on (e.g. the unused pooler)."""
    graph = model.graph
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_infos = [info for info in graph.value_info if info.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_infos)
