"""Accuracy-driven int8: planted outlier dimensions break per-tensor int8, the search finds a recipe that holds,
and `auto` never leaves the user with nothing (the verdict on trained models: tests/train/test_int8_verdict.py)."""

from __future__ import annotations

import json

import pytest

from bertforge.tasks import EMBED


def _outlier_bert(folder, tokenizer_dir, initializer_range: float):
    """A tiny BERT (4 layers, hidden 64) with outliers planted; its fp32 outputs are the unplanted model's.
    Random weights of std 0.1+ (not BERT's 0.02) make each sub-layer matter, as in a trained model."""
    from bench.outliers import plant_outlier_dimensions
    from tests.conftest import build_tiny_bert

    plain = build_tiny_bert(folder / "plain", tokenizer_dir, seed=3, hidden_size=64, num_hidden_layers=4,
                            num_attention_heads=4, intermediate_size=128, initializer_range=initializer_range)
    return plant_outlier_dimensions(plain, folder / "outliers", channels=(5, 40), factor=60)


@pytest.fixture(scope="module")
def outlier_bert_dir(tmp_path_factory, tiny_tokenizer_dir):
    return _outlier_bert(tmp_path_factory.mktemp("outlier_bert"), tiny_tokenizer_dir, initializer_range=0.1)


def test_planting_keeps_the_fp32_model(outlier_bert_dir, tiny_tokenizer_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    from tests.conftest import build_tiny_bert

    plain = build_tiny_bert(tmp_path / "plain", tiny_tokenizer_dir, seed=3, hidden_size=64, num_hidden_layers=4,
                            num_attention_heads=4, intermediate_size=128, initializer_range=0.1)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    inputs = tokenizer(["the minister announced the new budget on monday."], return_tensors="pt")
    with torch.no_grad():
        before = BertForMaskedLM.from_pretrained(plain).eval()(**inputs).logits
        after = BertForMaskedLM.from_pretrained(outlier_bert_dir).eval()(**inputs).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_search_finds_a_recipe_where_per_tensor_int8_fails(outlier_bert_dir, tmp_path):
    from export import export_to_repository

    repo = tmp_path / "repo"
    report = export_to_repository(outlier_bert_dir, repo, precision="int8", tasks=("embed",), progress=False)
    variant = report.tasks["embed"].variants["int8"]
    candidates = {c["name"]: c for c in variant.search["candidates"] if "passed" in c}
    assert candidates["dynamic-per-tensor"]["passed"] is False  # the failure mode is real on this fixture
    assert variant.passed and variant.recipe["name"] != "dynamic-per-tensor"
    text = variant.parity["by_source"]["text"]
    assert text["min_cosine"] >= 0.99 and text["mean_cosine"] >= 0.995
    assert all("latency_ms" in c for c in candidates.values() if c["passed"])  # every passing one was timed
    serving = json.loads((repo / EMBED / "1" / "serving.json").read_text())
    assert serving["settings"]["precision"] == "int8"
    assert serving["info"]["recipe"]["name"] == variant.recipe["name"]


@pytest.mark.slow
def test_search_keeps_the_most_sensitive_nodes_fp32_when_no_fixed_recipe_passes(tmp_path, tiny_tokenizer_dir):
    from bertforge.cpu import CpuInfo, detect_cpu
    from export import export_to_repository
    from export.quantize import quantizable_nodes, search_recipes

    model = _outlier_bert(tmp_path, tiny_tokenizer_dir, initializer_range=0.3)  # stronger outliers' effect
    report = export_to_repository(model, tmp_path / "repo", precision="int8", tasks=("embed",), progress=False)
    variant = report.tasks["embed"].variants["int8"]
    assert variant.search["cpu"] == report.cpu == detect_cpu().summary()  # the CPU the gate ran on
    cpu = CpuInfo.from_summary(variant.search["cpu"])
    assert cpu.int8_kernel in variant.search["recipe_set"]  # the report names the kernel and the recipes
    fixed = variant.search["candidates"][:len(search_recipes(cpu))]
    assert [c["name"] for c in fixed] == [recipe.name for recipe in search_recipes(cpu)]
    assert not any(c["passed"] for c in fixed)
    kept = variant.recipe["keep_fp32"]
    base = variant.recipe["name"].split("+")[0]  # each base ranks the nodes under its own quantization
    ranking = next(c for c in variant.search["candidates"]
                   if c["name"] == "sensitivity" and c["base"] == base)["local_error"]
    assert variant.passed and 0 < len(kept) <= len(ranking) // 2
    assert kept == list(ranking)[:len(kept)]  # the most sensitive first
    quantized = set(quantizable_nodes(tmp_path / "repo" / "embed" / "1" / "model.onnx"))
    assert set(kept) <= quantized and len(quantized) == len(kept)  # exactly those stayed float MatMul/Attention


@pytest.mark.slow
def test_auto_falls_back_to_fp32_and_explicit_int8_fails(outlier_bert_dir, tmp_path):
    """Impossible int8 gates: auto serves fp32 and says why; --precision int8 exits 2 and writes nothing."""
    from bertforge.cli import main
    from export import export_to_repository

    impossible = {"int8_mean_cosine": 1.0, "int8_cosine": 1.0}
    report = export_to_repository(outlier_bert_dir, tmp_path / "repo", tasks=("embed",), search_seconds=5,
                                  progress=False, **impossible)
    chosen = report.tasks["embed"].chosen
    assert chosen.requested == "auto" and chosen.precision == "fp32" and "no int8 recipe passed" in chosen.reason
    assert json.loads((tmp_path / "repo" / "embed" / "1" / "serving.json").read_text())["settings"]["precision"] == "fp32"
    code = main(["export", "--model", str(outlier_bert_dir), "--repo", str(tmp_path / "cli"), "--precision", "int8",
                 "--tasks", "embed", "--set", "gates.int8_mean_cosine=1.0", "--set", "search_seconds=5", "--quiet"])
    assert code == 2 and not (tmp_path / "cli" / "embed").exists()
