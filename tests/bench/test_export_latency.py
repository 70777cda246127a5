"""bench/export_latency.py: inputs in the model's own special tokens, and its JSON through bench.report."""

import json

import numpy as np
import pytest

from bertforge import contract
from bertforge.tasks import EMBED, FILL_MASK


def test_random_inputs_mask_with_a_roberta_tokenizers_own_tokens(tmp_path):
    """Byte-level BPE (<s> </s> <mask>): contract's [CLS]/[SEP]/[MASK] ids would be other, ordinary tokens here."""
    from bench.export_latency import random_inputs
    from bertforge.testing import byte_level_bpe, make_sentences

    tokenizer = byte_level_bpe(tmp_path / "roberta", make_sentences(400, seed=3))
    bert_ids = [contract.SPECIAL_TOKEN_IDS[token] for token in (contract.CLS_TOKEN, contract.SEP_TOKEN, contract.MASK_TOKEN)]
    assert [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id] != bert_ids
    feeds = random_inputs(np.random.default_rng(0), 8, 32, tokenizer, len(tokenizer))
    ids = feeds["input_ids"]  # (B, T)
    assert ids.shape == (8, 32) and "token_type_ids" not in feeds  # RoBERTa's tokenizer has none
    assert (ids[:, 0] == tokenizer.cls_token_id).all() and (ids[:, -1] == tokenizer.sep_token_id).all()
    masks = ids.reshape(-1)[feeds["mask_positions"]]
    assert (masks == tokenizer.mask_token_id).all() and (ids[:, 1] == tokenizer.mask_token_id).all()
    assert (ids == tokenizer.mask_token_id).sum() == len(feeds["mask_positions"])  # every mask is listed
    others = np.delete(ids[:, 1:-1].reshape(-1), np.flatnonzero(ids[:, 1:-1].reshape(-1) == tokenizer.mask_token_id))
    assert not set(others.tolist()) & set(tokenizer.all_special_ids)  # the rest are ordinary tokens


def test_random_inputs_for_bert_keep_token_type_ids(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from bench.export_latency import random_inputs

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    feeds = random_inputs(np.random.default_rng(0), 1, 16, tokenizer, len(tokenizer))
    assert feeds["input_ids"][0, 0] == contract.SPECIAL_TOKEN_IDS[contract.CLS_TOKEN]
    assert feeds["input_ids"][0, 1] == contract.SPECIAL_TOKEN_IDS[contract.MASK_TOKEN]
    assert (feeds["token_type_ids"] == 0).all() and (feeds["attention_mask"] == 1).all()


@pytest.mark.slow
def test_bench_export_writes_its_figures_with_provenance(tmp_path, tiny_bert_dir):
    from bench.export_latency import main

    output = tmp_path / "results" / "export_latency.json"
    assert main(["--model", str(tiny_bert_dir), "--rounds", "2", "--threads", "1", "--json", str(output)]) == 0
    results = json.loads(output.read_text())
    assert {"model", "threads", "rounds", "shapes", "parity"} <= set(results)  # the keys docs/export.md describes
    assert {"machine", "versions", "git", "command", "config"} <= set(results)  # bench.report's provenance
    assert results["config"] == {"model": str(tiny_bert_dir), "rounds": 2, "threads": 1}
    rows = results["shapes"]["b1x32"][FILL_MASK]
    assert rows["torch eager fp32"]["speedup_vs_torch"] == 1.0 and "torch eager fp32 (masked head)" in rows
    assert results["shapes"]["b1x32"][EMBED]["torch eager fp32"]["median_ms"] > 0
