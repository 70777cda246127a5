"""`ServeConfig`: how `bertforge serve` launches tritonserver (TOML file + `--set` overrides + flags)."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bertforge import contract
from bertforge.config import ConfigError
from serve.launcher import EXIT_TIMEOUT_SECS

DEFAULT_API_PORT = 8080
API_KEY_ENV = "BERTFORGE_API_KEY"  # the API key travels by environment (or --api-key), never in a config file


@dataclass(kw_only=True)
class ApiConfig:
    """The HTTP API beside tritonserver (`[api]` section; serve/api/)."""

    enabled: bool = True
    port: int = DEFAULT_API_PORT  # 0 = pick a free port
    max_in_flight: int = 256  # HTTP requests being answered at once; more get 429 (TEI's max-concurrent-requests)
    max_inputs: int = 2048  # texts in one request; more get 413
    max_body_bytes: int = 4 * 1024 * 1024  # request body; more get 413 (each text also has the model's limits)
    triton_in_flight: int = 128  # gRPC requests to Triton at once, over all HTTP requests
    timeout_s: float = 30.0  # per gRPC call to Triton; then 503
    health_timeout_s: float = 2.0  # /health: a probe inference slower than this is a failure
    health_cache_s: float = 2.0  # /health answers from a probe at most this old

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.api.port must be in 0..65535 (0 = pick a free port), got {self.port}")
        for name in ("max_in_flight", "max_inputs", "max_body_bytes", "triton_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.api.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "health_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"serve.api.{name} must be > 0, got {getattr(self, name)}")
        if self.health_cache_s < 0:
            raise ConfigError(f"serve.api.health_cache_s must be >= 0, got {self.health_cache_s}")


AS_EXPORTED = None  # the default of the serve-time settings below: what `bertforge export` wrote


@dataclass(kw_only=True)
class ServeConfig:
    repo: Path = Path("model_repository")
    host: str = contract.DEFAULT_HOST  # 127.0.0.1: only this machine; "0.0.0.0" exposes the server
    grpc_port: int = contract.DEFAULT_GRPC_PORT  # 0 = pick a free port
    http_port: int = contract.DEFAULT_HTTP_PORT
    metrics_port: int = contract.DEFAULT_METRICS_PORT
    ready_timeout_s: float = contract.READY_TIMEOUT_S
    log_file: Path | None = None  # default: a temporary file, printed at start
    exit_timeout_s: int = EXIT_TIMEOUT_SECS  # SIGTERM: in-flight requests get this long (Triton's --exit-timeout-secs)
    supervise: bool = True  # serve/supervisor.py: probe every model, restart tritonserver when one fails
    supervise_interval_s: float = 2.0  # between probe rounds
    # serve-time settings: None = as exported; else every model runs from a copy with these changes
    instances: int | None = AS_EXPORTED  # Triton instances per model
    threads: int | None = AS_EXPORTED  # ONNX Runtime intra-op threads per instance (0 = ORT's default)
    max_batch_tokens: int | None = AS_EXPORTED  # padded tokens per ONNX run (larger merged batches are split)
    api: ApiConfig = field(default_factory=ApiConfig)

    def __post_init__(self) -> None:
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"serve.{name} must be in 0..65535 (0 = pick a free port), got {port}")
        ports = [self.grpc_port, self.http_port, self.metrics_port] + ([self.api.port] if self.api.enabled else [])
        nonzero = [port for port in ports if port]
        if len(nonzero) != len(set(nonzero)):
            raise ConfigError("serve: the gRPC, HTTP, metrics and API ports must differ")
        if self.ready_timeout_s <= 0:
            raise ConfigError("serve.ready_timeout_s must be > 0")
        if self.exit_timeout_s < 0:
            raise ConfigError(f"serve.exit_timeout_s must be >= 0, got {self.exit_timeout_s}")
        if self.supervise_interval_s <= 0:
            raise ConfigError(f"serve.supervise_interval_s must be > 0, got {self.supervise_interval_s}")
        for name, lowest in (("instances", 1), ("threads", 0), ("max_batch_tokens", 1)):
            value = getattr(self, name)
            if value is not None and value < lowest:
                raise ConfigError(f"serve.{name} must be >= {lowest}, got {value}")

    def serving_changes(self) -> dict:
        """The `ServingSettings` changes these serve-time settings make (empty: serve the models as exported)."""
        changes = {"instance_count": self.instances, "intra_op_threads": self.threads,
                   "max_batch_tokens": self.max_batch_tokens}
        return {key: value for key, value in changes.items() if value is not None}


ENV_PREFIX = "BERTFORGE_SERVE_"  # BERTFORGE_SERVE_GRPC_PORT=0, BERTFORGE_SERVE_API_TIMEOUT_S=10, ...
_ENV_ALIASES = {"NO_API": ("api.enabled", "invert")}  # the `--no-api` flag as a variable


def env_variables() -> dict[str, str]:
    """Every `BERTFORGE_SERVE_*` variable and the key it sets (`GRPC_PORT` -> `grpc_port`, `API_PORT` -> `api.port`)."""
    table = {}
    for serve_field in dataclasses.fields(ServeConfig):
        if serve_field.name == "api":
            for api_field in dataclasses.fields(ApiConfig):
                table[f"{ENV_PREFIX}API_{api_field.name.upper()}"] = f"api.{api_field.name}"
        else:
            table[f"{ENV_PREFIX}{serve_field.name.upper()}"] = serve_field.name
    for alias, (key, _) in _ENV_ALIASES.items():
        table[f"{ENV_PREFIX}{alias}"] = key
    return table


def env_overrides(environ: Mapping[str, str] | None = None) -> list[tuple[str, object]]:
    """The `BERTFORGE_SERVE_*` variables as `(key, typed value)` overrides (file < env < --set < flags:
    bertforge/cli_options.py).

    Values are checked here, so a bad one is an error naming the variable; an unknown `BERTFORGE_SERVE_*` name
    (a typo) is an error too, listing the valid ones. `BERTFORGE_API_KEY` is read separately (a secret).
    """
    environ = os.environ if environ is None else environ
    table = env_variables()
    overrides = []
    for variable in sorted(name for name in environ if name.startswith(ENV_PREFIX)):
        if variable not in table:
            raise ConfigError(f"unknown environment variable {variable}; valid: {', '.join(sorted(table))}")
        key, raw = table[variable], environ[variable].strip()
        alias = _ENV_ALIASES.get(variable[len(ENV_PREFIX):])
        value = _parse_env_value(variable, _field_type(key), raw)
        if alias is not None:
            value = not value
        _check_alone(variable, key, value)
        overrides.append((key, value))
    return overrides


def _field_type(key: str) -> type:
    cls, name = (ApiConfig, key.split(".", 1)[1]) if key.startswith("api.") else (ServeConfig, key)
    hint = typing.get_type_hints(cls)[name]
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if args else hint


def _parse_env_value(variable: str, kind: type, raw: str) -> object:
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind in (int, float):
            return kind(raw)
    except ValueError:
        expected = {bool: "true/false (or 1/0)", int: "an integer", float: "a number"}[kind]
        raise ConfigError(f"environment variable {variable}={raw!r}: expected {expected}") from None
    if not raw:
        raise ConfigError(f"environment variable {variable} is empty; unset it to use the default")
    return raw


def _check_alone(variable: str, key: str, value: object) -> None:
    """Range checks of this one key (e.g. a port > 65535) reported with the variable's name."""
    from bertforge.config import load_config

    try:
        load_config(ServeConfig, None, [(key, value)])
    except ConfigError as error:
        if f"serve.{key} " in str(error) or f".{key}:" in str(error):
            raise ConfigError(f"environment variable {variable}: {error}") from None
