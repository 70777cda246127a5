"""Bench tests reuse the serve tests' repository (exported from the session's tiny BERT) and server."""

from __future__ import annotations

import json

import pytest

from bertforge.testing import make_documents
from tests.serve.conftest import grpc_url, served_repo, triton_server  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def held_out_file(tmp_path_factory):
    """A small .jsonl of documents for the request texts (the demo corpus is not needed offline)."""
    path = tmp_path_factory.mktemp("bench_texts") / "held_out.jsonl"
    path.write_text("".join(json.dumps({"text": document}) + "\n" for document in make_documents(30, seed=7)))
    return path
