"""`ServeConfig`: how `bertforge serve` launches tritonserver (TOML file + `--set` overrides + flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertforge import contract
from bertforge.config import ConfigError


@dataclass(kw_only=True)
class ServeConfig:
    repo: Path = Path("model_repository")
    host: str = contract.DEFAULT_HOST  # 127.0.0.1: only this machine; "0.0.0.0" exposes the server
    grpc_port: int = contract.DEFAULT_GRPC_PORT  # 0 = pick a free port
    http_port: int = contract.DEFAULT_HTTP_PORT
    metrics_port: int = contract.DEFAULT_METRICS_PORT
    ready_timeout_s: float = 120.0
    log_file: Path | None = None  # default: a temporary file, printed at start

    def __post_init__(self) -> None:
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"serve.{name} must be in 0..65535 (0 = pick a free port), got {port}")
        nonzero = [port for port in (self.grpc_port, self.http_port, self.metrics_port) if port]
        if len(nonzero) != len(set(nonzero)):
            raise ConfigError("serve: the gRPC, HTTP and metrics ports must differ")
        if self.ready_timeout_s <= 0:
            raise ConfigError("serve.ready_timeout_s must be > 0")
