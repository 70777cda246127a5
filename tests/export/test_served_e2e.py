"""An exported repository served by a real tritonserver answers like PyTorch."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_real_tritonserver_serves_exported_repository(tmp_path, tiny_bert_dir):
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    from export import export_to_repository
    from serve.client import BertforgeClient
    from serve.launcher import running_server

    repo = tmp_path / "repo"
    export_to_repository(tiny_bert_dir, repo, precision="fp32", normalize=True, progress=False)
    text = "the committee [MASK] the report ."
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = BertForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
    expected_probs, expected_ids = logits[position].softmax(-1).topk(3)

    with running_server(repo, grpc_port=0, http_port=0, metrics_port=0) as server:
        with BertforgeClient(server.endpoints.grpc_url) as client:
            (predictions,) = client.fill_mask([text], top_k=3)
            embeddings = client.embed(["the bank .", "a longer text about the council and the budget ."])
    assert [p.token_id for p in predictions[0]] == expected_ids.tolist()
    np.testing.assert_allclose([p.score for p in predictions[0]], expected_probs.numpy(), atol=1e-5)
    assert embeddings.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)
