"""Security defaults: every port on loopback, Triton's model control off (no remote load/unload), size limits
before tokenization. (The listening-socket check on a real server is tests/serve/test_server.py.)"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from bertforge import contract
from bertforge.served_model import ServedModelDir
from bertforge.tasks import EMBED, FILL_MASK


def test_launch_command_binds_loopback_and_turns_model_control_off(tmp_path):
    from serve.config import ServeConfig
    from serve.launcher import Endpoints, server_command

    config = ServeConfig()
    assert config.host == contract.DEFAULT_HOST == "127.0.0.1"
    command = server_command(tmp_path, tmp_path, Endpoints(config.host, 8001, 8000, 8002))
    addresses = {flag.split("=")[0]: flag.split("=")[1] for flag in command if flag.endswith("-address=127.0.0.1")}
    assert set(addresses) == {"--grpc-address", "--http-address", "--metrics-address"}  # Triton's default is 0.0.0.0
    assert "--model-control-mode=none" in command
    assert not [flag for flag in command if flag.startswith(("--load-model", "--model-control-mode=explicit",
                                                             "--model-control-mode=poll", "--repository-poll"))]


@pytest.mark.slow  # exports the tiny model
def test_runtime_limits_apply_before_tokenization(reliability_repo, monkeypatch):
    """A text over the byte or character limit is refused without ever reaching the tokenizer."""
    from serve.runtime import RequestError, load_runtime

    runtime = load_runtime(ServedModelDir.in_repo(reliability_repo, EMBED).version_dir)
    monkeypatch.setattr(runtime, "tokenizer", None)  # any tokenizer use would raise AttributeError
    settings = runtime.settings
    with pytest.raises(RequestError, match=f"the limit is {settings.max_text_bytes} bytes"):
        runtime.parse(b"a" * (settings.max_text_bytes + 1), {})
    with pytest.raises(RequestError, match=f"the limit is {settings.max_text_chars} characters"):
        runtime.parse(b"a" * (settings.max_text_chars + 1), {})  # over the characters, within the bytes
    assert settings.max_text_chars < settings.max_text_bytes


@pytest.mark.slow
def test_model_control_api_is_refused_on_a_running_server(reliability_server):
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(reliability_server.endpoints.grpc_url) as client:
        for action in (client.unload_model, client.load_model):
            with pytest.raises(grpcclient.InferenceServerException, match="explicit model load / unload is not allowed"):
                action(EMBED)
        assert client.is_model_ready(EMBED) and client.is_model_ready(FILL_MASK)
    http = reliability_server.endpoints.http_url
    for action in ("unload", "load"):
        request = urllib.request.Request(f"{http}/v2/repository/models/{FILL_MASK}/{action}", data=b"{}",
                                         method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code >= 400
    with urllib.request.urlopen(f"{http}/v2/models/{FILL_MASK}/ready", timeout=10) as reply:
        assert reply.status == 200
