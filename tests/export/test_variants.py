"""Precision variants (int8 dynamic/static, fp16), a BERT of another shape without MLM head, and --output mode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge.served_model import ServingOptions
from bertforge.tasks import EMBED, FILL_MASK
from tests.conftest import COUNTED_SEARCH


def _ops(path) -> dict[str, int]:
    from collections import Counter

    import onnx

    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.int8_kernel
def test_int8_repository_is_fused_quantized_and_within_gates(tmp_path, tiny_bert_dir):
    from export import export_to_repository

    repo = tmp_path / "repo"
    report = export_to_repository(tiny_bert_dir, repo, precision="int8", progress=False, **COUNTED_SEARCH)
    fill = report.tasks["fill_mask"].variants["int8"]
    text = fill.parity["by_source"]["text"]
    assert fill.passed and text["tie_aware_agreement"] >= 0.98 and text["masked_tokens"] >= 2000
    assert report.tasks["embed"].variants["int8"].parity["by_source"]["text"]["min_cosine"] >= 0.99
    assert fill.recipe["name"] == fill.search["winner"]
    ops = _ops(repo / FILL_MASK / "1" / "model.onnx")
    # the residual LayerNorms: fused, or split where that was timed faster (export/layer_norm.py)
    split = report.tasks["fill_mask"].layer_norm["form"] != "SkipLayerNormalization"
    assert ops["LayerNormalization" if split else "SkipLayerNormalization"] >= 4
    assert ops["QAttention"] + ops["MatMulInteger"] + ops["QLinearMatMul"] > 0  # quantized, whichever recipe won
    serving = json.loads((repo / EMBED / "1" / "serving.json").read_text())["settings"]
    assert serving["precision"] == "int8"
    assert serving["max_batch_size"] == ServingOptions().max_batch_size  # the token budget splits, not a request cap
    assert serving["max_batch_tokens"] == ServingOptions().max_batch_tokens


@pytest.mark.int8_kernel
def test_other_config_without_mlm_head(tmp_path, tiny_corpus_dir):
    """Another vocabulary, other sizes, BertModel only: embed is exported and verified, fill_mask is skipped."""
    from export import export_to_repository
    from serve.runtime import load_runtime
    from serve.text import TextRequest
    from tests.conftest import build_tiny_bert, make_sentences
    from train.tokenizer import train_wordpiece_tokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    train_wordpiece_tokenizer(make_sentences(400, seed=7), tokenizer_dir, vocab_size=150, model_max_length=40)
    model = build_tiny_bert(tmp_path / "model", tokenizer_dir, with_mlm_head=False, hidden_size=48,
                            num_attention_heads=3, num_hidden_layers=3, intermediate_size=96, max_position_embeddings=40)
    repo = tmp_path / "repo"
    report = export_to_repository(model, repo, precision="int8", pooling="cls", normalize=True, progress=False,
                                  **COUNTED_SEARCH)
    assert list(report.tasks) == ["embed"] and "no MLM head" in report.notes[0]
    assert not (repo / FILL_MASK).exists()
    assert report.max_length == 40
    runtime = load_runtime(repo / EMBED / "1")
    requests = [TextRequest(text=text, top_k=1, truncation="truncate") for text in make_sentences(3, seed=9)]
    runtime.tokenize(requests)
    embeddings = runtime.embed(requests)
    assert embeddings.shape == (3, 48) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)


@pytest.mark.int8_kernel
def test_output_mode_all_variants_load_in_optimum(tmp_path, tiny_bert_dir):
    """--output: every precision of the served graphs and of Optimum-loadable graphs, each gated."""
    import onnx
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTModelForMaskedLM
    from transformers import AutoTokenizer, pipeline

    from export import export_onnx

    output = tmp_path / "onnx"
    report = export_onnx(tiny_bert_dir, output, precision="all", progress=False, **COUNTED_SEARCH)
    assert set(report.tasks) == {"fill_mask", "embed", "masked-lm", "feature-extraction"}
    for target in report.tasks.values():
        assert set(target.variants) == {"fp32", "int8", "int8-static", "fp16"}
        assert all(variant.passed for variant in target.variants.values())
    assert json.loads((output / "export_report.json").read_text())["passed"] is True
    # static int8 has calibrated quantized MatMuls; fp16 keeps float32 outputs with fp16 weights inside
    static_ops = _ops(output / "fill_mask" / "model_int8_static.onnx")
    assert static_ops["QLinearMatMul"] > 0 and static_ops["QuantizeLinear"] > 0
    fp16 = onnx.load(str(output / "embed" / "model_fp16.onnx"))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in fp16.graph.initializer)
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert report.tasks["fill_mask"].variants["fp16"].parity["top1_agreement"] >= 0.99
    # Optimum loads the plain folders, and a transformers pipeline runs on them
    tokenizer = AutoTokenizer.from_pretrained(output / "masked-lm")
    masked_lm = ORTModelForMaskedLM.from_pretrained(output / "masked-lm", file_name="model_int8.onnx")
    predictions = pipeline("fill-mask", model=masked_lm, tokenizer=tokenizer)("the minister [MASK] the report .")
    assert len(predictions) == 5 and all(0.0 <= p["score"] <= 1.0 for p in predictions)
    features = ORTModelForFeatureExtraction.from_pretrained(output / "feature-extraction")
    vectors = np.asarray(pipeline("feature-extraction", model=features, tokenizer=tokenizer)("the bank ."))
    assert vectors.shape[-1] == 32


def test_folder_with_only_vocab_txt(tmp_path, tiny_bert_dir):
    """A user folder with a slow-tokenizer vocab.txt only: the repository still gets tokenizer.json (the server's)."""
    import shutil

    from export import export_to_repository

    model = shutil.copytree(tiny_bert_dir, tmp_path / "model")
    (model / "tokenizer.json").unlink()
    repo = tmp_path / "repo"
    export_to_repository(model, repo, precision="fp32", tasks=("embed",), progress=False)
    assert (repo / EMBED / "1" / "tokenizer" / "tokenizer.json").is_file()
