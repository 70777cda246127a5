"""The whole serving stack in one call: tritonserver, the HTTP API beside it (optional), the supervisor (optional).

`running_stack(config)` is what `bertforge serve`, bench and the test fixtures run: it starts tritonserver on
`config.repo` (ports 0 = free ones, listeners on `config.host`, model control off), waits until it is ready, then
the API process forwarding to it and the supervisor probing it, and stops all of them (supervisor, API, server, in
that order) on exit or when a later part fails to start. `local_config(repo)` is the config of a private stack:
loopback, every port free, no API unless given one, no supervisor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from serve.api.process import ApiProcess, running_api
from serve.config import ApiConfig, ServeConfig
from serve.launcher import Endpoints, TritonServer, running_server

if TYPE_CHECKING:
    from serve.supervisor import Supervisor

RESTARTS_FILE = "restarts.json"  # in the server's work folder: the supervisor writes it, the API's /metrics reads it
API_LOG_FILE = "api.log"  # in the server's work folder, beside tritonserver.log


@dataclass
class ServingStack:
    server: TritonServer
    api: ApiProcess | None = None
    supervisor: Supervisor | None = None

    @property
    def endpoints(self) -> Endpoints:
        return self.server.endpoints

    @property
    def grpc_url(self) -> str:
        return self.server.endpoints.grpc_url

    def failure(self) -> str | None:
        """What died, with its log tail; None while every process runs (tritonserver's exit is the supervisor's
        to heal when there is one)."""
        if self.supervisor is None and self.server.process.poll() is not None:
            return f"tritonserver exited with code {self.server.process.returncode}:\n{self.server.log_tail()}"
        if self.api is not None and self.api.process.poll() is not None:
            return (f"the API process exited with code {self.api.process.returncode} (log {self.api.log_path}):\n"
                    f"{self.api.log_tail()}")
        return None


@contextlib.contextmanager
def running_stack(config: ServeConfig, repo: str | Path | None = None, api_key: str | None = None,
                  extra_args: tuple[str, ...] = (), keep_workdir: bool = False) -> Iterator[ServingStack]:
    """Context manager: tritonserver on `repo` (default `config.repo`; `bertforge serve` passes a copy with the
    serve-time settings), ready, then the API when `config.api.enabled` and the supervisor when `config.supervise`.

    Raises serve.launcher.LaunchError or serve.api.process.ApiLaunchError (naming the log) when a part does not
    come up; what was started by then is stopped. `keep_workdir` keeps tritonserver's work folder (its log, the
    API's log) after a clean exit too.
    """
    repo = Path(config.repo if repo is None else repo)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(running_server(
            repo, config.host, config.grpc_port, config.http_port, config.metrics_port, log_path=config.log_file,
            ready_timeout_s=config.ready_timeout_s, extra_args=extra_args, exit_timeout_s=config.exit_timeout_s,
            keep_workdir=keep_workdir))
        running = ServingStack(server)
        if config.api.enabled:
            running.api = stack.enter_context(running_api(
                repo, server.endpoints.grpc_url, config.host, config.api, api_key=api_key,
                log_path=server.workdir / API_LOG_FILE, restarts_file=server.workdir / RESTARTS_FILE))
        if config.supervise:
            from serve.health import probed_models
            from serve.supervisor import Supervisor

            models = probed_models(repo)
            running.supervisor = Supervisor(server, list(models), interval_s=config.supervise_interval_s,
                                            counts_file=server.workdir / RESTARTS_FILE, tasks=models).start()
            stack.callback(running.supervisor.stop)  # stopped before the server (the stack unwinds in reverse)
        yield running


def local_config(repo: str | Path, api: ApiConfig | None = None, **settings: object) -> ServeConfig:
    """A private stack's config: 127.0.0.1, free ports, no supervisor, the API only when `api` is given (its port
    0 = free too). `settings` are other ServeConfig fields."""
    return ServeConfig(repo=Path(repo), grpc_port=0, http_port=0, metrics_port=0, supervise=False,
                       api=api or ApiConfig(enabled=False, port=0), **settings)
