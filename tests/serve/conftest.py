"""Session fixtures for serve tests: a repository exported from the tiny BERT and one real tritonserver."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory, tiny_bert_dir) -> Path:
    """fill_mask + embed (fp32) from the session's tiny BERT."""
    from tests.serve.onnx_helper import build_test_repository

    return build_test_repository(tiny_bert_dir, tmp_path_factory.mktemp("repo_fp32"))


@pytest.fixture(scope="session")
def triton_server(served_repo):
    """One real tritonserver on free ports for the whole session; stopped (by PID) even when tests fail."""
    from serve.launcher import running_server

    with running_server(served_repo, grpc_port=0, http_port=0, metrics_port=0) as server:
        yield server
    assert server.process.poll() is not None, "tritonserver still running after stop()"


@pytest.fixture(scope="session")
def grpc_url(triton_server) -> str:
    return triton_server.endpoints.grpc_url
