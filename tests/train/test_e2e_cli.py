"""From a corpus to an answer through the real commands only: pipeline -> serve -> client -> checked against PyTorch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train.conftest import bertforge_command, run_cli

ENDPOINTS_PREFIX = "BERTFORGE_ENDPOINTS "


@pytest.mark.slow
def test_pipeline_serve_client_answers_like_pytorch(tiny_config_file, tmp_path, tmp_path_factory):
    env = {"BERTFORGE_CACHE": str(tmp_path_factory.getbasetemp() / "bertforge-cache")}
    run_dir, repo = tmp_path / "run", tmp_path / "repo"
    # 1. bertforge pipeline: train a tiny model and export it
    trained = run_cli("pipeline", "--config", str(tiny_config_file), "--run-dir", str(run_dir), "--repo", str(repo),
                      "--set", "train.max_steps=20", "--precision", "fp32", env_extra=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    # 2. bertforge serve on free ports; the endpoints come from the line written for machines
    server = subprocess.Popen(bertforge_command("serve", "--repo", str(repo), "--grpc-port", "0", "--http-port", "0",
                                                "--metrics-port", "0", "--no-api"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, **env})
    try:
        endpoints = _read_endpoints(server, timeout_s=180)
        # 3. bertforge client, as a user types it
        fill = run_cli("client", "fill-mask", "the [MASK] of the house", "a [MASK] and a [MASK]", "--json",
                       "--url", endpoints["grpc"])
        embed = run_cli("client", "embed", "the house", "a second text", "--json", "--url", endpoints["grpc"])
        assert fill.returncode == 0 and embed.returncode == 0, fill.stderr + embed.stderr
        (tmp_path / "fill.json").write_text(fill.stdout)
        (tmp_path / "embed.json").write_text(embed.stdout)
        # 4. the printed answers against PyTorch fp32 on the trained model folder
        verified = _verify(run_dir / "model", tmp_path / "fill.json", tmp_path / "embed.json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "PASS: 5 of 5 answers agree" in verified.stdout  # 3 masks + 2 embeddings
        # ... and the check can fail: a wrong probability and a flipped embedding are caught
        answers = json.loads(fill.stdout)
        answers[0]["masks"][0][0]["score"] += 0.5
        (tmp_path / "bad_fill.json").write_text(json.dumps(answers))
        vectors = json.loads(embed.stdout)
        vectors[1]["embedding"] = [-value for value in vectors[1]["embedding"]]
        (tmp_path / "bad_embed.json").write_text(json.dumps(vectors))
        rejected = _verify(run_dir / "model", tmp_path / "bad_fill.json", tmp_path / "bad_embed.json")
        assert rejected.returncode == 1 and rejected.stdout.count("FAIL ") == 2, rejected.stdout
    finally:
        # 5. SIGTERM stops it cleanly
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=60) == 0
        finally:
            if server.poll() is None:
                server.kill()


def _read_endpoints(server: subprocess.Popen, timeout_s: float) -> dict:
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line and server.poll() is not None:
            break
        seen.append(line)
        if line.startswith(ENDPOINTS_PREFIX):
            return json.loads(line[len(ENDPOINTS_PREFIX):])
    raise AssertionError("bertforge serve printed no endpoints line:\n" + "".join(seen[-40:]))


def _verify(model_dir, fill, embed) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve.verify", "--model", str(model_dir), "--fill-mask", str(fill),
                           "--embed", str(embed)], capture_output=True, text=True, timeout=300)
