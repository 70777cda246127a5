"""Precision variants of one fp32 task graph: fused fp32, int8 dynamic, int8 static, fp16.

Every variant starts from the fused graph (ONNX Runtime's transformer fusions: Attention,
SkipLayerNormalization, BiasGelu, EmbedLayerNormalization); graph inputs and outputs stay
int64/float32 whatever the precision, so the served model never sees another dtype.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# Ops kept in float32 in the fp16 graph: normalisations and softmax overflow or lose too much in fp16,
# and the pooling/top-k tail is cheap.
FP16_KEEP_FLOAT32 = ["LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax", "TopK",
                     "ReduceSum", "Sqrt", "Div", "Max"]
FUSED_OPS = ("Attention", "QAttention", "MultiHeadAttention", "RotaryEmbedding", "SkipLayerNormalization", "EmbedLayerNormalization", "QEmbedLayerNormalization",
             "BiasGelu", "Gelu", "FastGelu")


def fuse(fp32_path: Path, target: Path, *, num_heads: int, hidden_size: int, optimize: bool = True) -> Path:
    """The fused fp32 graph every variant starts from (or the plain graph with optimize=False)."""
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    if optimize:
        _optimizer(fp32_path, num_heads, hidden_size).save_model_to_file(str(target))
    else:
        onnx.save(onnx.load(str(fp32_path)), str(target))
    return target


def build_variant(fused: Path, precision: str, target: Path, *, calibration_feeds: Iterable[dict] | None = None,
                  recipe=None) -> dict:
    """Write `target` (one .onnx file) for `precision` from the fused fp32 graph; returns what was done.
    int8 takes a `recipe` (export.quantize; default per-channel dynamic); int8-static is the static recipe."""
    import onnx

    from export import quantize

    target.parent.mkdir(parents=True, exist_ok=True)
    if precision == "fp32":
        onnx.save(onnx.load(str(fused)), str(target))
    elif precision in ("int8", "int8-static"):
        recipe = recipe or (quantize.STATIC if precision == "int8-static" else quantize.PER_CHANNEL)
        quantize.quantize(fused, target, recipe, calibration_feeds)
    elif precision == "fp16":
        # on the fused graph, so its fused ops get fp16 kernels on GPU; OnnxModel's conversion knows the fused ops
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = OnnxModel(onnx.load(str(fused)))
        model.convert_float_to_float16(keep_io_types=True, op_block_list=FP16_KEEP_FLOAT32)
        model.save_model_to_file(str(target))
    else:
        raise ValueError(f"unknown precision {precision!r}")
    details = describe(target, precision)
    if recipe is not None:
        details["recipe"] = recipe.summary()
    return details


def gate_session(path: Path, precision: str):
    """An ONNX Runtime session of the variant that also returns the fill-mask graph's full softmax at the masks
    (`head/probs`), so the gate can measure distribution distances; the served file is unchanged."""
    import onnx
    import onnxruntime as ort

    from export.parity import GATE_PROBS_OUTPUT, PROBS_OUTPUT

    model = onnx.load(str(path))
    # the head's Softmax keeps its node name through fusion, quantization and fp16 (which may make it float16)
    softmax = next((node for node in model.graph.node if node.name == PROBS_OUTPUT + "/Softmax"), None)
    if softmax is not None:
        model.graph.node.append(onnx.helper.make_node("Cast", [softmax.output[0]], [GATE_PROBS_OUTPUT],
                                                      to=onnx.TensorProto.FLOAT))
        model.graph.output.append(onnx.helper.make_tensor_value_info(GATE_PROBS_OUTPUT, onnx.TensorProto.FLOAT,
                                                                     None))
    return ort.InferenceSession(model.SerializeToString(), providers=session_providers(precision))


def _optimizer(path: Path, num_heads: int, hidden_size: int):
    """ONNX Runtime's BERT fusions (python-level, opt_level=0: the graph stays portable across CPU and GPU)."""
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0)


def describe(path: Path, precision: str) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(node.op_type for node in model.graph.node)
    return {"precision": precision, "bytes": path.stat().st_size,
            "fused_ops": {op: ops[op] for op in FUSED_OPS if ops.get(op)}, "op_counts": dict(sorted(ops.items()))}


def session_providers(precision: str) -> list[str]:
    """Providers to check/run a variant with: CUDA first when this onnxruntime has it (fp16 targets the GPU)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    preferred = ["CUDAExecutionProvider"] if precision == "fp16" else []
    return [name for name in preferred if name in available] + ["CPUExecutionProvider"]
