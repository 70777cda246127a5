"""Every curl line of README's "HTTP API" section, run as written against a real tritonserver and the API."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from serve.api.process import running_api
from serve.config import ApiConfig

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"
KEY = "readme-test-key"


def readme_curl_lines() -> list[str]:
    section = README.read_text().split("\n## HTTP API\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("curl ")]


def test_readme_documents_every_endpoint():
    text = " ".join(readme_curl_lines())
    for route in ("/v1/embeddings", "/v1/models", "/embed", "/fill-mask", "/health", "/ready", "/metrics", "/docs",
                  "$HTTP/v2/models/fill_mask/infer", "encoding_format", "targets", "Authorization: Bearer",
                  "/tokenize", "/decode", "/info", "prompt_name", "dimensions", "truncation_direction", '"truncate"',
                  '"input": [['):
        assert route in text, f"README's HTTP API section has no curl example for {route}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_every_readme_curl_line_answers(served_repo, triton_server):
    grpc_url, http_url = triton_server.endpoints.grpc_url, triton_server.endpoints.http_url
    with running_api(served_repo, grpc_url, config=ApiConfig(port=0)) as api, \
            running_api(served_repo, grpc_url, config=ApiConfig(port=0), api_key=KEY) as keyed:
        for line in readme_curl_lines():
            needs_key = "BERTFORGE_API_KEY" in line
            env = dict(os.environ, API=keyed.url if needs_key else api.url, HTTP=http_url, BERTFORGE_API_KEY=KEY)
            # --fail-with-body: any status >= 400 makes curl (and the test) fail, with the server's message
            command = "set -o pipefail; " + line.replace("curl ", "curl --fail-with-body --max-time 20 ", 1)
            done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{line}\n-> rc {done.returncode}: {done.stdout[-500:]} {done.stderr[-500:]}"
            output = done.stdout.strip()
            assert output, line
            if output[0] in "[{":
                document = json.loads(output)
                assert not (isinstance(document, dict) and "error" in document), (line, document)
            if "/fill_mask/infer" in line:
                outputs = {item["name"]: item for item in json.loads(output)["outputs"]}
                assert outputs["TOKENS"]["shape"] == [1, 1, 3]
            if "/docs" in line:
                assert output == "200"
