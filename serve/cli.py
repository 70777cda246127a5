"""`bertforge serve`: run the real tritonserver on a model repository until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run tritonserver on a model repository (fill_mask, embed)",
        description="Start Triton Inference Server on REPO (127.0.0.1 only unless --host), wait until it is "
                    "ready, print the endpoints, and stop it cleanly on Ctrl-C or SIGTERM.")
    parser.add_argument("--repo", help="model repository written by `bertforge export` (default: model_repository)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 = free port)")
    parser.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0 = free port)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics port (default 8002; 0 = free port)")
    parser.add_argument("--log-file", help="tritonserver log (default: a temporary file)")
    parser.add_argument("--config", help="TOML file with ServeConfig keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bertforge.cli import UserError
    from bertforge.config import load_config, save_config
    from serve.config import ServeConfig
    from serve.launcher import LaunchError, running_server

    # Config: file < --set < explicit flags
    config = load_config(ServeConfig, args.config, args.set)
    flags = {key: getattr(args, key) for key in ("host", "grpc_port", "http_port", "metrics_port")}
    flags.update(repo=args.repo and Path(args.repo), log_file=args.log_file and Path(args.log_file))
    config = dataclasses.replace(config, **{key: value for key, value in flags.items() if value is not None})

    # SIGTERM behaves like Ctrl-C so the server is always stopped by the context manager
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with running_server(config.repo, config.host, config.grpc_port, config.http_port, config.metrics_port,
                            log_path=config.log_file, ready_timeout_s=config.ready_timeout_s,
                            keep_workdir=True) as server:  # its log and serve.toml are printed below
            endpoints = server.endpoints
            save_config(config, server.workdir / "serve.toml")  # the resolved config, next to the log
            print(f"tritonserver ready (pid {server.pid}), models from {config.repo}", flush=True)
            print(f"  gRPC     {endpoints.grpc_url}    (bertforge client fill-mask ... --url {endpoints.grpc_url})")
            print(f"  HTTP     {endpoints.http_url}    ({endpoints.http_url}/v2/health/ready)")
            print(f"  metrics  {endpoints.metrics_url}")
            print(f"  log      {server.log_path}  (config: {server.workdir / 'serve.toml'})")
            print("Ctrl-C to stop.", flush=True)
            server.process.wait()
            raise UserError(f"tritonserver exited with code {server.process.returncode}:\n{server.log_tail()}")
    except LaunchError as error:
        raise UserError(str(error)) from None
    except KeyboardInterrupt:
        print("tritonserver stopped", file=sys.stderr, flush=True)
        return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
