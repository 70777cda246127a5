"""Write the Triton side of a served model: `config.pbtxt`, `1/model.py` and `1/serving.json`.

The export stage calls `write_triton_model` after it has put `1/model.onnx` and `1/tokenizer/`
in place. Everything here is rendered by code from `bertforge/contract.py` and `ServingSettings`,
so the committed `model_repository/*/config.pbtxt` and `model.py` are exactly what default
settings produce (a test keeps them in sync).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bertforge import contract
from bertforge.config import ConfigError, from_dict, to_dict

Task = Literal["fill_mask", "embed"]
VERSION = "1"
SERVING_FILE = "serving.json"
MODEL_TEMPLATE = Path(__file__).with_name("model_template.py")
TASK_TO_MODEL = {"fill_mask": contract.FILL_MASK_MODEL, "embed": contract.EMBED_MODEL}


@dataclass(kw_only=True)
class ServingSettings:
    """How one model is served. Written to `1/serving.json` and read back by the backend."""

    task: Task
    # Tokenization / model limits
    max_length: int = contract.DEFAULT_MAX_LENGTH  # tokens incl. [CLS]/[SEP]; the model's max positions
    max_text_bytes: int = 65536  # longer UTF-8 texts are rejected before decoding and tokenization
    max_text_chars: int = 32768  # longer texts (in characters) are rejected before tokenization
    truncation: Literal["truncate", "error"] = "truncate"  # default policy; requests may override
    # fill_mask
    max_top_k: int = contract.MAX_TOP_K  # k of the top-k inside the ONNX graph
    default_top_k: int = contract.DEFAULT_TOP_K
    # embed (the graph pools; recorded here so clients and docs can say what they get)
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = False
    precision: str = "fp32"
    # Triton scheduling, measured on a 2-core CPU host (docs/serve.md "Tuning")
    max_batch_size: int = 32
    dynamic_batching: bool = True  # False: each request runs alone (bench's "batching off" baseline)
    max_queue_delay_microseconds: int = 0  # CPU runs take ms: requests queue and merge meanwhile anyway
    preferred_batch_sizes: tuple[int, ...] = ()  # none measurably helped on CPU; take all that is queued
    max_batch_tokens: int = 4096  # padded tokens per ONNX run; larger batches are split
    min_batch_fill: float = 0.75  # split further while real/padded tokens of a sub-batch would drop below this
    instance_count: int = 1
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"
    # ONNX Runtime: first available provider wins (CPU always last)
    execution_providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (one per core)

    def __post_init__(self) -> None:
        if self.task not in TASK_TO_MODEL:
            raise ConfigError(f"serving task {self.task!r} is not one of {sorted(TASK_TO_MODEL)}")
        for name in ("max_length", "max_text_bytes", "max_text_chars", "max_top_k", "default_top_k", "max_batch_size",
                     "max_batch_tokens", "instance_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serving.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 3:
            raise ConfigError("serving.max_length must leave room for [CLS] text [SEP] (>= 3)")
        if self.default_top_k > self.max_top_k:
            raise ConfigError(f"serving.default_top_k ({self.default_top_k}) exceeds max_top_k ({self.max_top_k})")
        if self.max_queue_delay_microseconds < 0:
            raise ConfigError("serving.max_queue_delay_microseconds must be >= 0")
        bad = [size for size in self.preferred_batch_sizes if not 1 <= size <= self.max_batch_size]
        if bad:
            raise ConfigError(f"serving.preferred_batch_sizes {bad} must lie in 1..max_batch_size ({self.max_batch_size})")
        if self.max_batch_tokens < self.max_length:
            raise ConfigError(f"serving.max_batch_tokens ({self.max_batch_tokens}) must fit one text of max_length "
                              f"({self.max_length}); raise it")
        if not 0.0 <= self.min_batch_fill <= 1.0:
            raise ConfigError(f"serving.min_batch_fill must be in 0..1 (0 = never split for padding), got {self.min_batch_fill}")
        if self.intra_op_threads < 0:
            raise ConfigError("serving.intra_op_threads must be >= 0 (0 = ONNX Runtime default)")
        if not self.execution_providers:
            raise ConfigError("serving.execution_providers is empty; use e.g. ['CPUExecutionProvider']")

    @property
    def model_name(self) -> str:
        return TASK_TO_MODEL[self.task]


def write_triton_model(model_dir: Path, settings: ServingSettings, info: dict[str, Any] | None = None) -> None:
    """Write `config.pbtxt`, `1/model.py` and `1/serving.json` into `model_dir` (the ONNX is the exporter's)."""
    model_dir = Path(model_dir)
    if model_dir.name != settings.model_name:
        raise ConfigError(f"Triton needs the folder name to equal the model name: expected "
                          f"{model_dir.parent / settings.model_name}, got {model_dir}")
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(render_config_pbtxt(settings))
    shutil.copyfile(MODEL_TEMPLATE, version_dir / "model.py")
    document = {"settings": to_dict(settings), "info": info or {}}
    (version_dir / SERVING_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_serving_settings(version_dir: Path) -> ServingSettings:
    """Read `serving.json` back (the backend calls this at model load)."""
    path = Path(version_dir) / SERVING_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing; re-run `bertforge export` to write the model repository")
    document = json.loads(path.read_text())
    return from_dict(ServingSettings, document.get("settings", {}), where=str(path))


def update_triton_model(model_dir: Path, **changes: Any) -> ServingSettings:
    """Change some settings of an exported model (config.pbtxt + serving.json), keeping its export info."""
    version_dir = Path(model_dir) / VERSION
    settings = dataclasses.replace(load_serving_settings(version_dir), **changes)
    info = json.loads((version_dir / SERVING_FILE).read_text()).get("info", {})
    write_triton_model(Path(model_dir), settings, info)
    return settings


def render_config_pbtxt(settings: ServingSettings) -> str:
    """The Triton model configuration for `settings`, as protobuf text."""
    if settings.task == "fill_mask":
        outputs = [(contract.TOKENS_OUTPUT, "TYPE_STRING", "-1, -1"),  # [num_masks, top_k]
                   (contract.TOKEN_IDS_OUTPUT, "TYPE_INT64", "-1, -1"),
                   (contract.SCORES_OUTPUT, "TYPE_FP32", "-1, -1")]
    else:
        outputs = [(contract.EMBEDDING_OUTPUT, "TYPE_FP32", "-1")]  # [hidden]
    lines = [
        "# Generated by serve.repository.write_triton_model from bertforge/contract.py and ServingSettings.",
        "# Edit the settings (bertforge export), not this file. Tensors are documented in docs/serve.md.",
        f'name: "{settings.model_name}"',
        'backend: "python"',
        f"max_batch_size: {settings.max_batch_size}",
        "input [",
        "  {",
        f'    name: "{contract.TEXT_INPUT}"',
        "    data_type: TYPE_STRING",
        "    dims: [ 1 ]",
        "  }",
        "]",
        "output [",
    ]
    for index, (name, data_type, dims) in enumerate(outputs):
        closing = "  }," if index < len(outputs) - 1 else "  }"
        lines += ["  {", f'    name: "{name}"', f"    data_type: {data_type}", f"    dims: [ {dims} ]", closing]
    lines.append("]")
    if settings.dynamic_batching:
        lines.append("dynamic_batching {")
        if settings.preferred_batch_sizes:
            sizes = ", ".join(str(size) for size in settings.preferred_batch_sizes)
            lines.append(f"  preferred_batch_size: [ {sizes} ]")
        lines += [f"  max_queue_delay_microseconds: {settings.max_queue_delay_microseconds}", "}"]
    lines += [
        "instance_group [",
        "  {",
        f"    count: {settings.instance_count}",
        f"    kind: {settings.instance_kind}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def settings_fields() -> list[str]:
    """Names a caller may pass to `ServingSettings` (the exporter forwards its options)."""
    return [field.name for field in dataclasses.fields(ServingSettings)]


def write_default_repository(repo: Path) -> None:
    """Regenerate the committed `config.pbtxt` and `1/model.py` of both models (serving.json untouched)."""
    for task in TASK_TO_MODEL:
        settings = ServingSettings(task=task)
        model_dir = Path(repo) / settings.model_name
        (model_dir / VERSION).mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(render_config_pbtxt(settings))
        shutil.copyfile(MODEL_TEMPLATE, model_dir / VERSION / "model.py")


if __name__ == "__main__":
    import sys

    write_default_repository(Path(sys.argv[1] if len(sys.argv) > 1 else "model_repository"))
