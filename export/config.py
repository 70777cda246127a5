"""`ExportConfig`: everything `bertforge export` needs, loadable from TOML with `--set key=value` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bertforge import contract
from bertforge.config import ConfigError, load_config

PRECISIONS = ("fp32", "int8", "int8-static", "fp16")
TASKS = ("fill_mask", "embed")


@dataclass(kw_only=True)
class ParityGates:
    """Thresholds a variant must meet against PyTorch fp32, else it is not written."""

    fp32_max_abs_diff: float = 1e-4  # probabilities and embeddings; top-1 must also be identical
    int8_top1: float = 0.97  # fraction of masked tokens whose top-1 id equals PyTorch's
    int8_cosine: float = 0.99  # lowest embedding cosine over all texts
    fp16_top1: float = 0.99
    fp16_cosine: float = 0.99

    def __post_init__(self) -> None:
        for name in ("int8_top1", "int8_cosine", "fp16_top1", "fp16_cosine"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"gates.{name} must lie in 0..1, got {getattr(self, name)}")
        if self.fp32_max_abs_diff <= 0:
            raise ConfigError("gates.fp32_max_abs_diff must be > 0")


@dataclass(kw_only=True)
class ExportConfig:
    """One export: a BERT folder -> verified ONNX variants (+ a Triton repository)."""

    model: Path | None = None  # HF BERT folder (config.json, weights, tokenizer)
    repo: Path | None = Path("model_repository")  # Triton model repository to write (None with `output`)
    output: Path | None = None  # plain mode: only ONNX variants + report, no Triton files
    precision: str = "int8"  # one of PRECISIONS; `output` mode also takes a comma list or "all"
    tasks: tuple[str, ...] = TASKS  # fill_mask needs an MLM head; without one only embed is written
    optimize: bool = True  # ONNX Runtime transformer fusions (Attention, SkipLayerNorm, Gelu)
    opset: int = 18
    # embed graph
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = False
    # fill_mask graph
    max_top_k: int = contract.MAX_TOP_K
    max_length: int | None = None  # default: min(max_position_embeddings, tokenizer.model_max_length)
    # data for int8-static calibration and the parity gate (default: the demo corpus cache, else built-in text)
    calibration_file: Path | None = None  # .txt (one text a line) or .jsonl ({"text": ...})
    calibration_samples: int = 64
    parity_file: Path | None = None
    parity_samples: int = 32
    seed: int = 0
    gates: ParityGates = field(default_factory=ParityGates)
    # forwarded to serve.repository.ServingSettings (max_batch_size, instance_count, ...)
    serving: Any = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise ConfigError(f"precision {precision!r} is not one of {list(PRECISIONS)} (or 'all' with --output)")
        if self.output is None and self.repo is None:
            raise ConfigError("give a repository (--repo DIR) or a plain output folder (--output DIR)")
        if self.output is None and len(self.precisions) != 1:
            raise ConfigError(f"a Triton repository serves one precision; got {list(self.precisions)} "
                              "(use --output DIR to write several variants)")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown or not self.tasks:
            raise ConfigError(f"tasks {unknown or '[]'} invalid; choose from {list(TASKS)}")
        if self.opset < 17:
            raise ConfigError(f"opset must be >= 17 (LayerNormalization), got {self.opset}")
        if not 1 <= self.max_top_k:
            raise ConfigError(f"max_top_k must be >= 1, got {self.max_top_k}")
        if self.max_length is not None and self.max_length < 3:
            raise ConfigError("max_length must leave room for [CLS] text [SEP] (>= 3)")
        if self.calibration_samples < 1 or self.parity_samples < 1:
            raise ConfigError("calibration_samples and parity_samples must be >= 1")
        if not isinstance(self.serving, dict):
            raise ConfigError("serving must be a table of ServingSettings fields, e.g. serving.max_batch_size=16")

    @property
    def precisions(self) -> tuple[str, ...]:
        if self.precision == "all":
            return PRECISIONS
        return tuple(part.strip() for part in self.precision.split(",") if part.strip())


def load_export_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExportConfig:
    return load_config(ExportConfig, path, overrides)
