"""Reliability fixtures: a repository exported from the tiny BERT, one shared real tritonserver, ORT references."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bertforge.tasks import EMBED, FILL_MASK

MAX_TOP_K = 20


@pytest.fixture(scope="session")
def reliability_repo(tmp_path_factory, tiny_bert_dir) -> Path:
    """fill_mask + embed (fp32) exported by the real exporter; tests that rewrite it take a copy."""
    from export import export_to_repository

    repo = tmp_path_factory.mktemp("reliability") / "repo"
    export_to_repository(tiny_bert_dir, repo, precision="fp32", max_top_k=MAX_TOP_K, progress=False)
    return repo


@pytest.fixture
def repo_copy(reliability_repo, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(reliability_repo, copy)
    return copy


@pytest.fixture(scope="session")
def reliability_server(reliability_repo):
    """One real tritonserver on free loopback ports (serve.stack); stopped by PID even when tests fail."""
    from serve.stack import local_config, running_stack

    with running_stack(local_config(reliability_repo)) as served:
        yield served.server


@pytest.fixture(scope="session")
def references(reliability_repo):
    from tests.reliability.reference import OrtReference

    return {model: OrtReference(reliability_repo, model) for model in (FILL_MASK, EMBED)}
