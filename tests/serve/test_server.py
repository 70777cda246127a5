"""A real tritonserver serving the tiny BERT: answers vs PyTorch fp32, batching, bad inputs, health, binding."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import time
import urllib.request

import numpy as np
import pytest

from bertforge import contract
from bertforge.served_model import ServedModelDir
from bertforge.tasks import EMBED, FILL_MASK
from serve.client import AsyncBertforgeClient, BertforgeClient, ServingError
from tests.conftest import make_sentences

pytestmark = pytest.mark.slow  # starts tritonserver (a few seconds) and PyTorch references


@pytest.fixture(scope="module")
def client(grpc_url):
    with BertforgeClient(grpc_url, timeout_s=30) as client:
        yield client


def masked_texts(count: int, seed: int) -> list[str]:
    """Fresh sentences with one or two words replaced by [MASK]."""
    rng = random.Random(seed)
    texts = []
    for sentence in make_sentences(count, seed):
        words = sentence.split()
        for position in rng.sample(range(len(words)), rng.choice([1, 2])):
            words[position] = contract.MASK_TOKEN
        texts.append(" ".join(words))
    return texts


def torch_mask_probs(reference, text: str) -> np.ndarray:
    """(masks, vocab) softmax probabilities from PyTorch fp32, unpadded."""
    import torch

    tokenizer, model = reference
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    positions = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
    return logits[positions].softmax(-1).numpy()


def torch_mean_pooled(reference, text: str) -> np.ndarray:
    import torch

    tokenizer, model = reference
    with torch.no_grad():
        encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=64)
        hidden = model.bert(**encoded).last_hidden_state[0]  # (T, H)
    return hidden.mean(0).numpy()


def test_fill_mask_top_k_equals_pytorch_fp32(client, reference):
    seed = int.from_bytes(os.urandom(2), "little")
    texts = masked_texts(12, seed)
    served = client.fill_mask(texts, top_k=5)
    for text, masks in zip(texts, served):
        probs = torch_mask_probs(reference, text)  # (masks, vocab)
        assert len(masks) == len(probs), f"seed {seed}: {text!r}: one row per [MASK]"
        for row, predictions in zip(probs, masks):
            ids = np.array([p.token_id for p in predictions])
            scores = np.array([p.score for p in predictions])
            # same top-k values, and each served id has exactly that probability in PyTorch (ties may swap ids)
            np.testing.assert_allclose(scores, np.sort(row)[::-1][:5], atol=1e-6, err_msg=f"seed {seed}: {text!r}")
            np.testing.assert_allclose(row[ids], scores, atol=1e-6, err_msg=f"seed {seed}: {text!r}")
            tokenizer = reference[0]
            assert [p.token for p in predictions] == [tokenizer.decode([i]) for i in ids]


def test_embeddings_match_pytorch_mean_pooling(client, reference):
    texts = make_sentences(8, seed=int.from_bytes(os.urandom(2), "little"))
    served = client.embed(texts)
    expected = np.stack([torch_mean_pooled(reference, text) for text in texts])
    cosine = (served * expected).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(expected, axis=1)
    assert served.shape == expected.shape and served.dtype == np.float32
    assert cosine.min() >= 0.9999, cosine


def test_concurrent_requests_of_different_lengths_are_batched_and_each_correct(grpc_url, reference):
    import tritonclient.grpc as grpcclient

    rng = random.Random(7)
    sentences = make_sentences(40, seed=3)
    texts = [" ".join(rng.sample(sentences, rng.randint(1, 4))) for _ in range(48)]  # 10..~60 tokens

    async def send_all():
        async with AsyncBertforgeClient(grpc_url, timeout_s=60) as aio:
            return await aio.embed(texts, truncation="truncate")

    stats_client = grpcclient.InferenceServerClient(grpc_url)
    before = stats_client.get_inference_statistics(EMBED).model_stats[0]
    served = asyncio.run(send_all())
    # responses are sent before `execute` returns, and Triton records the statistics just after: poll briefly
    deadline = time.monotonic() + 10
    while True:
        after = stats_client.get_inference_statistics(EMBED).model_stats[0]
        if after.inference_count - before.inference_count >= len(texts) or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    # Triton merged the concurrent requests: fewer executions than requests, some batch size > 1
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == len(texts)
    assert executions < inferences, f"{executions} executions for {inferences} requests: nothing was batched"
    assert max(stat.batch_size for stat in after.batch_stats) > 1
    # ...and every request still got its own answer (padding to the batch's longest changes nothing)
    for text, embedding in zip(texts, served):
        expected = torch_mean_pooled(reference, text)
        cosine = embedding @ expected / np.linalg.norm(embedding) / np.linalg.norm(expected)
        assert cosine >= 0.9999, text


def test_top_k_parameter_and_several_masks(client):
    (masks,) = client.fill_mask("the minister [MASK] the [MASK] on monday.", top_k=3)
    assert len(masks) == 2 and all(len(row) == 3 for row in masks)
    assert all(row[0].score >= row[1].score >= row[2].score for row in masks)


BAD_REQUESTS = [
    (FILL_MASK, "", {}, "text is empty"),
    (FILL_MASK, "   ", {}, "text is empty"),
    (FILL_MASK, "no mask in this text", {}, "no [MASK]"),
    (EMBED, "budget " * 100, {"truncation": "error"}, "longer than the model's maximum of 64 tokens"),
    (FILL_MASK, "budget " * 100 + "[MASK]", {}, "no [MASK] token within the first 64 tokens"),
    (FILL_MASK, b"caf\xe9 [MASK]", {}, "not valid UTF-8"),
    (FILL_MASK, "the [MASK]", {"top_k": 0}, "top_k must be an integer in 1..20"),
    (FILL_MASK, "the [MASK]", {"top_k": 99}, "top_k must be an integer in 1..20"),
    (EMBED, "hello", {"truncation": "sometimes"}, "truncation must be one of"),
    (EMBED, "hello", {"colour": "red"}, "unknown parameter"),
    (EMBED, "x" * 70_000, {}, "text is 70000 bytes; the limit is 65536"),
]


@pytest.mark.parametrize("model, text, parameters, message", BAD_REQUESTS)
def test_bad_text_gets_its_own_clear_error(grpc_url, client, model, text, parameters, message):
    import tritonclient.grpc as grpcclient

    raw = grpcclient.InferenceServerClient(grpc_url)
    tensor = grpcclient.InferInput(contract.TEXT_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text if isinstance(text, bytes) else text.encode()]], dtype=np.object_))
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        raw.infer(model, [tensor], parameters=parameters)
    assert message in caught.value.message()
    assert "INVALID_ARG" in str(caught.value.status())
    assert client.health()["ready"]


def _raw_infer(grpc_url, model, name, datatype, array):
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        grpcclient.InferenceServerClient(grpc_url).infer(model, [tensor])
    return caught.value.message()


def test_bad_tensors_models_and_batches_are_rejected(grpc_url, client, served_repo):
    max_batch_size = ServedModelDir.in_repo(served_repo, FILL_MASK).settings().max_batch_size
    text = np.array([[b"the [MASK]"]], dtype=np.object_)
    fill = FILL_MASK
    assert "unexpected inference input 'TEXTS'" in _raw_infer(grpc_url, fill, "TEXTS", "BYTES", text)
    assert "data-type is 'INT64', but model 'fill_mask' expects 'BYTES'" in _raw_infer(grpc_url, fill, "TEXT", "INT64", np.zeros((1, 1), np.int64))
    assert "unexpected shape" in _raw_infer(grpc_url, fill, "TEXT", "BYTES", np.repeat(text, 2, axis=1))
    too_many = np.repeat(text, max_batch_size + 1, axis=0)
    assert f"batch-size must be <= {max_batch_size}" in _raw_infer(grpc_url, fill, "TEXT", "BYTES", too_many)
    assert "send exactly one text per request" in _raw_infer(grpc_url, fill, "TEXT", "BYTES", np.repeat(text, 2, axis=0))
    assert "unknown model: 'summarize'" in _raw_infer(grpc_url, "summarize", "TEXT", "BYTES", text)
    assert client.health() == {"live": True, "ready": True, "models": {"fill_mask": True, "embed": True}}


def test_good_requests_succeed_next_to_bad_ones(grpc_url):
    texts = ["the minister [MASK] the report.", "no mask here", "a [MASK] reviewed the plan.", ""] * 4

    async def send_each():
        async with AsyncBertforgeClient(grpc_url, timeout_s=60) as aio:
            return await asyncio.gather(*(aio.fill_mask(text, top_k=2) for text in texts), return_exceptions=True)

    for text, outcome in zip(texts, asyncio.run(send_each())):
        if contract.MASK_TOKEN in text:
            assert isinstance(outcome, list) and len(outcome[0]) == 1 and len(outcome[0][0]) == 2
        else:
            assert isinstance(outcome, ServingError), text


def test_long_text_is_truncated_by_default(client):
    (embedding,) = client.embed("budget " * 200)
    assert embedding.shape == (32,) and np.isfinite(embedding).all()


def test_health_endpoints_and_metrics_show_average_batch_size(triton_server, client):
    client.embed(make_sentences(6, seed=5))
    endpoints = triton_server.endpoints
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{EMBED}/ready"):
        with urllib.request.urlopen(endpoints.http_url + path, timeout=5) as reply:
            assert reply.status == 200
    deadline = time.monotonic() + 10
    while True:  # counters are updated right after each execution: poll briefly
        with urllib.request.urlopen(endpoints.metrics_url, timeout=5) as reply:
            metrics = reply.read().decode()
        requests = _metric(metrics, "nv_inference_request_success", EMBED)
        executions = _metric(metrics, "nv_inference_exec_count", EMBED)
        if requests >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert requests >= 6 and 1 <= requests / executions <= requests


def _metric(text: str, name: str, model: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} not in metrics")


def test_server_binds_only_loopback_by_default(triton_server):
    import psutil

    listening = [conn.laddr for conn in psutil.Process(triton_server.pid).net_connections(kind="inet")
                 if conn.status == psutil.CONN_LISTEN]
    ports = {address.port for address in listening}
    endpoints = triton_server.endpoints
    assert {endpoints.grpc_port, endpoints.http_port, endpoints.metrics_port} <= ports
    assert all(_is_loopback(address.ip) for address in listening), listening


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # gRPC listens on ::ffff:127.0.0.1
    return (mapped or address).is_loopback
