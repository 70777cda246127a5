"""`ServeConfig`: how `bertforge serve` launches tritonserver (TOML file + `--set` overrides + flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bertforge import contract
from bertforge.config import ConfigError

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


@dataclass(kw_only=True)
class ServeConfig:
    repo: Path = Path("model_repository")
    host: str = contract.DEFAULT_HOST  # 127.0.0.1: only this machine; "0.0.0.0" exposes the server
    grpc_port: int = contract.DEFAULT_GRPC_PORT  # 0 = pick a free port
    http_port: int = contract.DEFAULT_HTTP_PORT
    metrics_port: int = contract.DEFAULT_METRICS_PORT
    ready_timeout_s: float = 120.0
    log_file: Path | None = None  # default: a temporary file, printed at start
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
