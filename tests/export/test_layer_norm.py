"""The residual LayerNorm's two forms (export/layer_norm.py): the split computes what the fused op does, a loaded
ONNX Runtime session keeps it split, and the export records which form was timed faster and serves that one."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest


@pytest.fixture(scope="module")
def fused_bert(tmp_path_factory, tiny_bert_dir):
    from export.context import optimum_encoder
    from export.variants import fuse

    folder = tmp_path_factory.mktemp("layer_norm")
    encoder = optimum_encoder(tiny_bert_dir, folder / "optimum", 18)
    return fuse(encoder, folder / "model.fused.onnx", num_heads=4, hidden_size=64)


def _ops(path) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _feeds(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 100, size=(4, 24))
    mask = np.ones_like(ids)
    mask[1, 15:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _session_ops(path, tmp_path) -> Counter:
    """The ops of `path` after ONNX Runtime's own session-level optimisations (what a served session runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.session.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _ops(tmp_path / f"{path.stem}.session.onnx")


def test_split_graph_computes_what_the_fused_one_does(fused_bert, tmp_path):
    import onnxruntime as ort

    from export.layer_norm import split_skip_layer_norm

    fused_count = _ops(fused_bert)["SkipLayerNormalization"]
    assert fused_count == 4  # 2 layers x (attention output, feed-forward output)
    split = tmp_path / "split.onnx"
    assert split_skip_layer_norm(fused_bert, split) == fused_count
    ops = _ops(split)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == fused_count
    for seed in range(3):  # fresh inputs each time
        feeds = _feeds(seed)
        (expected,) = ort.InferenceSession(str(fused_bert)).run(None, feeds)
        (actual,) = ort.InferenceSession(str(split)).run(None, feeds)
        np.testing.assert_allclose(actual, expected, atol=2e-5, rtol=1e-4)


def test_a_loaded_session_keeps_the_split(fused_bert, tmp_path):
    """ONNX Runtime fuses Add(bias) -> Add(residual) -> LayerNormalization back into SkipLayerNormalization when
    a session loads; the residual-first order is not fused back, so the served session runs the faster form."""
    import onnx

    from export.layer_norm import split_skip_layer_norm

    split = tmp_path / "split.onnx"
    count = split_skip_layer_norm(fused_bert, split)
    session_ops = _session_ops(split, tmp_path)
    assert session_ops["SkipLayerNormalization"] == 0 and session_ops["LayerNormalization"] == count

    # the other order, written here by swapping each pair of Adds, is fused back: the order is what matters
    model = onnx.load(str(split))
    for node in model.graph.node:
        if node.name.endswith("/AddResidual"):
            prefix = node.name.removesuffix("/AddResidual")
            bias = next(n for n in model.graph.node if n.name == f"{prefix}/AddBias")
            hidden, skip = node.input
            bias_input = bias.input[1]
            node.input[:] = [hidden, bias_input]
            bias.input[:] = [node.output[0], skip]
    swapped = tmp_path / "swapped.onnx"
    onnx.save(model, str(swapped))
    assert _session_ops(swapped, tmp_path)["SkipLayerNormalization"] == count


def test_choice_is_timed_and_keeps_the_faster_form(fused_bert, tmp_path, monkeypatch):
    import shutil

    from export import layer_norm

    source = shutil.copy(fused_bert, tmp_path / "model.fused.onnx")
    feeds = _feeds()
    for fused_ms, split_ms, form in ((10.0, 9.0, "Add + LayerNormalization"), (10.0, 9.9, "SkipLayerNormalization")):
        monkeypatch.setattr("export.int8_search.paired_latency",
                            lambda paths, feeds, f=fused_ms, s=split_ms: {"fused": f, "split": s})
        chosen, measurement = layer_norm.choose_layer_norm_form(source, feeds)
        assert measurement["form"] == form and measurement["nodes"] == 4
        ops = _ops(chosen)
        assert (ops["SkipLayerNormalization"] == 0) == (form != "SkipLayerNormalization")
    # measured for real: a choice and both times, whichever form wins on this CPU
    monkeypatch.undo()
    chosen, measurement = layer_norm.choose_layer_norm_form(source, feeds)
    assert measurement["fused_ms"] > 0 and measurement["split_ms"] > 0 and chosen.is_file()


def test_export_serves_the_recorded_form(tmp_path, tiny_bert_dir):
    from bertforge.tasks import EMBED
    from export import export_to_repository
    from export.report import read_report

    repo = tmp_path / "repo"
    export_to_repository(tiny_bert_dir, repo, precision="fp32", progress=False, tasks=[EMBED])
    target = read_report(repo).tasks[EMBED]
    served = _ops(repo / EMBED / "1" / "model.onnx")
    assert target.layer_norm["form"] in ("SkipLayerNormalization", "Add + LayerNormalization")
    split = target.layer_norm["form"] != "SkipLayerNormalization"
    assert (served["SkipLayerNormalization"] == 0) == split
    assert served["LayerNormalization"] >= (4 if split else 0)
