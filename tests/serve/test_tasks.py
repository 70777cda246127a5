"""Rerank, classify and sparse embeddings end to end: a tiny cross-encoder, classifier and SparseEncoder built locally
and the session's tiny MLM, exported by the real CLI and library into one repository, served by a real tritonserver
and answered over gRPC, TEI's /rerank, /predict and /embed_sparse, Cohere's /v1|v2/rerank (the cohere SDK) and
huggingface_hub's text_classification; checked against sentence-transformers' CrossEncoder and SparseEncoder,
transformers' text-classification pipeline and the SPLADE formula on BertForMaskedLM, in PyTorch fp32."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest

from bertforge.tasks import TASKS, resolve
from bertforge.testing import LABELS, build_classifier
from serve.client import BertforgeClient, ServingError
from serve.config import ApiConfig
from serve.stack import local_config, running_stack
from tests.conftest import COUNTED_SEARCH, make_documents, make_sentences
from tests.export.sparse_models import build_sparse_encoder

pytestmark = pytest.mark.slow
QUERY = "the committee approved the budget"
DOCUMENTS = [*make_sentences(5, seed=7), make_documents(1, sentences_per_document=12, seed=3)[0]]  # the last is cut
@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory, tiny_tokenizer_dir):
    return build_classifier(tmp_path_factory.mktemp("cross_encoder"), tiny_tokenizer_dir, 1)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tiny_tokenizer_dir):
    return build_classifier(tmp_path_factory.mktemp("classifier"), tiny_tokenizer_dir, 3)


@pytest.fixture(scope="module")
def second_cross_encoder_dir(tmp_path_factory, tiny_tokenizer_dir):
    return build_classifier(tmp_path_factory.mktemp("cross_encoder_b"), tiny_tokenizer_dir, 1, seed=11)


@pytest.fixture(scope="module")
def sparse_encoder_dir(tmp_path_factory, tiny_bert_dir):
    """A SparseEncoder folder of the session's tiny MLM as OpenSearch's ship them: log1p_relu; and sum pooling, the
    other strategy (the plain MLM's embed_sparse is max/relu)."""
    return build_sparse_encoder(tmp_path_factory.mktemp("splade"), tiny_bert_dir, "sum", "log1p_relu", max_seq_length=48)


@pytest.fixture(scope="module")
def pair_repo(tmp_path_factory, cross_encoder_dir, classifier_dir, tiny_bert_dir, second_cross_encoder_dir,
              sparse_encoder_dir):
    """rerank through the real CLI (which says what it detected), classify and embed_sparse (from the session's
    tiny MLM) through the library, then a second reranker and a SparseEncoder folder added by name (the CLI exports
    embed_sparse from it by default): one repository, six models."""
    from bertforge.cli import main
    from export import export_to_repository

    repo = tmp_path_factory.mktemp("pair_repo")
    done = subprocess.run([sys.executable, "-m", "bertforge", "export", "--model", str(cross_encoder_dir), "--repo",
                           str(repo), "--precision", "fp32"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sequence-classification head with 1 label(s): exporting task rerank" in done.stderr
    report = export_to_repository(classifier_dir, repo, precision="fp32", progress=False)
    assert report.task == "classify" and report.labels == list(LABELS.values())
    report = export_to_repository(tiny_bert_dir, repo, tasks=("embed_sparse",), precision="fp32", progress=False)
    assert report.passed and report.target.variants["fp32"].parity["mean_top_overlap"] >= 0.95
    # adding a named model leaves the others exactly as they were
    before = {path: (path.stat().st_ino, path.read_bytes()) for path in sorted(repo.glob("*/1/*")) if path.is_file()}
    assert main(["export", "--model", str(second_cross_encoder_dir), "--repo", str(repo), "--name", "rerank-b",
                 "--precision", "fp32", "--quiet"]) == 0
    assert {path: (path.stat().st_ino, path.read_bytes()) for path in before} == before
    assert (repo / "rerank-b" / "config.pbtxt").read_text().count('name: "rerank-b"') == 1
    # a SparseEncoder folder as its author ships it: embed_sparse by default, gated against SparseEncoder.encode
    done = subprocess.run([sys.executable, "-m", "bertforge", "export", "--model", str(sparse_encoder_dir), "--repo",
                           str(repo), "--name", "splade", "--precision", "fp32"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SparseEncoder (MLM transformer + SpladePooling): exporting task embed_sparse" in done.stderr
    assert "SparseEncoder(folder).encode" in (repo / "export_report.splade.json").read_text()
    return repo


@pytest.fixture(scope="module")
def pair_stack(pair_repo):
    """tritonserver and the API in front of it on free loopback ports (serve.stack, as `bertforge serve` runs them)."""
    with running_stack(local_config(pair_repo, ApiConfig(port=0))) as served:
        yield served


@pytest.fixture(scope="module")
def pair_server(pair_stack):
    return pair_stack.server


@pytest.fixture(scope="module")
def pair_api(pair_stack):
    return pair_stack.api


@pytest.fixture(scope="module")
def cross_encoder_scores(cross_encoder_dir):
    """sentence-transformers' CrossEncoder.predict (sigmoid of the one logit) and the raw logits, PyTorch fp32."""
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(cross_encoder_dir), device="cpu")
    pairs = [(QUERY, document) for document in DOCUMENTS]
    scores = model.predict(pairs)
    assert np.ptp(scores) > 0.01 and len(set(np.round(scores, 4))) == len(scores)  # a ranking to get right
    return scores, model.predict(pairs, activation_fn=torch.nn.Identity())


def test_export_refuses_tasks_the_folder_lacks(cross_encoder_dir, tiny_bert_dir, tmp_path):
    from export import export_to_repository
    from export.errors import ExportError

    with pytest.raises(ExportError, match=r"exports task\(s\) \['rerank'\] only, not \['embed'\].*--tasks rerank"):
        export_to_repository(cross_encoder_dir, tmp_path / "a", precision="fp32", tasks=("embed",), progress=False)
    with pytest.raises(ExportError, match="rerank needs a sequence-classification head with 1 label"):
        export_to_repository(tiny_bert_dir, tmp_path / "b", precision="fp32", tasks=("rerank",), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_grpc_rerank_matches_cross_encoder(pair_server, cross_encoder_scores):
    scores, logits = cross_encoder_scores
    with BertforgeClient(pair_server.endpoints.grpc_url) as client:
        served = client.rerank(QUERY, DOCUMENTS)
        raw = client.rerank(QUERY, DOCUMENTS, raw_scores=True)
        # the long document is cut (the query never): refused when the request says so
        with pytest.raises(ServingError, match="longer than the model's maximum of 64 tokens"):
            client.rerank(QUERY, DOCUMENTS[-1:], truncation="error")
        with pytest.raises(ServingError, match="shorten the query"):  # the query itself is never cut
            client.rerank(DOCUMENTS[-1], ["a short document"])
        assert client.health(("rerank", "classify", "embed_sparse", "splade"))["models"] == {
            "rerank": True, "classify": True, "embed_sparse": True, "splade": True}
    np.testing.assert_allclose(served, scores, atol=1e-5)
    np.testing.assert_allclose(raw, logits, atol=1e-4)
    assert list(np.argsort(-served)) == list(np.argsort(-scores))


def test_cohere_sdk_rerank(pair_api, cross_encoder_scores):
    import cohere

    scores, _ = cross_encoder_scores
    client = cohere.ClientV2(base_url=pair_api.url, api_key="not-needed-on-loopback")
    reply = client.rerank(model="rerank", query=QUERY, documents=DOCUMENTS, top_n=3)
    best = list(np.argsort(-scores)[:3])
    assert [result.index for result in reply.results] == best
    np.testing.assert_allclose([result.relevance_score for result in reply.results], scores[best], atol=1e-5)
    # v1 with {text} documents and return_documents
    answer = httpx.post(f"{pair_api.url}/v1/rerank", json={"model": "rerank", "query": QUERY,
                        "documents": [{"text": text} for text in DOCUMENTS], "return_documents": True}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [item["index"] for item in body["results"]] == list(np.argsort(-scores))
    assert [item["document"]["text"] for item in body["results"]] == [DOCUMENTS[i] for i in np.argsort(-scores)]
    assert body["meta"]["api_version"]["version"] == "1" and body["id"]


def test_tei_rerank(pair_api, cross_encoder_scores):
    scores, logits = cross_encoder_scores
    answer = httpx.post(f"{pair_api.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True,
                                                        "return_text": True}, timeout=30).json()
    assert [item["index"] for item in answer] == list(np.argsort(-logits))
    np.testing.assert_allclose([item["score"] for item in answer], np.sort(logits)[::-1], atol=1e-4)
    assert answer[0]["text"] == DOCUMENTS[answer[0]["index"]]
    plain = httpx.post(f"{pair_api.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS[:2]}, timeout=30).json()
    assert sorted(plain, key=lambda item: item["index"])[0]["score"] == pytest.approx(float(scores[0]), abs=1e-5)
    refused = httpx.post(f"{pair_api.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS[-1:], "truncate": False},
                         timeout=30)
    assert refused.status_code == 413 and "longer than the model's maximum" in refused.json()["error"]


def test_bad_rerank_requests_are_4xx_and_the_server_stays_ready(pair_api):
    url = pair_api.url
    cases = [
        ("/v2/rerank", {"model": "rerank", "query": QUERY, "documents": []}, 400, "no documents"),
        ("/v2/rerank", {"model": "rerank", "query": QUERY, "documents": ["doc"] * 10_000}, 413, "the limit is 2048"),
        ("/v2/rerank", {"model": "rerank", "documents": ["doc"]}, 422, "query"),
        ("/v2/rerank", {"model": "rerank", "query": "  ", "documents": ["doc"]}, 400, "query is empty"),
        ("/v2/rerank", {"model": "classify", "query": QUERY, "documents": ["doc"]}, 400, "serves classify, not rerank"),
        ("/v2/rerank", {"model": "rerank", "query": QUERY, "documents": ["doc"], "top_n": 0}, 400, "top_n"),
        ("/rerank", {"query": QUERY, "texts": ["doc"], "bogus": 1}, 422, "bogus"),
    ]
    for route, body, status, message in cases:
        answer = httpx.post(f"{url}{route}", json=body, timeout=30)
        assert answer.status_code == status, (route, body, answer.text)
        assert message in answer.text, answer.text
    assert httpx.get(f"{url}/ready", timeout=30).status_code == 200
    assert httpx.get(f"{url}/health", timeout=30).json()["healthy"] is True
    unknown = httpx.post(f"{url}/v2/rerank", json={"model": "x", "query": QUERY, "documents": ["a doc"]}, timeout=30)
    assert unknown.status_code == 404 and "not one of the rerank models here: ['rerank', 'rerank-b']" in unknown.text
    assert httpx.post(f"{url}/v2/rerank", json={"model": "rerank", "query": QUERY, "documents": ["a doc"]},
                      timeout=30).status_code == 200


def test_classify_matches_pipeline_over_tei_and_huggingface_hub(pair_api, pair_server, classifier_dir):
    from huggingface_hub import InferenceClient
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(classifier_dir), top_k=None, device="cpu")
    text, pair = DOCUMENTS[0], DOCUMENTS[1]
    # a single text: TEI /predict and huggingface_hub's text_classification
    (expected,) = classifier([text])
    answer = httpx.post(f"{pair_api.url}/predict", json={"inputs": text}, timeout=30).json()
    assert [item["label"] for item in answer] == [item["label"] for item in expected]
    np.testing.assert_allclose([item["score"] for item in answer], [item["score"] for item in expected], atol=1e-5)
    hub = InferenceClient(model=f"{pair_api.url}/models/classify").text_classification(text)
    assert [(item.label, round(item.score, 5)) for item in hub] == [(item["label"], round(item["score"], 5))
                                                                     for item in expected]
    # a pair, and a batch of a text and a pair, raw scores = logits
    (expected_pair,) = classifier([{"text": text, "text_pair": pair}])
    answer = httpx.post(f"{pair_api.url}/predict", json={"inputs": [text, pair]}, timeout=30).json()
    np.testing.assert_allclose([item["score"] for item in answer], [item["score"] for item in expected_pair], atol=1e-5)
    batch = httpx.post(f"{pair_api.url}/predict", json={"inputs": [[text], [text, pair]], "raw_scores": True},
                       timeout=30).json()
    with BertforgeClient(pair_server.endpoints.grpc_url) as client:
        logits = client.classify([text, text], [None, pair])
    assert [[item["label"] for item in row] for row in batch] == [[LABELS[i] for i in np.argsort(-row)] for row in logits]
    models = httpx.get(f"{pair_api.url}/v1/models", timeout=30).json()["data"]
    assert {model["id"]: model["task"] for model in models} == {"rerank": "rerank", "classify": "classify",
                                                                "embed_sparse": "embed_sparse", "rerank-b": "rerank",
                                                                "splade": "embed_sparse"}


def test_client_cli_rerank_and_classify(pair_server, cross_encoder_scores, capsys):
    import json

    from bertforge.cli import main

    scores, _ = cross_encoder_scores
    url = pair_server.endpoints.grpc_url
    assert main(["client", "rerank", QUERY, *DOCUMENTS, "--url", url, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [item["index"] for item in answer] == list(np.argsort(-scores))
    np.testing.assert_allclose([item["score"] for item in answer], np.sort(scores)[::-1], atol=1e-5)
    assert main(["client", "rerank", QUERY, "--url", url]) == 2  # a query alone: told to give documents
    assert "QUERY and at least one DOCUMENT" in capsys.readouterr().err
    assert main(["client", "classify", DOCUMENTS[0], "--url", url]) == 0
    assert "best label index" in capsys.readouterr().out
    # a task without a printer of its own (embed_sparse): its output tensors as JSON, from the model asked for
    assert main(["client", "embed-sparse", *DOCUMENTS[:2], "--url", url, "--model", "splade"]) == 0
    answer = json.loads(capsys.readouterr().out)
    with BertforgeClient(url) as client:
        served = client.embed_sparse(DOCUMENTS[:2], model="splade")
    assert [item["SPARSE_INDICES"] for item in answer] == [indices.tolist() for indices, _ in served]
    np.testing.assert_allclose(answer[1]["SPARSE_VALUES"], served[1][1], rtol=1e-6)


def test_sparse_embeddings_match_pytorch_over_grpc_and_tei(pair_api, pair_server, reference):
    import torch

    from export.sparse import compare_sparse

    tokenizer, mlm = reference
    texts = DOCUMENTS[:3]
    expected = []
    with torch.inference_mode():
        for text in texts:  # one text at a time: no padding in the reference
            encoded = tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
            expected.append(torch.log1p(torch.relu(mlm(**encoded).logits[0])).max(dim=0).values.numpy())
    with BertforgeClient(pair_server.endpoints.grpc_url) as client:
        served = client.embed_sparse(texts)
    dense = np.zeros((len(texts), len(expected[0])), dtype=np.float32)
    for row, (indices, values) in enumerate(served):
        assert np.all(np.diff(indices) > 0) and np.all(values > 0)
        dense[row, indices] = values
        np.testing.assert_array_equal(indices, np.flatnonzero(expected[row] > 0))  # the non-zeros, exactly those
    metrics = compare_sparse([dense], [np.stack(expected)])
    assert metrics["min_top_overlap"] >= 0.95 and metrics["min_cosine"] >= 0.9999 and metrics["max_abs_diff"] < 1e-4
    answer = httpx.post(f"{pair_api.url}/embed_sparse", json={"inputs": texts}, timeout=30).json()
    assert [[item["index"] for item in row] for row in answer] == [indices.tolist() for indices, _ in served]
    np.testing.assert_allclose([item["value"] for item in answer[0]], served[0][1], rtol=1e-6)
    refused = httpx.post(f"{pair_api.url}/embed_sparse", json={"inputs": DOCUMENTS[-1], "truncate": False}, timeout=30)
    assert refused.status_code == 413 and "longer than the model's maximum" in refused.json()["error"]


def test_sparse_encoder_folder_is_served_as_its_author_encodes(pair_server, pair_repo, sparse_encoder_dir):
    """The SparseEncoder folder (sum pooling, log1p_relu, max_seq_length 48) over gRPC against SparseEncoder.encode:
    the same non-zeros, within the export's fp32 gate; the served settings are the folder's."""
    from sentence_transformers import SparseEncoder

    from bertforge.served_model import ServedModelDir
    from export.config import ParityGates
    from export.sparse import FP32_ABS_FACTOR, MIN_COSINE, MIN_TOP_OVERLAP, compare_sparse

    texts = [*DOCUMENTS[:3], DOCUMENTS[-1]]  # the last is over 48 tokens: cut where the author's library cuts it
    author = SparseEncoder(str(sparse_encoder_dir), device="cpu")
    expected = author.encode(texts, convert_to_sparse_tensor=False).float().numpy()
    with BertforgeClient(pair_server.endpoints.grpc_url) as client:
        served = client.embed_sparse(texts, model="splade")
    dense = np.zeros_like(expected)
    for row, (indices, values) in enumerate(served):
        dense[row, indices] = values
        np.testing.assert_array_equal(indices, np.flatnonzero(expected[row] > 0))
    metrics = compare_sparse([dense], [expected])
    assert metrics["mean_top_overlap"] >= MIN_TOP_OVERLAP and metrics["min_cosine"] >= MIN_COSINE
    assert metrics["max_abs_diff"] <= FP32_ABS_FACTOR * ParityGates().fp32_max_abs_diff
    assert (expected > 0).sum(1).min() > 0  # every text has weights: a comparison that can fail
    model = ServedModelDir.in_repo(pair_repo, "splade")
    assert model.settings().max_length == 48 and model.settings().embedding_dim == expected.shape[1]
    definition = model.info()["definition"]
    assert (definition["pooling_strategy"], definition["activation"]) == ("sum", "log1p_relu")


def test_named_models_route_by_the_model_field(pair_api, pair_repo, cross_encoder_scores, second_cross_encoder_dir):
    import cohere
    from sentence_transformers import CrossEncoder

    from serve.api.errors import APIError
    from serve.api.forward import TritonForwarder

    expected_b = CrossEncoder(str(second_cross_encoder_dir), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    assert np.abs(expected_b - cross_encoder_scores[0]).max() > 1e-3  # two different models, or this proves nothing
    client = cohere.ClientV2(base_url=pair_api.url, api_key="x")
    for name, expected in (("rerank-b", expected_b), ("rerank", cross_encoder_scores[0])):
        reply = client.rerank(model=name, query=QUERY, documents=DOCUMENTS)
        scores = np.array([r.relevance_score for r in sorted(reply.results, key=lambda r: r.index)])
        np.testing.assert_allclose(scores, expected, atol=1e-5)
    # TEI's /rerank names no model: the one named after the task
    tei = httpx.post(f"{pair_api.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS}, timeout=30).json()
    np.testing.assert_allclose(sorted(item["score"] for item in tei), np.sort(cross_encoder_scores[0]), atol=1e-5)
    # one model of a task: any name reaches it (as TEI and Infinity); several: the name must match
    forwarder = TritonForwarder("127.0.0.1:1", pair_repo, ApiConfig())
    assert forwarder.for_task("classify", "any-name").name == "classify"
    with pytest.raises(APIError, match="not one of the rerank models"):
        forwarder.for_task("rerank", "any-name")


def test_export_name_is_checked(cross_encoder_dir, tiny_bert_dir, tmp_path):
    from export import export_to_repository
    from export.errors import ExportError

    with pytest.raises(ExportError, match="not another task's name"):
        export_to_repository(cross_encoder_dir, tmp_path, precision="fp32", name="embed", progress=False)
    with pytest.raises(ExportError, match="fill_mask and embed keep their names"):
        export_to_repository(tiny_bert_dir, tmp_path, precision="fp32", name="mine", progress=False)


def test_every_readme_curl_line_of_the_section_answers(pair_api):
    import json
    import os
    import re
    import shutil
    from pathlib import Path

    if shutil.which("curl") is None:
        pytest.fail("curl is needed to check README's examples (apt-get install curl)")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Rerank, classify and sparse embeddings\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()
             if line.startswith("curl ")]
    assert {route for route in ("/rerank", "/v2/rerank", "/v1/rerank", "/predict", "/embed_sparse", "/v1/models")
            if any(f"$API{route} " in line or line.endswith(f"$API{route}") for line in lines)} == {
        "/rerank", "/v2/rerank", "/v1/rerank", "/predict", "/embed_sparse", "/v1/models"}
    for line in lines:
        command = "set -o pipefail; " + line.replace("curl ", "curl --fail-with-body --max-time 20 ", 1)
        done = subprocess.run(["bash", "-c", command], env=dict(os.environ, API=pair_api.url), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"{line}\n-> {done.stdout[-500:]} {done.stderr[-500:]}"
        document = json.loads(done.stdout)
        assert document and not (isinstance(document, dict) and "error" in document), (line, document)


def test_supervisor_probes_every_task_model(pair_server):
    from serve.supervisor import Supervisor

    tasks = {"rerank": "rerank", "rerank-b": "rerank", "classify": "classify", "embed_sparse": "embed_sparse",
             "splade": "embed_sparse"}
    assert Supervisor(pair_server, list(tasks), tasks=tasks, log=lambda line: None).check() is None
    reason, detail = Supervisor(pair_server, ["absent"], tasks={"absent": "rerank"}, log=lambda line: None).check()
    assert reason == "probe_failed" and detail.startswith("absent:")


@pytest.mark.int8_kernel
def test_auto_serves_only_a_variant_that_passed(cross_encoder_dir, tmp_path):
    """rerank goes the way every task does (export.choice): fused fp32, the int8 recipe search judged on the ranking,
    the faster of those that passed."""
    from bertforge.served_model import ServedModelDir
    from export import export_to_repository

    report = export_to_repository(cross_encoder_dir, tmp_path, precision="auto", progress=False, **COUNTED_SEARCH)
    chosen = report.target.chosen
    precision, served = report.target.served
    assert precision == chosen.precision and served.passed
    search = served.search if precision == "int8" else served.int8_search
    assert search["candidates"], "int8 goes through the recipe search"
    assert all(candidate["parity"]["mean_spearman"] is not None for candidate in search["candidates"]
               if "parity" in candidate)
    if precision == "fp32":
        assert "no int8 recipe passed the gate" in chosen.reason or "not faster" in chosen.reason
    assert ServedModelDir(tmp_path / "rerank").settings().precision == precision


def test_every_task_renders_its_triton_tensors_and_names_code_that_exists():
    from bertforge.served_model import ServingSettings, render_backend, render_config_pbtxt
    from export.task_exporter import TaskExporter
    from serve.backend import ServedModel
    from serve.runtime import Runtime

    for task, spec in TASKS.items():
        config = render_config_pbtxt(ServingSettings(task=task))
        assert f'name: "{task}"' in config
        for tensor in (*spec.inputs, *spec.outputs):
            assert f'name: "{tensor.name}"' in config
        # every model.py builds the one backend; the registry's exporter, runtime and router exist
        assert "from serve.backend import ServedModel" in render_backend(task)
        assert issubclass(resolve(spec.exporter), TaskExporter) and issubclass(resolve(spec.runtime), Runtime)
        assert resolve(spec.routes).router.routes
    assert callable(ServedModel.from_triton_args)
    assert "optional: true" in render_config_pbtxt(ServingSettings(task="classify"))
    assert "optional" not in render_config_pbtxt(ServingSettings(task="rerank"))  # a document is required
    assert 'name: "rerank-b"' in render_config_pbtxt(ServingSettings(task="rerank", name="rerank-b"))


@pytest.mark.int8_kernel
def test_rerank_int8_gate_is_the_users_to_tighten(cross_encoder_dir, tmp_path):
    """gates.int8_rerank_* (export/config.py) decide the ranking gate; exports pass them through."""
    from bertforge.config import ConfigError
    from bertforge.tasks import RERANK
    from export import export_to_repository
    from export.config import ParityGates
    from export.cross_encoder import gate_failures

    metrics = {"mean_spearman": 0.985, "min_spearman": 0.96, "top1_agreement": 0.875}
    assert gate_failures(metrics, "int8", RERANK, ParityGates()) == []
    strict = gate_failures(metrics, "int8", RERANK, ParityGates(int8_rerank_spearman=0.99, int8_rerank_top1=1.0))
    assert len(strict) == 2 and "below 0.99 / 0.94" in strict[0] and "< 1.0" in strict[1]
    with pytest.raises(ConfigError, match="int8_rerank_top1"):
        ParityGates(int8_rerank_top1=1.5)
    # through an export: int8 is served only if it ranks exactly as PyTorch does
    report = export_to_repository(cross_encoder_dir, tmp_path, precision="auto", progress=False, search_candidates=3,
                                  int8_rerank_spearman=1.0, int8_rerank_top1=1.0)
    precision, served = report.target.served
    search = served.search if precision == "int8" else served.int8_search
    for candidate in search["candidates"]:
        if candidate.get("passed"):
            assert candidate["parity"]["mean_spearman"] == 1.0 and candidate["parity"]["top1_agreement"] == 1.0
        elif "failures" in candidate:
            assert any("< 1.0" in line or "below 1.0" in line for line in candidate["failures"]), candidate
    if precision == "int8":
        assert served.parity["mean_spearman"] == 1.0 and served.parity["top1_agreement"] == 1.0
