"""The served model folder (`ServedModelDir`) and how one model is served (`ServingSettings`).

The hand-over between export and serve, so it lives on the ground floor: the export stage calls
`ServedModelDir.write` after it has put `1/model.onnx` and `1/tokenizer/` in place; serve and bench
read and copy models only through `ServedModelDir`. `config.pbtxt` and `1/model.py` are rendered
from the task registry (`bertforge/tasks.py`) and `ServingSettings`, so the committed
`model_repository/*/` files are exactly what default settings produce (a test keeps them in sync;
regenerate with `python -m bertforge.served_model model_repository`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bertforge import contract, tasks
from bertforge.config import ConfigError, from_dict, to_dict
from bertforge.files import write_json_atomically, write_text_atomically
from bertforge.pooling import POOLING_MODES

# The served model folder: <repo>/<model>/{config.pbtxt, 1/{model.py, serving.json, model.onnx, tokenizer/}}
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
BACKEND_FILE = "model.py"
SERVING_FILE = "serving.json"
ONNX_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"
REPORT_FILE = "export_report.json"  # <repo>/export_report.json: what the export measured and chose
DEFAULT_MAX_BATCH_TOKENS = 4096  # padded tokens per ONNX run (docs/serve.md "Tuning")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a Triton model (folder) name
# every model's 1/model.py builds this class; it runs the task of its serving.json through the task's runtime
BACKEND = "serve.backend:ServedModel"


@dataclass(kw_only=True)
class ServingOptions:
    """What a user chooses about serving: `bertforge export --set serving.KEY=VALUE` and serve-time flags.

    Checked when the config loads, so a bad value or a misspelt key fails before any export work."""

    max_text_bytes: int = 65536  # longer UTF-8 texts are rejected before decoding and tokenization
    max_text_chars: int = 32768  # longer texts (in characters) are rejected before tokenization
    truncation: Literal["truncate", "error"] = "truncate"  # default policy; requests may override
    default_top_k: int = contract.DEFAULT_TOP_K  # fill_mask; capped at the graph's max_top_k
    # Triton scheduling: Triton merges up to max_batch_size queued requests, the token budget splits them
    max_batch_size: int = 64
    dynamic_batching: bool = True  # False: each request runs alone (bench's "batching off" baseline)
    max_queue_delay_microseconds: int = 0  # CPU runs take ms: requests queue and merge meanwhile anyway
    preferred_batch_sizes: tuple[int, ...] = ()  # none measurably helped on CPU; take all that is queued
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS  # padded tokens per ONNX run; larger batches are split
    min_batch_fill: float = 0.75  # split further while real/padded tokens of a sub-batch would drop below this
    instance_count: int = 1
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"
    # ONNX Runtime: first available provider wins (CPU always last)
    execution_providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (one per core)

    def __post_init__(self) -> None:
        for name in ("max_text_bytes", "max_text_chars", "default_top_k", "max_batch_size", "max_batch_tokens",
                     "instance_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serving.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_microseconds < 0:
            raise ConfigError("serving.max_queue_delay_microseconds must be >= 0")
        bad = [size for size in self.preferred_batch_sizes if not 1 <= size <= self.max_batch_size]
        if bad:
            raise ConfigError(f"serving.preferred_batch_sizes {bad} must lie in 1..max_batch_size ({self.max_batch_size})")
        if not 0.0 <= self.min_batch_fill <= 1.0:
            raise ConfigError(f"serving.min_batch_fill must be in 0..1 (0 = never split for padding), got {self.min_batch_fill}")
        if self.intra_op_threads < 0:
            raise ConfigError("serving.intra_op_threads must be >= 0 (0 = ONNX Runtime default)")
        if not self.execution_providers:
            raise ConfigError("serving.execution_providers is empty; use e.g. ['CPUExecutionProvider']")


@dataclass(kw_only=True)
class ServingSettings(ServingOptions):
    """How one model is served: the user's options plus what its export fixed. Written to `1/serving.json`."""

    task: str  # a name in bertforge.tasks.TASKS
    max_length: int = contract.DEFAULT_MAX_LENGTH  # tokens incl. [CLS]/[SEP]; the model's max positions
    max_top_k: int = contract.MAX_TOP_K  # fill_mask: k of the top-k inside the ONNX graph
    # embed (the graph pools; recorded here so clients and docs can say what they get). Read from the model's
    # own definition where it has one (a sentence-transformers folder), else bertforge's defaults
    pooling: str = "mean"  # POOLING_MODES joined by "+", in the model's concatenation order (e.g. "cls", "mean+max")
    normalize: bool = False
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> text put before the input
    default_prompt_name: str | None = None  # applied when a request names none
    family: str = "bert"  # the model's model_type (bert, roberta, xlm-roberta, distilbert, mpnet, ...)
    embedding_dim: int = 0  # width of EMBEDDING; 0 = not recorded (exports before it was)
    labels: tuple[str, ...] = ()  # rerank/classify: the head's id2label, in logit order
    name: str = ""  # the model's name in the repository (`bertforge export --name`); "" = the task's name
    precision: str = "fp32"

    @classmethod
    def for_export(cls, options: ServingOptions, **fixed: Any) -> ServingSettings:
        """The user's options with what the export fixed (task, max_length, max_top_k, ...)."""
        values = {**dataclasses.asdict(options), **fixed}
        values["default_top_k"] = min(options.default_top_k, fixed.get("max_top_k", contract.MAX_TOP_K))
        return cls(**values)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in tasks.TASKS:
            raise ConfigError(f"serving task {self.task!r} is not one of {sorted(tasks.TASKS)}")
        if self.max_length < 3:
            raise ConfigError("serving.max_length must leave room for [CLS] text [SEP] (>= 3)")
        if self.max_top_k < 1:
            raise ConfigError(f"serving.max_top_k must be >= 1, got {self.max_top_k}")
        if self.default_top_k > self.max_top_k:
            raise ConfigError(f"serving.default_top_k ({self.default_top_k}) exceeds max_top_k ({self.max_top_k})")
        unknown = [mode for mode in self.pooling.split("+") if mode not in POOLING_MODES]
        if unknown or not self.pooling:
            raise ConfigError(f"serving.pooling {self.pooling!r}: modes are {', '.join(POOLING_MODES)}, joined by '+'")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ConfigError(f"serving.default_prompt_name {self.default_prompt_name!r} is not one of the prompts "
                              f"{sorted(self.prompts)}")
        if self.name and (not MODEL_NAME.fullmatch(self.name)
                          or (self.name in tasks.TASKS and self.name != self.task)):
            raise ConfigError(f"model name {self.name!r}: use letters, digits, '_', '-' and '.' (at most 64, starting "
                              "with a letter or digit), and not another task's name")
        if self.max_batch_tokens < self.max_length:
            raise ConfigError(f"serving.max_batch_tokens ({self.max_batch_tokens}) must fit one text of max_length "
                              f"({self.max_length}); raise it")

    @property
    def model_name(self) -> str:
        return self.name or self.task


class ServedModelDir:
    """One served model folder, `<repo>/<model>/`: the only place that knows its layout.

    `config.pbtxt` (Triton), `1/model.py` (the backend entry point), `1/serving.json` (settings + export
    info), `1/model.onnx` and `1/tokenizer/` (the exporter's). Export writes it, serve and bench read
    and copy it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def in_repo(cls, repo: str | Path, model: str) -> ServedModelDir:
        """`<repo>/<model>`; a task's name is its default model's name."""
        return cls(Path(repo) / model)

    def __repr__(self) -> str:
        return f"ServedModelDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServedModelDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # --- layout --------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def version_dir(self) -> Path:
        return self.path / VERSION

    @property
    def onnx_file(self) -> Path:
        return self.version_dir / ONNX_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.version_dir / TOKENIZER_DIR

    @property
    def serving_file(self) -> Path:
        return self.version_dir / SERVING_FILE

    @property
    def backend_file(self) -> Path:
        return self.version_dir / BACKEND_FILE

    def is_complete(self) -> bool:
        """Everything Triton and the backend need is in place (the committed skeleton lacks the ONNX)."""
        return self.config_file.is_file() and self.onnx_file.is_file() and self.serving_file.is_file()

    def missing_files(self) -> list[str]:
        """What `is_complete` lacks, as `<model>/<relative path>` (for error messages)."""
        return [f"{self.name}/{path.relative_to(self.path)}"
                for path in (self.config_file, self.onnx_file, self.serving_file) if not path.is_file()]

    # --- read ----------------------------------------------------------------------------------------
    def settings(self) -> ServingSettings:
        """The settings in `1/serving.json` (the backend calls this at model load)."""
        return from_dict(ServingSettings, self._document().get("settings", {}), where=str(self.serving_file))

    def info(self) -> dict[str, Any]:
        """What the export recorded beside the settings (source, precision, recipe, parity)."""
        return self._document().get("info", {})

    def _document(self) -> dict[str, Any]:
        if not self.serving_file.is_file():
            raise ConfigError(f"{self.serving_file} is missing; re-run `bertforge export` to write the model repository")
        return json.loads(self.serving_file.read_text())

    # --- write ---------------------------------------------------------------------------------------
    def write(self, settings: ServingSettings, info: dict[str, Any] | None = None) -> None:
        """Write `config.pbtxt`, `1/model.py` and `1/serving.json` (the ONNX and tokenizer are the exporter's)."""
        if self.name != settings.model_name:
            raise ConfigError(f"Triton needs the folder name to equal the model name: expected "
                              f"{self.path.parent / settings.model_name}, got {self.path}")
        self.version_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.config_file, render_config_pbtxt(settings))
        write_text_atomically(self.backend_file, render_backend(settings.task))
        write_json_atomically(self.serving_file, {"settings": to_dict(settings), "info": info or {}})

    def update(self, **changes: Any) -> ServingSettings:
        """Change some settings in place (config.pbtxt + serving.json), keeping the export info."""
        settings = dataclasses.replace(self.settings(), **changes)
        self.write(settings, self.info())
        return settings

    def copy_to(self, repo: str | Path, **changes: Any) -> ServedModelDir:
        """This model as `<repo>/<model>` with `changes` applied to its settings.

        The ONNX graph and tokenizer are hard-linked (copied across filesystems), so a copy is cheap;
        config.pbtxt and serving.json are rendered anew, so the original is never modified.
        """
        settings = dataclasses.replace(self.settings(), **changes)  # validates before anything is written
        target = ServedModelDir(Path(repo) / self.name)
        if target.path.exists():
            raise ConfigError(f"{target.path} already exists; copy into an empty repository")
        shutil.copytree(self.path, target.path, symlinks=True, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(CONFIG_FILE, SERVING_FILE, BACKEND_FILE))
        target.write(settings, self.info())
        return target


def served_models(repo: str | Path) -> list[ServedModelDir]:
    """Every model folder of a repository (those with a config.pbtxt), sorted by name."""
    return [ServedModelDir(path.parent) for path in sorted(Path(repo).glob(f"*/{CONFIG_FILE}"))]


def copy_repository(repo: str | Path, target: str | Path, **changes: Any) -> list[ServedModelDir]:
    """Every complete model of `repo` copied into `target` with `changes` (serve-time and bench settings)."""
    return [model.copy_to(target, **changes) for model in served_models(repo) if model.is_complete()]


def load_serving_settings(version_dir: Path) -> ServingSettings:
    """The settings of the model whose version folder is `version_dir` (what the backend is handed)."""
    return ServedModelDir(Path(version_dir).parent).settings()


def load_served_tokenizer(tokenizer_file: Path, max_length: int):
    """The fast (Rust) tokenizer exactly as the server runs it: no padding (a batch is padded to its longest
    text; HF folders such as sentence-transformers' ship tokenizer.json with fixed padding to 128), truncation
    at `max_length`. Anything that counts served tokens (bench) must use this, not a bare Tokenizer.from_file."""
    from tokenizers import Tokenizer

    if not Path(tokenizer_file).is_file():
        raise FileNotFoundError(f"{tokenizer_file} is missing; the exporter must copy the HF tokenizer folder")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def special_tokens(tokenizer_dir: Path) -> dict[str, str]:
    """pad_token and mask_token as the exported tokenizer names them (tokenizer_config.json, else
    special_tokens_map.json); BERT's [PAD]/[MASK] for tokenizers saved without either file."""
    found = {"pad_token": contract.PAD_TOKEN, "mask_token": contract.MASK_TOKEN}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the later file wins
        path = tokenizer_dir / name
        if path.is_file():
            values = json.loads(path.read_text())
            for key in found:
                value = values.get(key)
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str) and value:
                    found[key] = value
    return found


def _link_or_copy(source: str, destination: str) -> str:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
    return destination


BACKEND_TEMPLATE = '''"""Triton python-backend entry point, written by `bertforge.served_model.ServedModelDir.write`.

Do not edit: the logic lives in the installed `bertforge` package (`{path}`), which the
python backend stub imports from the environment that launched `tritonserver`.
"""

import triton_python_backend_utils as pb_utils

from {module} import {cls}


class TritonPythonModel:
    def initialize(self, args):
        self.model = {cls}.from_triton_args(args, pb_utils)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.close()
'''


def render_backend(task: str) -> str:
    """The `1/model.py` of a task's folder: the one backend class, which runs the task its serving.json names."""
    tasks.task(task)  # a known task, or a clear error
    module, cls = BACKEND.split(":")
    return BACKEND_TEMPLATE.format(path=module.replace(".", "/") + ".py", module=module, cls=cls)


def render_config_pbtxt(settings: ServingSettings) -> str:
    """The Triton model configuration for `settings`, as protobuf text."""
    spec = tasks.task(settings.task)
    lines = [
        "# Generated by bertforge.served_model.ServedModelDir.write from bertforge/tasks.py and ServingSettings.",
        "# Edit the settings (bertforge export), not this file. Tensors are documented in docs/serve.md.",
        f'name: "{settings.model_name}"',
        'backend: "python"',
        f"max_batch_size: {settings.max_batch_size}",
        "input [",
    ]
    for index, tensor in enumerate(spec.inputs):
        lines += ["  {", f'    name: "{tensor.name}"', "    data_type: TYPE_STRING", "    dims: [ 1 ]"]
        lines += ["    optional: true"] if tensor.optional else []
        lines.append("  }," if index < len(spec.inputs) - 1 else "  }")
    lines += ["]", "output ["]
    for index, output in enumerate(spec.outputs):
        closing = "  }," if index < len(spec.outputs) - 1 else "  }"
        lines += ["  {", f'    name: "{output.name}"', f"    data_type: {output.data_type}", f"    dims: [ {output.dims} ]",
                  closing]
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


def option_fields() -> list[str]:
    """Names a user may set as `serving.*` (the exporter forwards these keyword options)."""
    return [field.name for field in dataclasses.fields(ServingOptions)]


def write_default_repository(repo: Path) -> None:
    """Regenerate the committed `config.pbtxt` and `1/model.py` of the default models (serving.json untouched)."""
    for task in tasks.DEFAULT_TASKS:
        settings = ServingSettings(task=task)
        model = ServedModelDir.in_repo(repo, task)
        model.version_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(model.config_file, render_config_pbtxt(settings))
        write_text_atomically(model.backend_file, render_backend(task))


if __name__ == "__main__":
    import sys

    write_default_repository(Path(sys.argv[1] if len(sys.argv) > 1 else "model_repository"))
