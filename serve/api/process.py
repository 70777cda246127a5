"""Run the API in its own process (uvicorn) next to tritonserver, and stop it by its PID.

`running_api(repo, grpc_url, ...)` is what `serve.stack.running_stack` starts beside tritonserver; the child is
`python -m serve.api`, which binds its socket itself (port 0 = a free one, no race) and writes the
address it listens on to a file once it is up. The API key travels in the child's environment, never
on its command line (which any local user can read with ps).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from serve.config import API_KEY_ENV, ApiConfig
from serve.process import ManagedProcess, url_host

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class ApiLaunchError(RuntimeError):
    """The API process did not come up; the message holds its log."""


@dataclass
class ApiProcess:
    process: ManagedProcess
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)


@contextlib.contextmanager
def running_api(repo: str | Path, grpc_url: str, host: str = "127.0.0.1", config: ApiConfig | None = None,
                api_key: str | None = None, log_path: str | Path | None = None,
                start_timeout_s: float = START_TIMEOUT_S, restarts_file: Path | None = None) -> Iterator[ApiProcess]:
    """Context manager: the API process, up and listening; stopped (SIGTERM, then SIGKILL) on exit."""
    config = config or ApiConfig()
    workdir = Path(tempfile.mkdtemp(prefix="bertforge-api-"))
    log_path = Path(log_path) if log_path else workdir / "api.log"
    address_file = workdir / "address.json"
    env = dict(os.environ)
    env.pop(API_KEY_ENV, None)
    if api_key:
        env[API_KEY_ENV] = api_key
    if restarts_file is not None:  # the supervisor's restart counts, exported on /metrics
        from serve.api.metrics import RESTARTS_FILE_ENV

        env[RESTARTS_FILE_ENV] = str(restarts_file)
    command = [sys.executable, "-m", "serve.api", "--repo", str(repo), "--grpc-url", grpc_url, "--host", host,
               "--config-json", json.dumps(dataclasses.asdict(config)), "--address-file", str(address_file)]
    process = ManagedProcess.start("the API process", command, log_path, env=env)
    try:
        yield ApiProcess(process, _wait_for_address(process, address_file, start_timeout_s))
    finally:
        process.stop(STOP_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    """The child: `python -m serve.api --repo R --grpc-url U [--host H] [--config-json J] [--address-file F]`."""
    import uvicorn

    from serve.api.app import create_app
    from serve.api.forward import TritonForwarder

    parser = argparse.ArgumentParser(prog="python -m serve.api", description=__doc__)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--grpc-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config-json", default="{}", help="ApiConfig fields as JSON")
    parser.add_argument("--address-file", help="written with {'url': ...} once listening")
    args = parser.parse_args(argv)
    config = ApiConfig(**json.loads(args.config_json))
    app = create_app(TritonForwarder(args.grpc_url, Path(args.repo), config), config,
                     api_key=os.environ.get(API_KEY_ENV) or None)
    sock = _bind(args.host, config.port)
    bound_port = sock.getsockname()[1]
    # proxy_headers off: no proxy is trusted by default (X-Forwarded-For from anyone would be believed)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=5, proxy_headers=False, server_header=False))
    url = f"http://{url_host(args.host)}:{bound_port}"

    async def serve() -> None:
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:  # lifespan done (gRPC client up): announce the address
            if task.done():
                return await task
            await asyncio.sleep(0.02)
        if args.address_file:
            Path(args.address_file).write_text(json.dumps({"url": url}))
        print(f"bertforge API listening on {url}", flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its graceful shutdown
        _event_loop_runner()(serve())
    return 0


def _event_loop_runner():
    """uvloop when installed (measured: less CPU per request than asyncio's loop), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only then, and without it
    # a response's headers and body (two writes) meet the client's delayed ACK: +40 ms per request
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port} ({error}); pick another --api-port (0 = any free port)") from None
    sock.set_inheritable(True)
    return sock


def _wait_for_address(process: ManagedProcess, address_file: Path, timeout_s: float) -> str:
    def listening_url() -> str | None:
        if address_file.is_file():
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                return json.loads(address_file.read_text())["url"]
        return None

    return process.wait_until(listening_url, timeout_s, "it listened", ApiLaunchError, poll_s=0.05)
