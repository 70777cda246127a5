"""`serve.stack`: the config of a private stack, what `failure` reports, and a failed start stopping what started."""

from __future__ import annotations

import socket
import sys
from types import SimpleNamespace

import psutil
import pytest

from serve.api.process import ApiLaunchError, ApiProcess
from serve.config import ApiConfig
from serve.process import ManagedProcess
from serve.stack import ServingStack, local_config, running_stack


def test_local_config_is_loopback_free_ports_no_supervisor_api_only_when_given(tmp_path):
    config = local_config(tmp_path)
    assert (config.repo, config.host) == (tmp_path, "127.0.0.1")
    assert (config.grpc_port, config.http_port, config.metrics_port) == (0, 0, 0)
    assert not config.supervise and not config.api.enabled
    with_api = local_config(tmp_path, ApiConfig(port=0, max_in_flight=7), ready_timeout_s=5)
    assert with_api.api.enabled and with_api.api.max_in_flight == 7 and with_api.ready_timeout_s == 5


def test_failure_names_the_process_that_died(tmp_path):
    def start(name: str, code: str) -> ManagedProcess:
        return ManagedProcess.start(name, [sys.executable, "-c", code], tmp_path / f"{name}.log")

    server = start("tritonserver", "import time; time.sleep(60)")
    api = start("api", "print('bad config'); raise SystemExit(2)")
    api.wait(10)
    stack = ServingStack(SimpleNamespace(process=server, log_tail=server.log_tail), ApiProcess(api, "http://x"))
    try:
        assert stack.failure().startswith(f"the API process exited with code 2 (log {api.log_path}):\nbad config")
        stack.api = None
        assert stack.failure() is None
        server.stop(5)
        assert stack.failure().startswith("tritonserver exited with code -15")
        stack.supervisor = object()  # a supervisor heals tritonserver's exit: not a failure of the stack
        assert stack.failure() is None
    finally:
        server.stop(5)


@pytest.mark.slow
def test_an_api_that_cannot_start_stops_the_tritonserver_started_for_it(served_repo):
    def tritonservers() -> set[int]:
        return {child.pid for child in psutil.Process().children(recursive=True) if child.name() == "tritonserver"}

    before = tritonservers()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = local_config(served_repo, ApiConfig(port=taken.getsockname()[1]))
        with pytest.raises(ApiLaunchError, match="cannot listen on"):
            with running_stack(config):
                pass
    assert tritonservers() <= before
