"""ModernBERT's encoder written in ONNX Runtime's fused ops (export/modernbert_graph.py) computes what transformers'
ModernBertModel computes, on padded batches, for global-only and sliding-window layouts, and stays small; what the
writer does not reproduce is refused with the reason, and the traced graph is served instead."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

TOLERANCE = 2e-5  # float32 sums in another order: measured max |diff| 2e-6 at these sizes


def _model(**overrides):
    """A random ModernBertModel built by transformers itself (the author's reference)."""
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    torch.manual_seed(overrides.pop("seed", 0))
    settings = dict(vocab_size=120, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                    max_position_embeddings=64, global_attn_every_n_layers=1, pad_token_id=0,
                    attn_implementation="sdpa")
    settings.update(overrides)
    model = ModernBertModel(ModernBertConfig(**settings)).eval()
    with torch.no_grad():  # norms away from their init (ones, zeros), so a swapped weight would show
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _standalone(model):
    """The fused encoder alone as an ONNX model: input_ids, attention_mask -> last_hidden_state."""
    import onnx
    from onnx import TensorProto, helper

    from export.graphs import HIDDEN
    from export.modernbert_graph import MS_DOMAIN, encoder_nodes_of

    nodes, weights = encoder_nodes_of(model, ["input_ids", "attention_mask"])
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
              for name in ("input_ids", "attention_mask")]
    output = helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, ["batch", "sequence", model.config.hidden_size])
    graph = helper.make_graph(nodes, "modernbert", inputs, [output], weights)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS_DOMAIN, 1)])
    onnx_model.ir_version = 9
    onnx.checker.check_model(onnx_model)
    return onnx_model


def _padded_batch(seed: int, length: int = 40) -> dict:
    rng = np.random.default_rng(seed)
    lengths = [length, length - 9, 12, 3]
    ids = rng.integers(5, 120, size=(len(lengths), length))
    mask = np.zeros_like(ids)
    for row, used in enumerate(lengths):
        mask[row, :used] = 1
        ids[row, used:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _max_difference(model, seed: int) -> float:
    """max |fused - transformers| of last_hidden_state over the real (unpadded) tokens of a fresh padded batch."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(_standalone(model).SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _padded_batch(seed)
    (fused,) = session.run(None, feeds)
    with torch.no_grad():
        reference = model(input_ids=torch.tensor(feeds["input_ids"]),
                          attention_mask=torch.tensor(feeds["attention_mask"])).last_hidden_state.numpy()
    real = feeds["attention_mask"].astype(bool)
    return float(np.abs(fused - reference)[real].max())


@pytest.mark.parametrize("overrides", [
    {},  # the demo's layout: every layer global
    # ModernBERT-base's layout, shrunk: local layers with a +-4 window and their own rotary base beside global ones
    {"num_hidden_layers": 4, "global_attn_every_n_layers": 3, "local_attention": 8, "global_rope_theta": 160000.0,
     "local_rope_theta": 10000.0},
    # biases everywhere and the tanh GELU: the writer's optional paths
    {"attention_bias": True, "mlp_bias": True, "norm_bias": True, "hidden_activation": "gelu_pytorch_tanh"},
])
def test_fused_encoder_equals_modernbertmodel(overrides):
    """Three fresh batches per layout (4 rows each, padded to 40 tokens), against ModernBertModel's forward."""
    model = _model(**overrides)
    differences = [_max_difference(model, seed) for seed in range(3)]
    assert max(differences) < TOLERANCE, differences


def test_the_fused_encoder_is_a_few_ops_per_layer():
    """What ONNX Runtime's optimizer leaves of the traced graph is ~90 ops per layer (311 for 2 layers with the head);
    the written encoder has 13 per layer (3 more in all) and no shape arithmetic when every layer is global."""
    layers = 3
    graph = _standalone(_model(num_hidden_layers=layers)).graph
    ops = Counter(node.op_type for node in graph.node)
    # one cos and one sin table for all layers of one rotary base (ModernBERT-base's are 1 MB each)
    assert len([tensor for tensor in graph.initializer if "rotary" in tensor.name]) == 2
    assert ops["MultiHeadAttention"] == layers and ops["RotaryEmbedding"] == 2 * layers
    assert ops["MatMul"] == 4 * layers and ops["SkipLayerNormalization"] == 2 * layers
    assert not {"Shape", "Slice", "Concat", "Transpose", "Constant"} & set(ops)
    assert sum(ops.values()) == 13 * layers + 3, ops


def test_what_the_writer_does_not_reproduce_is_refused_with_the_reason(tmp_path):
    """A scaled rotary table, an activation without an ORT kernel, a graph without last_hidden_state: each named,
    and the export then serves the traced graph (export.context.ExportContext.fuse)."""
    import onnx
    from onnx import TensorProto, helper

    from export.modernbert_graph import fusable

    traced = tmp_path / "traced.onnx"
    onnx.save(_standalone(_model()), str(traced))
    logits_only = tmp_path / "logits.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(logits_only))

    config = _model().config
    assert fusable(traced, config) is None
    assert "last_hidden_state" in fusable(logits_only, config)
    config.hidden_activation = "silu"
    assert "silu" in fusable(traced, config)
    config.hidden_activation = "gelu"
    config.rope_scaling = {"rope_type": "linear", "factor": 2.0}
    assert "rope_scaling" in fusable(traced, config)
