"""Repositories written by an earlier exporter still serve: the text files commit 7e50431 wrote for every task
(tests/fixtures/exports_7e50431/repository.json: config.pbtxt, 1/model.py naming that code's backend modules,
1/serving.json, the reports), around weights and tokenizers exported now from the same tiny models, in a real
tritonserver."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bertforge.tasks import CLASSIFY, EMBED, EMBED_SPARSE, FILL_MASK, RERANK, TASKS
from tests.conftest import make_sentences
from tests.fixtures.exports_7e50431.record import materialize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported_now(tmp_path_factory, tiny_bert_dir, tiny_tokenizer_dir) -> Path:
    """The recorded models' weights and tokenizers, exported by the current code (fp32, as they were recorded)."""
    from bertforge.testing import build_classifier
    from export import export_to_repository

    work = tmp_path_factory.mktemp("old_exports")
    repo = work / "now"
    export_to_repository(tiny_bert_dir, repo, precision="fp32", tasks=(FILL_MASK, EMBED, EMBED_SPARSE), progress=False)
    for labels in (1, 3):
        export_to_repository(build_classifier(work / f"classifier{labels}", tiny_tokenizer_dir, labels), repo,
                             precision="fp32", progress=False)
    return repo


@pytest.fixture(scope="module")
def old_repo(exported_now, tmp_path_factory) -> Path:
    """The same weights with every text file as commit 7e50431 wrote it."""
    repo = tmp_path_factory.mktemp("old_layout") / "repo"
    shutil.copytree(exported_now, repo)
    for report in repo.glob("export_*"):
        report.unlink()
    return materialize(repo)


def test_the_recorded_files_are_the_old_layout(old_repo, exported_now):
    """What the test relies on: the old entry points, and every model's text files replaced by the recorded ones."""
    assert "from serve.pair_backend import PairServedModel" in (old_repo / RERANK / "1" / "model.py").read_text()
    assert "from serve.sparse_backend import SparseServedModel" in (old_repo / EMBED_SPARSE / "1" / "model.py").read_text()
    for name in TASKS:
        assert (old_repo / name / "1" / "serving.json").read_text() != (exported_now / name / "1" / "serving.json").read_text()
        assert (old_repo / name / "1" / "model.onnx").read_bytes() == (exported_now / name / "1" / "model.onnx").read_bytes()


def test_old_reports_read_as_the_typed_report(old_repo):
    from export import read_report
    from export.report import task_report_file

    report = read_report(old_repo)
    assert set(report.tasks) == {FILL_MASK, EMBED} and report.passed and report.max_length == 64
    for name in (RERANK, CLASSIFY, EMBED_SPARSE):
        flat = read_report(old_repo / task_report_file(name))
        assert flat.task == name and flat.target.served[1].passed


def test_an_old_repository_serves_what_the_models_compute(old_repo, exported_now):
    """Every model answers through the old files over gRPC exactly as the current runtime computes it in process."""
    from serve.client import BertforgeClient
    from serve.runtime import load_runtime
    from serve.stack import local_config, running_stack

    texts = make_sentences(3, seed=21)
    masked = [f"{text} [MASK]" for text in texts]
    expected = {}
    for name, inputs in ((FILL_MASK, [(text,) for text in masked]), (EMBED, [(text,) for text in texts]),
                         (EMBED_SPARSE, [(text,) for text in texts]), (RERANK, [(texts[0], text) for text in texts]),
                         (CLASSIFY, [(text, None) for text in texts])):
        runtime = load_runtime(exported_now / name / "1")
        requests = [runtime.parse(*item, {}) for item in inputs]
        assert runtime.tokenize(requests) == [None] * len(requests)
        expected[name] = runtime.answer(requests)
    with running_stack(local_config(old_repo)) as served, BertforgeClient(served.grpc_url) as client:
        fill_mask = client.fill_mask(masked, top_k=5)
        vectors = client.embed(texts)
        sparse = client.embed_sparse(texts)
        relevance = client.rerank(texts[0], texts, raw_scores=True)
        logits = client.classify(texts)
    assert [[[p.token_id for p in mask] for mask in answer] for answer in fill_mask] == \
        [row["TOKEN_IDS"].tolist() for row in expected[FILL_MASK]]
    np.testing.assert_allclose(vectors, np.stack([row["EMBEDDING"] for row in expected[EMBED]]), atol=1e-6)
    for (indices, values), row in zip(sparse, expected[EMBED_SPARSE]):
        np.testing.assert_array_equal(indices, row["SPARSE_INDICES"])
        np.testing.assert_allclose(values, row["SPARSE_VALUES"], atol=1e-6)
    np.testing.assert_allclose(relevance, [row["LOGITS"][0] for row in expected[RERANK]], atol=1e-6)
    np.testing.assert_allclose(logits, np.stack([row["LOGITS"] for row in expected[CLASSIFY]]), atol=1e-6)
    assert logits.shape == (3, 3) and len(set(np.round(relevance, 5))) > 1  # real answers, not constants
