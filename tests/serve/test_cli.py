"""`bertforge serve` and `bertforge client`: help, real runs, clean stop on SIGTERM, no torch in the client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import psutil
import pytest

from bertforge.cli import main
from serve.client import BertforgeClient


@pytest.mark.parametrize("command, flag", [("serve", "--grpc-port"), ("client", "--top-k")])
def test_help(command, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert flag in capsys.readouterr().out


def test_client_library_and_cli_import_without_torch():
    code = ("import sys, serve.client, serve.cli_client, tritonclient.grpc.aio; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_client_cli_prints_table_json_and_errors(grpc_url, capsys):
    assert main(["client", "fill-mask", "the minister [MASK] the report.", "--url", grpc_url, "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "probability" in table and "the minister [MASK] the report." in table
    assert main(["client", "fill-mask", "a [MASK] and a [MASK]", "--url", grpc_url, "--json", "--top-k", "2"]) == 0
    (document,) = json.loads(capsys.readouterr().out)
    assert len(document["masks"]) == 2 and set(document["masks"][0][0]) == {"token", "token_id", "score"}
    assert main(["client", "embed", "hello there", "--url", grpc_url]) == 0
    assert re.search(r"dims 32 +L2 norm \d", capsys.readouterr().out)
    assert main(["client", "fill-mask", "no mask", "--url", grpc_url]) == 2
    assert "text 0: text has no [MASK]" in capsys.readouterr().err
    assert main(["client", "health", "--url", grpc_url, "--json"]) == 0


def test_serve_cli_explains_a_missing_repository(tmp_path, capsys):
    assert main(["serve", "--repo", str(tmp_path / "none"), "--grpc-port", "0"]) == 2
    assert "model repository not found" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_cli_starts_prints_endpoints_and_stops_on_sigterm(served_repo):
    process = subprocess.Popen(
        [sys.executable, "-m", "bertforge.cli", "serve", "--repo", str(served_repo), "--grpc-port", "0",
         "--http-port", "0", "--metrics-port", "0", "--api-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        output = "".join(lines)
        server_pid = int(re.search(r"pid (\d+)", output).group(1))
        grpc_url = re.search(r"gRPC +(127\.0\.0\.1:\d+)", output).group(1)
        with BertforgeClient(grpc_url) as client:
            assert client.health()["ready"]
            assert client.fill_mask("the [MASK] said.", top_k=1)[0][0][0].token
        api_url = re.search(r"API +(http://127\.0\.0\.1:\d+)", output).group(1)  # the HTTP API beside it
        assert urllib.request.urlopen(f"{api_url}/health", timeout=10).status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert "tritonserver stopped" in process.stderr.read()
        assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
