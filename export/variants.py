"""Precision variants of one fp32 task graph: fused fp32, int8 dynamic, int8 static, fp16.

Every variant starts from the fused graph (ONNX Runtime's transformer fusions: Attention,
SkipLayerNormalization, BiasGelu, EmbedLayerNormalization); graph inputs and outputs stay
int64/float32 whatever the precision, so the served model never sees another dtype.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# Ops kept in float32 in the fp16 graph: normalisations and softmax overflow or lose too much in fp16,
# and the pooling/top-k tail is cheap.
FP16_KEEP_FLOAT32 = ["LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax", "TopK",
                     "ReduceSum", "Sqrt", "Div", "Max"]
FUSED_OPS = ("Attention", "QAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "QEmbedLayerNormalization",
             "BiasGelu", "Gelu", "FastGelu")


def build_variant(fp32_path: Path, precision: str, target: Path, *, num_heads: int, hidden_size: int,
                  optimize: bool = True, calibration_feeds: Iterable[dict] | None = None) -> dict:
    """Write `target` (one .onnx file) for `precision`; returns what was done (op counts, fusions)."""
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    # Fuse (fp32); fp16 conversion happens on the fused graph so its fused ops get fp16 kernels on GPU
    fused = target.with_name(target.stem + ".fused.onnx")
    if optimize:
        optimized = _optimizer(fp32_path, num_heads, hidden_size)
        if precision == "fp16":
            optimized.convert_float_to_float16(keep_io_types=True, op_block_list=FP16_KEEP_FLOAT32)
            optimized.save_model_to_file(str(target))
            return _describe(target, precision)
        optimized.save_model_to_file(str(fused))
    else:
        fused = fp32_path
    # Quantize (or copy) the fused graph
    try:
        if precision == "fp32":
            onnx.save(onnx.load(str(fused)), str(target))
        elif precision == "int8":
            with _quiet_root_logger():
                _quantize_dynamic(fused, target)
        elif precision == "int8-static":
            if calibration_feeds is None:
                raise ValueError("int8-static needs calibration data")
            with _quiet_root_logger():
                _quantize_static(fused, target, calibration_feeds)
        elif precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(fused)), keep_io_types=True, op_block_list=FP16_KEEP_FLOAT32)
            onnx.save(model, str(target))
        else:
            raise ValueError(f"unknown precision {precision!r}")
    finally:
        if fused != fp32_path:
            fused.unlink(missing_ok=True)
    return _describe(target, precision)


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantizer logs advice through the root logger on every call; keep the export output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _optimizer(path: Path, num_heads: int, hidden_size: int):
    """ONNX Runtime's BERT fusions (python-level, opt_level=0: the graph stays portable across CPU and GPU)."""
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0)


def _quantize_dynamic(source: Path, target: Path) -> None:
    """int8 weights, activations quantized per run (CPU). Works on the fused graph (QAttention), unlike ORTQuantizer.
    The MLM head stays fp32: it runs on the masked rows only, and its vocabulary projection decides top-1."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, nodes_to_exclude=_head_nodes(source),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _quantize_static(source: Path, target: Path, calibration_feeds: Iterable[dict]) -> None:
    """int8 with activation ranges calibrated on corpus text. MatMul only and MinMax: percentile/entropy
    calibration overflows on the attention mask's large negative constants (and fails on ragged batches).
    QOperator (QLinearMatMul) measured closer to fp32 than QDQ here: top-1 0.971 vs 0.933 on a 16k-vocab model."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self._feeds = iter(list(feeds))

        def get_next(self):
            return next(self._feeds, None)

    # the quantizer needs every tensor's type; the fusions dropped them, symbolic inference restores them
    inferred = source.with_name(source.stem + ".shapes.onnx")
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True), str(inferred))
    try:
        quantize_static(str(inferred), str(target), Reader(calibration_feeds), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=["MatMul"], nodes_to_exclude=_head_nodes(source), per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        inferred.unlink(missing_ok=True)


def _head_nodes(path: Path) -> list[str]:
    """Names of the MLM head's nodes (added by export.graphs under the `head/` prefix)."""
    import onnx

    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.node if node.name.startswith("head/")]


def _describe(path: Path, precision: str) -> dict:
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
