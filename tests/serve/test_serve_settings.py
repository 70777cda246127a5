"""Serve-time settings: `bertforge serve --instances/--threads/--max-batch-tokens` change the served copy, never the export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

ENDPOINTS_PREFIX = "BERTFORGE_ENDPOINTS "


def _serve(repo, *flags, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bertforge", "serve", "--repo", str(repo), "--grpc-port", "0",
                             "--http-port", "0", "--metrics-port", "0", "--no-api", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_serve_time_settings_reach_triton_and_leave_the_export_alone(served_repo):
    exported = (served_repo / "embed" / "config.pbtxt").read_text()
    server = _serve(served_repo, "--instances", "2", "--max-batch-tokens", "2048",
                    env={"BERTFORGE_SERVE_THREADS": "1"})
    lines = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            lines.append(line)
            if line.startswith(ENDPOINTS_PREFIX) or (not line and server.poll() is not None):
                break
        assert lines[-1].startswith(ENDPOINTS_PREFIX), "".join(lines)
        endpoints = json.loads(lines[-1][len(ENDPOINTS_PREFIX):])
        printed = "".join(lines)
        assert "embed: fp32, 2 instance(s) x 1 thread(s)" in printed and "max_batch_tokens 2048" in printed
        with urllib.request.urlopen(f"{endpoints['http']}/v2/models/embed/config", timeout=10) as response:
            config = json.load(response)
        assert config["instance_group"][0]["count"] == 2
        from serve.client import BertforgeClient

        with BertforgeClient(endpoints["grpc"]) as client:
            assert client.embed(["the house"]).shape[0] == 1
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    assert (served_repo / "embed" / "config.pbtxt").read_text() == exported  # the export is untouched


@pytest.mark.parametrize("flags, message", [
    (("--instances", "0"), "serve.instances must be >= 1"),
    (("--max-batch-tokens", "10"), "serve-time settings do not fit the exported models: serving.max_batch_tokens"),
])
def test_invalid_serve_time_settings_are_clear_errors(served_repo, flags, message):
    server = _serve(served_repo, *flags)
    output, _ = server.communicate(timeout=120)
    assert server.returncode == 2 and message in output, output
