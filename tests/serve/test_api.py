"""The HTTP API beside tritonserver, driven by the clients people use: the openai SDK, huggingface_hub's
InferenceClient and plain HTTP, against a real tritonserver; answers checked against our gRPC client."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from serve.api.process import running_api
from serve.client import AsyncBertforgeClient, BertforgeClient
from serve.config import ApiConfig
from tests.conftest import make_sentences

pytestmark = pytest.mark.slow
TEXTS = ["the minister spoke to parliament.", "a short one", "the committee approved the budget on tuesday."]


@pytest.fixture(scope="module")
def api(served_repo, grpc_url):
    with running_api(served_repo, grpc_url, config=ApiConfig(port=0)) as process:  # 0: no clash with other runs
        yield process


@pytest.fixture(scope="module")
def grpc_vectors(grpc_url):
    with BertforgeClient(grpc_url) as client:
        return client.embed(TEXTS)


def cosines(first, second) -> np.ndarray:
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return (first * second).sum(1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))


def test_openai_sdk_float_and_base64_single_and_list(api, grpc_vectors, reference):
    from openai import OpenAI

    client = OpenAI(base_url=f"{api.url}/v1", api_key="not-needed-on-loopback", max_retries=0)
    tokenizer = reference[0]
    for encoding_format in ("float", "base64"):
        reply = client.embeddings.create(model="embed", input=TEXTS, encoding_format=encoding_format)
        assert [item.index for item in reply.data] == [0, 1, 2]
        vectors = np.array([decoded(item.embedding) for item in reply.data])
        assert vectors.shape == grpc_vectors.shape
        assert cosines(vectors, grpc_vectors).min() >= 0.99999
        expected_tokens = sum(len(tokenizer(text)["input_ids"]) for text in TEXTS)
        assert reply.usage.prompt_tokens == reply.usage.total_tokens == expected_tokens
        single = client.embeddings.create(model="embed", input=TEXTS[1], encoding_format=encoding_format)
        assert len(single.data) == 1 and cosines([decoded(single.data[0].embedding)], grpc_vectors[1:2])[0] >= 0.99999
    # the SDK's default (no encoding_format) asks for base64 and decodes it itself
    default = client.embeddings.create(model="embed", input=TEXTS[0])
    assert cosines([default.data[0].embedding], grpc_vectors[:1])[0] >= 0.99999
    assert {model.id for model in client.models.list()} == {"fill_mask", "embed"}


def decoded(embedding) -> np.ndarray:
    """An explicit encoding_format="base64" hands the SDK's caller the string (little-endian float32)."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding)


def test_openai_dimensions_and_token_id_input(api, grpc_vectors, sentence_transformer, reference):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0)
    reply = client.embeddings.create(model="embed", input=TEXTS, dimensions=8)
    vectors = np.array([item.embedding for item in reply.data])
    assert vectors.shape == (3, 8)
    assert cosines(vectors, sentence_transformer.encode(TEXTS, truncate_dim=8)).min() >= 0.999
    width = grpc_vectors.shape[1]
    with pytest.raises(BadRequestError, match=f"dimensions must be an integer in 1..{width}"):
        client.embeddings.create(model="embed", input="hi", dimensions=width + 1)
    # token ids: the text's tokens in the model's vocabulary; the server adds [CLS] ... [SEP] as the tokenizer does
    tokenizer = reference[0]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    from_ids = client.embeddings.create(model="embed", input=ids, encoding_format="float")
    assert cosines([item.embedding for item in from_ids.data], grpc_vectors).min() >= 0.99999
    assert from_ids.usage.prompt_tokens == sum(len(item) + 2 for item in ids)
    single = client.embeddings.create(model="embed", input=ids[0], dimensions=4, encoding_format="float")
    assert len(single.data) == 1 and cosines([single.data[0].embedding], grpc_vectors[:1, :4])[0] >= 0.99999
    with pytest.raises(BadRequestError, match="outside this model's vocabulary"):
        client.embeddings.create(model="embed", input=[[1, 10**6]])


def test_grpc_client_embed_options_equal_sentence_transformers(grpc_url, grpc_vectors, sentence_transformer):
    with BertforgeClient(grpc_url) as client:
        served = client.embed(TEXTS, prompt_name="query", dimensions=16)
        assert cosines(served, sentence_transformer.encode(TEXTS, prompt_name="query", truncate_dim=16)).min() >= 0.999
        unit = client.embed(TEXTS, dimensions=16, normalize=True)
        assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
        assert cosines(unit, grpc_vectors[:, :16]).min() >= 0.99999


def test_tei_embed_options_with_inference_client_and_plain_http(api, grpc_vectors, sentence_transformer):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{api.url}/embed")
    vector = client.feature_extraction(TEXTS[0], prompt_name="query", truncate=True, truncation_direction="Right")
    assert cosines(vector, sentence_transformer.encode(TEXTS[:1], prompt_name="query"))[0] >= 0.999
    assert abs(np.linalg.norm(vector) - 1) < 1e-5  # normalize defaults to true, as TEI's
    long_text = " ".join(make_sentences(20))  # over the model's 64 tokens
    right = client.feature_extraction(long_text, truncation_direction="Right")
    left = client.feature_extraction(long_text, truncation_direction="Left", normalize=False)
    assert cosines(right, sentence_transformer.encode([long_text]))[0] >= 0.999
    tokenizer = sentence_transformer.tokenizer
    tokenizer.truncation_side = "left"  # the author's library, cutting the start instead
    try:
        assert cosines(left, sentence_transformer.encode([long_text]))[0] >= 0.999
    finally:
        tokenizer.truncation_side = "right"
    assert cosines(left, right)[0] < 0.999  # the two ends differ: the comparison can fail
    with pytest.raises(Exception, match="413"):
        client.feature_extraction(long_text, truncate=False)
    reply = httpx.post(f"{api.url}/embed", json={"inputs": TEXTS, "dimensions": 8, "prompt_name": "passage"})
    expected = sentence_transformer.encode(TEXTS, prompt_name="passage", truncate_dim=8)
    assert reply.status_code == 200 and cosines(reply.json(), expected).min() >= 0.999
    assert np.allclose(np.linalg.norm(reply.json(), axis=1), 1, atol=1e-5)


def test_tei_tokenize_decode_and_info(api, reference):
    tokenizer = reference[0]
    text = "The minister spoke."
    (tokens,) = httpx.post(f"{api.url}/tokenize", json={"inputs": text}).json()
    assert [token["id"] for token in tokens] == tokenizer(text)["input_ids"]
    assert tokens[0] == {"id": tokenizer.cls_token_id, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert all(text[token["start"]:token["stop"]] == token["text"] and not token["special"] for token in tokens[1:-1])
    plain, prompted = httpx.post(f"{api.url}/tokenize", json={"inputs": [text, text], "add_special_tokens": False}).json(), \
        httpx.post(f"{api.url}/tokenize", json={"inputs": text, "prompt_name": "query"}).json()[0]
    assert len(plain) == 2 and [token["id"] for token in plain[0]] == tokenizer(text)["input_ids"][1:-1]
    assert [token["id"] for token in prompted] == tokenizer("query: " + text)["input_ids"]
    ids = tokenizer(text)["input_ids"]
    assert httpx.post(f"{api.url}/decode", json={"ids": ids}).json() == [tokenizer.decode(ids, skip_special_tokens=True)]
    both = httpx.post(f"{api.url}/decode", json={"ids": [ids, ids[:3]], "skip_special_tokens": False}).json()
    assert both == [tokenizer.decode(ids), tokenizer.decode(ids[:3])]
    info = httpx.get(f"{api.url}/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["family"] == "bert"
    assert info["prompts"] == {"query": "query: ", "passage": "passage: "} and info["default_prompt_name"] is None
    assert info["max_input_length"] == 64 and info["embedding_dim"] == 32 and info["max_client_batch_size"] == 2048
    assert info["max_batch_tokens"] > 0 and info["model_dtype"] == "float32" and info["auto_truncate"] is True
    from huggingface_hub import InferenceClient

    assert InferenceClient(model=api.url, provider="hf-inference").get_endpoint_info()["max_input_length"] == 64


def test_huggingface_inference_client_feature_extraction_and_fill_mask(api, grpc_url, grpc_vectors, reference):
    from huggingface_hub import InferenceClient
    from huggingface_hub.inference._generated.types import FillMaskOutputElement

    vector = InferenceClient(model=f"{api.url}/embed").feature_extraction(TEXTS[0])
    assert vector.shape == (1, grpc_vectors.shape[1]) and vector.dtype == np.float32
    assert abs(np.linalg.norm(vector) - 1) < 1e-5  # TEI normalises by default
    assert cosines(vector, grpc_vectors[:1])[0] >= 0.99999
    raw = InferenceClient(model=f"{api.url}/embed").feature_extraction(TEXTS[0], normalize=False)
    assert np.allclose(raw[0], grpc_vectors[0], atol=1e-5)

    text = "the minister [MASK] to parliament."
    answers = InferenceClient(model=f"{api.url}/fill-mask").fill_mask(text, top_k=4)
    with BertforgeClient(grpc_url) as client:
        (expected,) = client.fill_mask(text, top_k=4)[0]
    assert all(isinstance(answer, FillMaskOutputElement) for answer in answers)
    assert [answer.token for answer in answers] == [prediction.token_id for prediction in expected]
    assert [answer.token_str for answer in answers] == [prediction.token for prediction in expected]
    assert np.allclose([answer.score for answer in answers], [prediction.score for prediction in expected])
    tokenizer = reference[0]
    ids = tokenizer(text)["input_ids"]
    position = ids.index(tokenizer.mask_token_id)
    for answer in answers:  # `sequence` as transformers' FillMaskPipeline writes it
        filled = ids[:position] + [answer.token] + ids[position + 1:]
        assert answer.sequence == tokenizer.decode(filled, skip_special_tokens=True)
    # targets: only those tokens, ranked as the model ranks them
    targets = [expected[2].token, expected[0].token]
    ranked = InferenceClient(model=f"{api.url}/fill-mask").fill_mask(text, targets=targets)
    assert [answer.token_str for answer in ranked] == [expected[0].token, expected[2].token]


def test_fill_mask_with_two_masks_answers_one_list_per_mask(api):
    reply = httpx.post(f"{api.url}/fill-mask", json={"inputs": "a [MASK] and a [MASK].", "parameters": {"top_k": 2}})
    assert reply.status_code == 200, reply.text
    masks = reply.json()
    assert len(masks) == 2 and all(len(mask) == 2 for mask in masks)
    assert set(masks[0][0]) == {"score", "token", "token_str", "sequence"}
    assert "[CLS]" in masks[0][0]["sequence"]  # as transformers: special tokens kept when there are several masks
    many = httpx.post(f"{api.url}/fill-mask", json={"inputs": ["one [MASK].", "two [MASK]."]}).json()
    assert len(many) == 2 and len(many[0]) == 5


BAD_INPUTS = [
    # (what, method, path, body (dict = JSON, bytes = raw), status, message fragment)
    ("empty text", "POST", "/v1/embeddings", {"model": "embed", "input": ""}, 400, "text is empty"),
    ("empty list", "POST", "/v1/embeddings", {"model": "embed", "input": []}, 400, "empty list"),
    ("no mask", "POST", "/fill-mask", {"inputs": "no mask here"}, 400, "has no [MASK]"),
    ("top_k too big", "POST", "/fill-mask", {"inputs": "a [MASK].", "parameters": {"top_k": 999}}, 400, "top_k"),
    ("lone surrogate", "POST", "/embed", b'{"inputs": "bad \\ud800 text"}', 400, "not valid Unicode"),
    ("invalid JSON", "POST", "/v1/embeddings", b'{"model": "embed", "input": [', 400, "not valid JSON"),
    ("wrong type", "POST", "/v1/embeddings", {"model": "embed", "input": 42}, 422, "input"),
    ("mixed ids and text", "POST", "/v1/embeddings", {"model": "embed", "input": [[1, 2], "x"]}, 422, "input"),
    ("token id not in vocabulary", "POST", "/embed", {"inputs": [5, -1]}, 400, "outside this model's vocabulary"),
    ("unknown prompt", "POST", "/embed", {"inputs": "x", "prompt_name": "qeury"}, 400,
     "prompt_name 'qeury' is not one of this model's prompts ('passage', 'query'); send prompt_name=\"\" for no prompt"),
    ("dimensions 0", "POST", "/embed", {"inputs": "x", "dimensions": 0}, 400, "dimensions must be an integer in 1..32"),
    ("dimensions too big", "POST", "/v1/embeddings", {"model": "embed", "input": "x", "dimensions": 33}, 400,
     "dimensions must be an integer in 1..32"),
    ("bad direction", "POST", "/embed", {"inputs": "x", "truncation_direction": "Middle"}, 422,
     "truncation_direction"),
    ("decode bad id", "POST", "/decode", {"ids": [1, 10**9]}, 400, "outside this model's vocabulary"),
    ("tokenize no inputs", "POST", "/tokenize", {"text": "x"}, 422, "inputs"),
    ("missing field", "POST", "/embed", {"text": "hello"}, 422, "inputs"),
    ("bad format", "POST", "/v1/embeddings", {"model": "embed", "input": "x", "encoding_format": "hex"}, 422,
     "encoding_format"),
    ("normalize not bool", "POST", "/embed", {"inputs": "x", "normalize": "yes"}, 422, "normalize"),
    ("huge text", "POST", "/embed", {"inputs": "word " * 20000}, 413, "the limit is 65536"),
    ("huge body", "POST", "/embed", {"inputs": ["word " * 10000] * 100}, 413, "request body over"),
    ("10,000 texts", "POST", "/v1/embeddings", {"model": "embed", "input": ["hi"] * 10000}, 413, "the limit is 2048"),
    ("too long, truncate=false", "POST", "/embed", {"inputs": "word " * 500, "truncate": False}, 413,
     "maximum of"),
    ("unknown route", "POST", "/v2/embeddings", {"input": "x"}, 404, "no route POST /v2/embeddings"),
    ("wrong method", "GET", "/v1/embeddings", None, 405, "not allowed"),
    ("ambiguous root", "POST", "/", {"inputs": "x"}, 404, "/fill-mask"),
]


@pytest.mark.parametrize("what, method, path, body, status, fragment", BAD_INPUTS, ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_gets_a_clear_status_and_error_body(api, what, method, path, body, status, fragment):
    content = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    reply = httpx.request(method, f"{api.url}{path}", content=content, headers={"content-type": "application/json"},
                          timeout=30)
    assert reply.status_code == status, reply.text
    error = reply.json()
    if path in ("/embed", "/tokenize", "/decode", "/info"):  # TEI's routes answer in TEI's shape
        assert fragment in error["error"] and error["error_type"] == "Validation", error
    else:
        error = error["error"]
        assert fragment in error["message"] and error["type"] and error["code"]


def test_server_is_healthy_after_the_bad_inputs_and_metrics_count_them(api):
    for _what, method, path, body, _status, _fragment in BAD_INPUTS[:3]:
        httpx.request(method, f"{api.url}{path}", json=body)
    httpx.post(f"{api.url}/embed", json={"inputs": "word " * 500})  # truncated (model policy), counted
    health = httpx.get(f"{api.url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["models"]["embed"]["ok"], health.text
    assert httpx.get(f"{api.url}/ready").status_code == 200
    metrics = httpx.get(f"{api.url}/metrics").text
    assert 'bertforge_api_requests_total{route="/v1/embeddings",status="400"}' in metrics
    assert 'bertforge_api_errors_total{code="bad_request",route="/fill-mask",status="400"}' in metrics
    assert _metric(metrics, 'bertforge_api_truncations_total{model="embed"}') >= 1
    assert _metric(metrics, 'bertforge_api_tokens_total{model="embed"}') > 100
    assert "bertforge_api_request_seconds_bucket" in metrics and "bertforge_api_batch_size_bucket" in metrics
    docs = httpx.get(f"{api.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/v1/embeddings" in httpx.get(f"{api.url}/openapi.json").json()["paths"]


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_api_key_is_required_when_set_and_the_sdk_sends_it(served_repo, grpc_url):
    from openai import AuthenticationError, OpenAI

    with running_api(served_repo, grpc_url, config=ApiConfig(port=0), api_key="s3cret-key") as keyed:
        body = {"model": "embed", "input": "hello"}
        assert httpx.post(f"{keyed.url}/v1/embeddings", json=body).status_code == 401
        wrong = httpx.post(f"{keyed.url}/v1/embeddings", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{keyed.url}/metrics").status_code == 401
        assert httpx.get(f"{keyed.url}/health", timeout=10).status_code == 200  # probes stay open
        good = OpenAI(base_url=f"{keyed.url}/v1", api_key="s3cret-key", max_retries=0)
        assert len(good.embeddings.create(model="embed", input="hello").data) == 1
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{keyed.url}/v1", api_key="guess", max_retries=0).embeddings.create(model="e", input="x")
        assert "s3cret-key" not in " ".join(__import__("psutil").Process(keyed.pid).cmdline())


def test_in_flight_cap_answers_429_at_once(served_repo, grpc_url):
    with running_api(served_repo, grpc_url, config=ApiConfig(port=0, max_in_flight=1)) as capped:
        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"model": "embed", "input": [f"text number {n}" for n in range(64)]}
                replies = await asyncio.gather(*(client.post(f"{capped.url}/v1/embeddings", json=body)
                                                 for _ in range(12)))
                return [reply.status_code for reply in replies]

        statuses = asyncio.run(burst())
        assert set(statuses) == {200, 429} and statuses.count(200) >= 1, statuses
        assert httpx.get(f"{capped.url}/health", timeout=10).status_code == 200


def test_triton_down_is_503_fast_not_a_hang(served_repo):
    from serve.launcher import free_port

    with running_api(served_repo, f"127.0.0.1:{free_port()}", config=ApiConfig(port=0, timeout_s=5)) as orphan:
        reply = httpx.post(f"{orphan.url}/v1/embeddings", json={"model": "embed", "input": "x"}, timeout=20)
        assert reply.status_code == 503 and "unavailable" in reply.json()["error"]["message"].lower(), reply.text
        assert httpx.get(f"{orphan.url}/health", timeout=20).status_code == 503
        assert httpx.get(f"{orphan.url}/ready", timeout=20).status_code == 503


def test_client_window_caps_requests_in_flight(grpc_url, grpc_vectors):
    async def run() -> tuple[np.ndarray, int]:
        async with AsyncBertforgeClient(grpc_url, max_in_flight=3) as client:
            original, state = client._client.infer, {"now": 0, "most": 0}

            async def counted(*args, **kwargs):
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
                try:
                    return await original(*args, **kwargs)
                finally:
                    state["now"] -= 1

            client._client.infer = counted
            vectors = await client.embed(TEXTS * 20)
            return vectors, state["most"]

    vectors, most = asyncio.run(run())
    assert most == 3 and np.allclose(vectors[:3], grpc_vectors, atol=1e-6)
    with BertforgeClient(grpc_url, max_in_flight=2) as client:
        assert np.allclose(client.embed(TEXTS * 10)[-3:], grpc_vectors, atol=1e-6)
    with pytest.raises(ValueError, match="max_in_flight"):
        BertforgeClient(grpc_url, max_in_flight=0)


def test_health_sees_a_killed_backend_stub_that_triton_still_calls_ready(served_repo):
    """SIGKILL embed's python-backend stub: Triton keeps /v2/health/ready at 200, our /health turns 503."""
    import os
    import signal
    import time

    import psutil

    from serve.stack import local_config, running_stack

    with running_stack(local_config(served_repo, ApiConfig(port=0, health_cache_s=1))) as served:
        server, api = served.server, served.api
        assert httpx.get(f"{api.url}/health", timeout=10).status_code == 200
        stubs = [child for child in psutil.Process(server.pid).children(recursive=True)
                 if "triton_python_backend_stub" in " ".join(child.cmdline()) and "/embed/" in " ".join(child.cmdline())]
        assert len(stubs) == 1, [child.cmdline() for child in psutil.Process(server.pid).children(recursive=True)]
        os.kill(stubs[0].pid, signal.SIGKILL)
        killed = time.monotonic()
        while True:
            reply = httpx.get(f"{api.url}/health", timeout=10)
            if reply.status_code == 503 or time.monotonic() - killed > 10:
                break
            time.sleep(0.2)
        assert reply.status_code == 503, reply.text
        assert time.monotonic() - killed < 10
        if server.process.poll() is None:  # the usual outcome: Triton lives on, says ready, embed fails for good
            assert "embed" in reply.json()["error"]["message"] and reply.json()["models"]["fill_mask"]["ok"]
            assert server.is_ready()
        else:  # seen once: the python backend aborted tritonserver (boost::interprocess::lock_exception)
            assert "unavailable" in reply.json()["error"]["message"]


def test_a_keep_alive_request_takes_milliseconds_not_a_delayed_ack(api):
    """Regression: without TCP_NODELAY on the API's socket every answer waited ~40 ms for the client's delayed ACK."""
    import time

    with httpx.Client(base_url=api.url) as client:
        durations = []
        for _ in range(15):
            started = time.perf_counter()
            assert client.get("/v1/models").status_code == 200
            durations.append(time.perf_counter() - started)
    assert sorted(durations)[len(durations) // 2] < 0.02, durations


def test_bench_serve_measures_the_api_beside_direct_grpc(served_repo, grpc_url, tmp_path):
    from bertforge.cli import main

    output = tmp_path / "api.json"
    assert main(["bench", "serve", "--repo", str(served_repo), "--url", grpc_url, "--api", "tei", "--concurrency",
                 "1,32", "--seconds", "1", "--requests", "300", "--rounds", "1", "--no-baselines", "--no-plots",
                 "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["task"] == "embed"  # --api tei picks the model
    points = {(point["contender"], point["concurrency"]): point for point in results["points"]}
    assert set(points) == {("triton", 1), ("triton", 32), ("api_tei", 1), ("api_tei", 32)}
    assert points[("api_tei", 32)]["errors"] == 0 and points[("api_tei", 32)]["requests"] > 0
    assert points[("api_tei", 32)]["avg_batch_size"] > 1  # Triton still merges the API's requests
    goals = results["goals"]
    assert goals["api_c1_p50_overhead_ms"]["value"] is not None and goals["api_c32_throughput_ratio"]["value"] > 0
