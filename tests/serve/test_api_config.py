"""The API's settings and the commands around it, without a server: config checks, light imports, bench flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bertforge.config import ConfigError
from serve.config import ApiConfig, ServeConfig


def test_client_and_cli_never_import_the_web_stack_or_torch():
    code = ("import sys, serve.client, serve.cli_client, serve.cli, bertforge.cli; "
            "bertforge.cli.build_parser() if hasattr(bertforge.cli, 'build_parser') else None; "
            "heavy = [name for name in ('torch', 'fastapi', 'uvicorn', 'starlette', 'prometheus_client') "
            "if name in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("changes, message", [
    ({"port": 70000}, "serve.api.port must be in 0..65535"),
    ({"max_in_flight": 0}, "serve.api.max_in_flight must be >= 1"),
    ({"max_inputs": 0}, "serve.api.max_inputs must be >= 1"),
    ({"timeout_s": 0}, "serve.api.timeout_s must be > 0"),
    ({"health_cache_s": -1}, "serve.api.health_cache_s must be >= 0"),
])
def test_api_config_refuses_impossible_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        ApiConfig(**changes)


def test_api_port_must_differ_from_tritons_unless_the_api_is_off():
    with pytest.raises(ConfigError, match="API ports must differ"):
        ServeConfig(grpc_port=9000, api=ApiConfig(port=9000))
    assert ServeConfig(grpc_port=9000, api=ApiConfig(port=9000, enabled=False)).api.port == 9000


def test_serve_with_host_0000_and_no_key_warns(tmp_path, capsys, monkeypatch):
    from bertforge.cli import main

    monkeypatch.delenv("BERTFORGE_API_KEY", raising=False)
    assert main(["serve", "--repo", str(tmp_path / "none"), "--host", "0.0.0.0", "--grpc-port", "0"]) == 2
    assert "open to the network without a key" in capsys.readouterr().err


def test_bench_api_flag_needs_the_matching_task(capsys):
    from bertforge.cli import main

    assert main(["bench", "serve", "--api", "hf", "--task", "embed", "--no-plots", "--output", "/tmp/never.json"]) == 2
    assert "--api hf serves fill_mask; add --task fill_mask" in capsys.readouterr().err
