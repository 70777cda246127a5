"""`bertforge serve`: run the real tritonserver on a model repository until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from bertforge.cli_options import add_config_options, build_config, given

ENDPOINTS_PREFIX = "BERTFORGE_ENDPOINTS "  # then one JSON object: grpc, http, metrics, api, pid


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run tritonserver on a model repository (fill_mask, embed)",
        description="Start Triton Inference Server on REPO (127.0.0.1 only unless --host), wait until it is "
                    "ready, start the HTTP API beside it (OpenAI /v1/embeddings, TEI /embed, Hugging Face "
                    "fill-mask, /health, /metrics, /docs), print the endpoints, and stop both cleanly on Ctrl-C "
                    "or SIGTERM. Every flag can also be set as BERTFORGE_SERVE_<FLAG> (e.g. "
                    "BERTFORGE_SERVE_GRPC_PORT=0, BERTFORGE_SERVE_API_PORT, BERTFORGE_SERVE_NO_API=1; any config "
                    "key too: BERTFORGE_SERVE_API_TIMEOUT_S); precedence: defaults < --config < environment < "
                    "--set < flags.")
    parser.add_argument("--repo", help="model repository written by `bertforge export` (default: model_repository)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 = free port)")
    parser.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0 = free port)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics port (default 8002; 0 = free port)")
    parser.add_argument("--api-port", type=int, help="HTTP API port (default 8080; 0 = free port)")
    parser.add_argument("--no-api", action="store_true", help="only tritonserver, no HTTP API")
    parser.add_argument("--api-key", help="require `Authorization: Bearer KEY` on the API (default: the "
                                          "BERTFORGE_API_KEY environment variable; none = open, fine on loopback)")
    parser.add_argument("--instances", type=int, help="Triton instances per model (default: as exported)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per instance (default: as exported; "
                                                    "0 = ONNX Runtime's default, one per core)")
    parser.add_argument("--max-batch-tokens", type=int, help="padded tokens per ONNX run; larger merged batches are "
                                                             "split (default: as exported)")
    parser.add_argument("--log-file", help="tritonserver log (default: a temporary file)")
    add_config_options(parser, config_help="TOML file with ServeConfig keys", set_example="api.timeout_s=10")
    parser.add_argument("triton_args", nargs="*", metavar="-- TRITONSERVER_FLAG",
                        help="after `--`: flags passed to tritonserver as they are (--log-verbose=1, --grpc-use-ssl=true "
                             "--grpc-server-cert=..., --trace-config ...); ports, addresses, the repository, model "
                             "control and the backend folder are refused (use bertforge's flags)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from functools import partial

    from bertforge.config import load_config, save_config
    from bertforge.errors import UserError
    from bertforge.served_model import served_models
    from serve.api.process import ApiLaunchError
    from serve.config import API_KEY_ENV, ServeConfig, env_overrides
    from serve.launcher import LaunchError, check_passthrough
    from serve.stack import running_stack

    # Config: defaults < file < BERTFORGE_SERVE_* environment < --set < explicit flags (bertforge/cli_options.py)
    config = build_config(partial(load_config, ServeConfig), args, environment=env_overrides(), flags=_flags(args))
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api.enabled and not api_key:
        print(f"warning: the API on {config.host} is open to the network without a key; pass --api-key or set "
              f"{API_KEY_ENV}", file=sys.stderr, flush=True)

    for warning in int8_warnings(config.repo):
        print(f"warning: {warning}", file=sys.stderr, flush=True)

    try:
        triton_args = check_passthrough(args.triton_args)
    except LaunchError as error:
        raise UserError(str(error)) from None

    # SIGTERM behaves like Ctrl-C so the server is always stopped by the context manager
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with contextlib.ExitStack() as stack:
            served_repo = _served_repository(config, stack)
            running = stack.enter_context(running_stack(config, served_repo, api_key=api_key, extra_args=triton_args,
                                                        keep_workdir=True))  # its log and serve.toml are printed below
            server, api, supervisor, endpoints = running.server, running.api, running.supervisor, running.endpoints
            save_config(config, server.workdir / "serve.toml")  # the resolved config, next to the log
            print(f"tritonserver ready (pid {server.pid}), models from {config.repo}", flush=True)
            print(f"  gRPC     {endpoints.grpc_url}    (bertforge client fill-mask ... --url {endpoints.grpc_url})")
            print(f"  HTTP     {endpoints.http_url}    ({endpoints.http_url}/v2/health/ready)")
            print(f"  metrics  {endpoints.metrics_url}")
            if api is not None:
                key_note = ", bearer key required" if api_key else ""
                print(f"  API      {api.url}    (OpenAI {api.url}/v1, docs {api.url}/docs, health {api.url}/health"
                      f"{key_note})")
            for model in served_models(served_repo):
                if model.is_complete():
                    print(f"  model    {_describe(model.settings())}")
            print(f"  log      {server.log_path}  (config: {server.workdir / 'serve.toml'})")
            if supervisor is not None:
                print(f"  supervisor: a probe inference on {', '.join(supervisor.models)} every "
                      f"{config.supervise_interval_s:g} s; restarts tritonserver on these ports when one fails")
            # the same endpoints as one JSON line for scripts and tests (the lines above are for people)
            machine = {"grpc": endpoints.grpc_url, "http": endpoints.http_url, "metrics": endpoints.metrics_url,
                       "api": api.url if api is not None else None, "pid": os.getpid()}
            print(ENDPOINTS_PREFIX + json.dumps(machine), flush=True)
            print("Ctrl-C to stop.", flush=True)
            while (failure := running.failure()) is None:  # until Ctrl-C / SIGTERM, or a process dies
                time.sleep(0.5)
            raise UserError(failure)
    except (LaunchError, ApiLaunchError) as error:
        raise UserError(str(error)) from None
    except KeyboardInterrupt:
        print("tritonserver stopped", file=sys.stderr, flush=True)
        return 0


def _flags(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The flags given, as typed config values."""
    flags = {key: getattr(args, key) for key in ("host", "grpc_port", "http_port", "metrics_port", "instances",
                                                 "threads", "max_batch_tokens")}
    flags.update({"repo": args.repo and Path(args.repo), "log_file": args.log_file and Path(args.log_file),
                  "api.port": args.api_port, "api.enabled": False if args.no_api else None})
    return given(flags)


def _served_repository(config, stack: contextlib.ExitStack) -> Path:
    """The repository as exported, or a linked copy with the serve-time settings applied (removed at exit)."""
    import tempfile

    from bertforge.config import ConfigError
    from bertforge.errors import UserError
    from bertforge.served_model import copy_repository

    changes = config.serving_changes()
    if not changes:
        return Path(config.repo)
    copy = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bertforge-serve-repo-")))
    try:
        if not copy_repository(config.repo, copy, **changes):
            raise UserError(f"{config.repo} holds no exported model; run `bertforge export` first")
    except ConfigError as error:
        raise UserError(f"serve-time settings do not fit the exported models: {error}") from None
    return copy


def int8_warnings(repo: str | Path) -> list[str]:
    """One line per int8 model whose gate ran under other int8 arithmetic than this CPU's (bertforge/cpu.py)."""
    from bertforge.cpu import detect_cpu, int8_portability_warning
    from bertforge.served_model import served_models

    models = [model for model in served_models(repo) if model.is_complete() and model.settings().precision == "int8"]
    if not models:
        return []
    here = detect_cpu()
    warnings = []
    for model in models:
        info = model.info()
        weights = (info.get("recipe") or {}).get("weights", "int8")  # exports before the field used s8 weights
        warning = int8_portability_warning(info.get("gate_cpu"), weights, here)
        if warning:
            warnings.append(f"{model.name}: {warning}")
    return warnings


def _describe(settings) -> str:
    threads = settings.intra_op_threads or "ORT default"
    return (f"{settings.model_name}: {settings.precision}, {settings.instance_count} instance(s) x {threads} thread(s), "
            f"max_batch_size {settings.max_batch_size}, max_batch_tokens {settings.max_batch_tokens}")


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
