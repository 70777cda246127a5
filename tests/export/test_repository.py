"""export_to_repository (fp32): layout, contract of the graphs, served outputs == PyTorch, atomic rewrite."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge import contract
from bertforge.tasks import EMBED, FILL_MASK


@pytest.fixture(scope="module")
def fp32_repo(tmp_path_factory, tiny_bert_dir):
    from export import export_to_repository

    repo = tmp_path_factory.mktemp("export_fp32") / "repo"
    report = export_to_repository(tiny_bert_dir, repo, precision="fp32", progress=False)
    return repo, report


def test_repository_layout_and_report(fp32_repo):
    repo, report = fp32_repo
    for model in (FILL_MASK, EMBED):
        version = repo / model / "1"
        for name in ("model.onnx", "model.py", "serving.json", "tokenizer/tokenizer.json"):
            assert (version / name).is_file(), f"{model}/1/{name} missing"
        assert f'name: "{model}"' in (repo / model / "config.pbtxt").read_text()
        serving = json.loads((version / "serving.json").read_text())
        assert serving["settings"]["precision"] == "fp32"
        assert serving["settings"]["max_length"] == 64  # the tiny model's positions
    saved = json.loads((repo / "export_report.json").read_text())
    assert saved["passed"] is True and saved["written"] is True
    from export import read_report

    assert read_report(repo / "export_report.json").to_dict() == saved == report.to_dict()  # one shape, both ways
    assert report.tasks["fill_mask"].variants["fp32"].parity["top1_agreement"] == 1.0
    assert report.tasks["fill_mask"].variants["fp32"].parity["max_abs_diff"] <= 1e-4
    assert report.tasks["embed"].variants["fp32"].parity["max_abs_diff"] <= 1e-4
    # fusions happened: Attention and BiasGelu in the served graph, and the residual LayerNorms fused unless the
    # split form was timed faster (export/layer_norm.py)
    fused = report.tasks["embed"].variants["fp32"].fused_ops
    assert {"Attention", "BiasGelu"} <= set(fused)
    split = report.tasks["embed"].layer_norm["form"] != "SkipLayerNormalization"
    assert ("SkipLayerNormalization" in fused) != split
    # no staging folders left beside the repository
    assert not [p for p in repo.parent.iterdir() if "staging" in p.name]


def test_graph_contract_names_and_dtypes(fp32_repo):
    import onnx

    repo, _ = fp32_repo
    fill = onnx.load(str(repo / FILL_MASK / "1" / "model.onnx"))
    inputs = {i.name: i.type.tensor_type.elem_type for i in fill.graph.input}
    assert inputs == {**{name: onnx.TensorProto.INT64 for name in contract.ONNX_ENCODER_INPUTS},
                      contract.ONNX_MASK_POSITIONS: onnx.TensorProto.INT64}
    outputs = {o.name: o.type.tensor_type.elem_type for o in fill.graph.output}
    assert outputs == {contract.ONNX_TOP_IDS: onnx.TensorProto.INT64, contract.ONNX_TOP_PROBS: onnx.TensorProto.FLOAT}
    embed = onnx.load(str(repo / EMBED / "1" / "model.onnx"))
    assert [o.name for o in embed.graph.output] == [contract.ONNX_SENTENCE_EMBEDDING]
    assert {i.name for i in embed.graph.input} == set(contract.ONNX_ENCODER_INPUTS)
    assert max(opset.version for opset in fill.opset_import if opset.domain in ("", "ai.onnx")) >= 17


def test_head_runs_only_at_mask_positions(fp32_repo):
    """The vocabulary projection is fed by Gather(mask_positions): no [batch, seq, vocab] tensor exists."""
    import onnx

    repo, _ = fp32_repo
    graph = onnx.load(str(repo / FILL_MASK / "1" / "model.onnx")).graph
    producers = {output: node for node in graph.node for output in node.output}
    decoder = next(node for node in graph.node if "head/decoder_weight" in node.input)
    # walk back from the decoder input to the encoder output
    seen, stack, gathered = set(), [name for name in decoder.input if name != "head/decoder_weight"], False
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Gather" and contract.ONNX_MASK_POSITIONS in node.input:
            gathered = True
            continue  # do not walk into the encoder
        stack.extend(node.input)
    assert gathered, "the MLM head is not fed by a Gather over mask_positions"


def test_served_fill_mask_matches_pytorch(fp32_repo, tiny_bert_dir):
    """Through the serving runtime (tokenize, pad to longest, flat mask positions) vs PyTorch top-k."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    from serve.runtime import load_runtime
    from serve.text import TextRequest

    repo, _ = fp32_repo
    runtime = load_runtime(repo / FILL_MASK / "1")
    texts = ["the minister [MASK] the new budget on monday .", "a [MASK] rejected the report [MASK] ."]
    requests = [TextRequest(text=text, top_k=5, truncation="truncate") for text in texts]
    assert runtime.tokenize(requests) == [None, None]
    results = runtime.fill_mask(requests)

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = BertForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    for text, result in zip(texts, results):
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**encoded).logits[0]
        positions = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[:, 0]
        probs, ids = logits[positions].softmax(-1).topk(5)
        np.testing.assert_array_equal(result.token_ids, ids.numpy())
        np.testing.assert_allclose(result.scores, probs.numpy(), atol=1e-5)


def test_served_embeddings_mean_pool_real_tokens(fp32_repo, tiny_bert_dir):
    import torch
    from transformers import AutoTokenizer, BertModel

    from serve.runtime import load_runtime
    from serve.text import TextRequest

    repo, _ = fp32_repo
    runtime = load_runtime(repo / EMBED / "1")
    texts = ["short text .", "a much longer text about the committee and the budget and the bank ."]
    requests = [TextRequest(text=text, top_k=1, truncation="truncate") for text in texts]
    runtime.tokenize(requests)
    embeddings = runtime.embed(requests)  # padded batch: the short text has padding
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).eval()
    for text, embedding in zip(texts, embeddings):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        np.testing.assert_allclose(embedding, hidden.mean(0).numpy(), atol=1e-5)


def test_rewrite_swaps_models_atomically(fp32_repo, tiny_bert_dir):
    """A second export replaces the models in one rename each; the old files never mix with the new."""
    from export import export_to_repository

    repo, _ = fp32_repo
    before = (repo / EMBED / "1" / "model.onnx").stat().st_ino
    export_to_repository(tiny_bert_dir, repo, precision="fp32", tasks=("embed",), normalize=True, pooling="cls",
                         progress=False)
    serving = json.loads((repo / EMBED / "1" / "serving.json").read_text())["settings"]
    assert serving["pooling"] == "cls" and serving["normalize"] is True
    assert (repo / EMBED / "1" / "model.onnx").stat().st_ino != before
    assert (repo / FILL_MASK / "1" / "model.onnx").is_file()  # untouched
    assert not [p for p in repo.parent.iterdir() if "staging" in p.name]
