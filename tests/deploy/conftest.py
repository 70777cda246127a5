"""Deploy tests reuse the serve tests' repository (exported from the session's tiny BERT) and server."""

from __future__ import annotations

from tests.serve.conftest import grpc_url, served_repo, triton_server  # noqa: F401  (fixtures)
