"""`bertforge serve` and `bertforge client`: help, real runs, clean stop on SIGTERM, no torch in the client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import numpy as np
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


def test_client_cli_embed_with_prompt_name_and_dimensions(grpc_url, sentence_transformer, capsys):
    text = "the minister spoke to parliament."
    assert main(["client", "embed", text, "--url", grpc_url, "--prompt-name", "query", "--dimensions", "8",
                 "--json"]) == 0
    (document,) = json.loads(capsys.readouterr().out)
    expected = sentence_transformer.encode([text], prompt_name="query", truncate_dim=8)[0]
    vector = np.asarray(document["embedding"])
    assert document["dims"] == 8 and vector @ expected / np.linalg.norm(vector) / np.linalg.norm(expected) >= 0.999
    assert main(["client", "embed", text, "--url", grpc_url, "--prompt-name", "nope"]) == 2
    assert "prompt_name 'nope' is not one of this model's prompts ('passage', 'query')" in capsys.readouterr().err


def test_serve_cli_explains_a_missing_repository(tmp_path, capsys):
    assert main(["serve", "--repo", str(tmp_path / "none"), "--grpc-port", "0"]) == 2
    assert "model repository not found" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_cli_starts_prints_endpoints_and_stops_on_sigterm(served_repo):
    process = subprocess.Popen(
        [sys.executable, "-m", "bertforge.cli", "serve", "--repo", str(served_repo), "--grpc-port", "0",
         "--http-port", "0", "--metrics-port", "0", "--api-port", "0", "--", "--log-verbose=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        # the flag after `--` reached tritonserver: its verbose log shows the request handling
        log_text = open(re.search(r"log +(\S+)", output).group(1)).read()
        assert "ModelInferHandler::InferResponseComplete" in log_text, log_text[-2000:]
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert "tritonserver stopped" in process.stderr.read()
        assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)


def test_serve_environment_variables_precedence_and_errors(tmp_path, monkeypatch, capsys):
    from bertforge.config import ConfigError, load_config
    from serve.config import ServeConfig, env_overrides

    config_file = tmp_path / "serve.toml"
    config_file.write_text('grpc_port = 9101\nhttp_port = 9102\nhost = "127.0.0.1"\n[api]\ntimeout_s = 7.0\n')
    environ = {"BERTFORGE_SERVE_GRPC_PORT": "9201", "BERTFORGE_SERVE_HTTP_PORT": "9202",
               "BERTFORGE_SERVE_API_TIMEOUT_S": "3.5", "BERTFORGE_SERVE_NO_API": "1", "OTHER": "x"}
    # file < environment < --set
    config = load_config(ServeConfig, config_file, env_overrides(environ) + ["http_port=9302"])
    assert (config.grpc_port, config.http_port, config.api.timeout_s, config.api.enabled) == (9201, 9302, 3.5, False)
    assert load_config(ServeConfig, config_file, env_overrides({})).grpc_port == 9101
    for environ, message in [({"BERTFORGE_SERVE_GRPC_PORT": "eighty"}, "BERTFORGE_SERVE_GRPC_PORT='eighty': expected an integer"),
                             ({"BERTFORGE_SERVE_API_PORT": "70000"}, "BERTFORGE_SERVE_API_PORT: serve.api.port must be in"),
                             ({"BERTFORGE_SERVE_NO_API": "maybe"}, "BERTFORGE_SERVE_NO_API='maybe': expected true/false"),
                             ({"BERTFORGE_SERVE_GRPCPORT": "1"}, "unknown environment variable BERTFORGE_SERVE_GRPCPORT")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            env_overrides(environ)
    # through the real CLI: the variable is used (the repository it names is looked for) and a bad one exits 2
    monkeypatch.setenv("BERTFORGE_SERVE_REPO", str(tmp_path / "from-env"))
    assert main(["serve", "--grpc-port", "0"]) == 2
    assert f"model repository not found: {tmp_path / 'from-env'}" in capsys.readouterr().err
    monkeypatch.setenv("BERTFORGE_SERVE_GRPC_PORT", "x")
    assert main(["serve", "--grpc-port", "0"]) == 2
    assert "BERTFORGE_SERVE_GRPC_PORT='x'" in capsys.readouterr().err


@pytest.mark.parametrize("passed, message", [
    (["--grpc-port=9000"], "pass-through --grpc-port is managed by bertforge; use --grpc-port instead"),
    (["--log-verbose=1", "--model-repository", "/x"], "pass-through --model-repository is managed by bertforge; use --repo"),
    (["--http-address=0.0.0.0"], "use --host instead"),
    (["--model-control-mode=explicit"], "pass-through --model-control-mode explicit: bertforge serves a fixed"),
    (["--model-control-mode", "poll"], "pass-through --model-control-mode poll"),
    (["--backend-directory=/b"], "pass-through --backend-directory is managed by bertforge"),
    (["verbose"], "pass-through argument 'verbose': give tritonserver flags"),
])
def test_serve_refuses_pass_through_flags_that_bertforge_manages(tmp_path, passed, message, capsys):
    assert main(["serve", "--repo", str(tmp_path), "--", *passed]) == 2  # refused before any start
    assert message in capsys.readouterr().err


def test_serve_pass_through_accepts_other_tritonserver_flags():
    from serve.launcher import check_passthrough

    passed = ["--log-verbose=1", "--trace-config", "mode=triton", "--model-control-mode=none", "--grpc-use-ssl=true"]
    assert check_passthrough(passed) == tuple(passed)


def test_docs_serve_lists_every_environment_variable():
    from pathlib import Path

    from serve.config import env_variables

    documented = set(re.findall(r"`(BERTFORGE_SERVE_[A-Z_]+)`", (Path(__file__).parents[2] / "docs/serve.md").read_text()))
    assert documented == set(env_variables())
