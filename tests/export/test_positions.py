"""Tokens per input: one rule for every task (export.context.tokens_per_input over export.families.position_limit).

An XLM-RoBERTa reranker whose tokenizer sets no model_max_length: its 66 position rows give 64 tokens (positions
start after padding_idx), never 66, which would index past the position table on the longest pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge.tasks import RERANK
from tests.conftest import make_documents, make_sentences

POSITION_ROWS = 66  # XLM-R: padding_idx (1) + 1 rows before the first position, so 64 usable


def build_xlmr_reranker(folder, texts: list[str]):
    """A random tiny XLMRobertaForSequenceClassification (one label) with a byte-level BPE tokenizer whose
    tokenizer_config.json has no model_max_length (transformers then reports a huge number)."""
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    from bertforge.testing import byte_level_bpe

    tokenizer = byte_level_bpe(folder, texts)
    config_file = folder / "tokenizer_config.json"
    settings = json.loads(config_file.read_text())
    settings.pop("model_max_length")
    config_file.write_text(json.dumps(settings))
    assert AutoTokenizer.from_pretrained(folder).model_max_length > 10**6  # the case the rule must hold for
    torch.manual_seed(5)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=POSITION_ROWS, num_labels=1,
                              pad_token_id=tokenizer.pad_token_id, initializer_range=0.3)
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_reranker_without_a_tokenizer_limit_gets_the_families_position_limit(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertforge.served_model import ServedModelDir
    from export import export_to_repository
    from export.families import FAMILIES, position_limit
    from serve.runtime import load_runtime

    folder = build_xlmr_reranker(tmp_path / "xlmr", make_sentences(300, seed=4))
    limit = position_limit(FAMILIES["xlm-roberta"], json.loads((folder / "config.json").read_text()))
    assert limit == POSITION_ROWS - 2
    report = export_to_repository(folder, tmp_path / "repo", precision="fp32", progress=False)
    assert report.task == RERANK and report.passed and report.max_length == limit
    assert ServedModelDir(tmp_path / "repo" / RERANK).settings().max_length == limit
    # the longest pair the server takes, as served and in PyTorch: the document cut to fit 64 tokens
    query, document = "the committee approved", make_documents(1, sentences_per_document=20, seed=6)[0]
    runtime = load_runtime(tmp_path / "repo" / RERANK / "1")
    (request,) = requests = [runtime.parse(query.encode(), document.encode(), {})]
    assert runtime.tokenize(requests) == [None] and len(request.ids) == limit
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(query, document, truncation="only_second", max_length=limit, return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == request.ids
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = model(**encoded).logits.numpy()[0]
    np.testing.assert_allclose(runtime.answer(requests)[0]["LOGITS"], expected, atol=1e-4)
