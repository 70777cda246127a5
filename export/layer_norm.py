"""Which form of the residual LayerNorm the CPU variants run: ONNX Runtime's fused SkipLayerNormalization, or the
same sum as Add + LayerNormalization. Measured on the exporting machine; the faster form is kept.

    fused, measurement = choose_layer_norm_form(fused, timing_feeds)

Why: ONNX Runtime 1.31's CPU SkipLayerNormalization kernel ran 5-7x slower than an Add plus its LayerNormalization
kernel at BERT shapes on a Zen 4 (docs/performance.md), so the fused op cost 17 % of all-MiniLM-L6-v2's int8 time.
Whether that holds is a property of the CPU and the onnxruntime build, so both forms of the fused fp32 graph are
timed in alternation, and the split one is kept only when it is clearly faster. The fp16 (GPU) variant always
starts from the fused form (export.choice.Target.fused_for).

The split is written here because no library undoes a fusion: the optimizer's `enable_skip_layer_norm=False`
leaves Add(bias) -> Add(residual) -> LayerNormalization, which ONNX Runtime's session-level SkipLayerNormFusion
fuses again when the session loads. Adding the residual first and the bias second is the same sum in a pattern
that fusion does not match (tests/export/test_layer_norm.py checks that a loaded session keeps the split).
"""

from __future__ import annotations

from pathlib import Path

SKIP_LAYER_NORM = "SkipLayerNormalization"
SPLIT_MIN_GAIN = 0.02  # the split is kept only when at least 2 % faster: the fused form is the default


def split_skip_layer_norm(source: Path, target: Path) -> int:
    """Write `source` with every SkipLayerNormalization as Add(input, skip) [+ Add(bias)] + LayerNormalization;
    returns how many were split. Nodes whose mean/inv-std outputs are used are left fused."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    split = 0
    for node in nodes:
        if node.op_type != SKIP_LAYER_NORM or any(node.output[1:3]):
            model.graph.node.append(node)
            continue
        split += 1
        inputs = list(node.input) + [""] * (5 - len(node.input))
        hidden, skip, gamma, beta, bias = inputs[:5]
        epsilon = next((attribute.f for attribute in node.attribute if attribute.name == "epsilon"), 1e-12)
        total = node.output[3] if len(node.output) > 3 and node.output[3] else f"{node.name}/sum"
        residual = f"{node.name}/residual" if bias else total
        # residual first, bias second: Add(bias) -> Add(residual) -> LayerNormalization is what ORT fuses back
        model.graph.node.append(helper.make_node("Add", [hidden, skip], [residual], name=f"{node.name}/AddResidual"))
        if bias:
            model.graph.node.append(helper.make_node("Add", [residual, bias], [total], name=f"{node.name}/AddBias"))
        model.graph.node.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []),
                                                 [node.output[0]], name=f"{node.name}/LayerNormalization",
                                                 axis=-1, epsilon=epsilon))
    onnx.save(model, str(target))
    return split


def choose_layer_norm_form(fused: Path, feeds: dict) -> tuple[Path, dict]:
    """(the graph every CPU variant starts from, what was measured). Both forms are timed in alternation on
    `feeds` (export.int8_search.paired_latency); the split graph is written beside `fused` when it wins."""
    import onnx

    from export.int8_search import paired_latency

    if not any(node.op_type == SKIP_LAYER_NORM for node in onnx.load(str(fused), load_external_data=False).graph.node):
        return fused, {"form": "no SkipLayerNormalization in the graph"}
    split_path = fused.with_name(fused.stem + ".split-ln.onnx")
    count = split_skip_layer_norm(fused, split_path)
    times = paired_latency({"fused": fused, "split": split_path}, feeds)
    faster = times["split"] < (1 - SPLIT_MIN_GAIN) * times["fused"]
    batch = "x".join(str(n) for n in feeds["input_ids"].shape)
    measurement = {"form": "Add + LayerNormalization" if faster else SKIP_LAYER_NORM, "nodes": count,
                   "fused_ms": round(times["fused"], 2), "split_ms": round(times["split"], 2), "batch": batch,
                   "min_gain": SPLIT_MIN_GAIN}
    if not faster:
        split_path.unlink()
        return fused, measurement
    return split_path, measurement
