"""Session fixtures for serve tests: a repository exported from the tiny BERT and one real tritonserver."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import COUNTED_SEARCH


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory, tiny_bert_dir) -> Path:
    """fill_mask + embed (fp32) exported from the session's tiny BERT by the real exporter."""
    from bertforge.served_model import ServedModelDir
    from export import export_to_repository

    repo = tmp_path_factory.mktemp("repo_fp32")
    export_to_repository(tiny_bert_dir, repo, precision="fp32", max_top_k=TEST_MAX_TOP_K, progress=False)
    ServedModelDir.in_repo(repo, "embed").update(prompts=TEST_PROMPTS)  # named prompts, no default: texts unchanged
    return with_queue_delay(repo, TEST_QUEUE_DELAY_US)


TEST_PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="session")
def sentence_transformer(served_repo, tiny_bert_dir):
    """The served embed model as its author's library computes it: sentence-transformers, the tiny BERT with
    mean pooling (the exporter's default for a plain HF folder) and the served prompts, in PyTorch fp32."""
    from sentence_transformers import SentenceTransformer, models

    from bertforge.served_model import ServedModelDir

    settings = ServedModelDir.in_repo(served_repo, "embed").settings()
    transformer = models.Transformer(str(tiny_bert_dir), max_seq_length=settings.max_length)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode=settings.pooling)
    return SentenceTransformer(modules=[transformer, pooling], prompts=settings.prompts, device="cpu")


TEST_MAX_TOP_K = 20
# The tiny model runs in ~1 ms, faster than a busy test machine sends requests; with the CPU default delay
# (0 µs) concurrent requests then rarely meet in the queue. A short delay makes batching observable.
TEST_QUEUE_DELAY_US = 2000


def with_queue_delay(repo: Path, delay_us: int) -> Path:
    from bertforge.served_model import served_models

    for model in served_models(repo):
        model.update(max_queue_delay_microseconds=delay_us)
    return repo


@pytest.fixture(scope="session")
def triton_server(served_repo):
    """One real tritonserver on free ports for the whole session (serve.stack); stopped (by PID) even when tests fail."""
    from serve.stack import local_config, running_stack

    with running_stack(local_config(served_repo)) as served:
        yield served.server
    assert served.server.process.poll() is not None, "tritonserver still running after stop()"


@pytest.fixture(scope="session")
def grpc_url(triton_server) -> str:
    return triton_server.endpoints.grpc_url


@pytest.fixture(scope="session")
def served_repo_int8(tmp_path_factory, tiny_bert_dir) -> Path:
    """The same models, dynamically quantized to int8 by the exporter."""
    from export import export_to_repository

    repo = tmp_path_factory.mktemp("repo_int8")
    export_to_repository(tiny_bert_dir, repo, precision="int8", max_top_k=TEST_MAX_TOP_K, progress=False,
                         **COUNTED_SEARCH)
    return repo


@pytest.fixture(scope="session")
def reference(tiny_bert_dir):
    """(HF tokenizer, BertForMaskedLM) in PyTorch fp32: the slow reference every served answer is checked against."""
    from transformers import AutoTokenizer, BertForMaskedLM

    return AutoTokenizer.from_pretrained(tiny_bert_dir), BertForMaskedLM.from_pretrained(tiny_bert_dir).eval()
