"""`ExportConfig`: everything `bertforge export` needs, loadable from TOML with `--set key=value` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bertforge import contract
from bertforge.config import ConfigError, load_config
from bertforge.pooling import TIE_MARGIN
from bertforge.served_model import ServingOptions
from bertforge.tasks import DEFAULT_TASKS
from bertforge.tasks import TASKS as REGISTRY
from export.precision import AUTO, DEFAULT_PRECISION, PRECISIONS, Precision

__all__ = ["AUTO", "ALL_TASKS", "DEFAULT_PRECISION", "PRECISIONS", "TASKS", "ExportConfig", "ParityGates", "Precision",
           "load_export_config"]
TASKS = DEFAULT_TASKS  # the default: what the folder exports by its kind (fill_mask and embed for an MLM folder)
ALL_TASKS = tuple(REGISTRY)  # bertforge/tasks.py


@dataclass(kw_only=True)
class ParityGates:
    """Thresholds a variant must meet against PyTorch fp32, else it is not written (docs/export.md, "The gate").

    fp32 is judged on every input (random ids and text); lossy variants on real text only, with at least
    `min_masks` masks. The lossy thresholds come from measurements on several trained models and a public
    checkpoint (docs/export.md): passing variants sit well inside them, broken recipes far outside."""

    fp32_max_abs_diff: float = 1e-4  # probabilities and embeddings; top-1 must also be identical
    min_masks: int = 2000  # masks of real text per fill-mask verdict: one mask moves agreement by <= 0.0005
    tie_margin: float = TIE_MARGIN  # a different top-1 counts only if PyTorch rates it >10% (relative) below its own
    int8_tie_aware: float = 0.98  # masks where the variant's top-1 is PyTorch's or a near-tie (passing: >=0.997)
    int8_top5: float = 0.98  # masks where PyTorch's top-1 is in the variant's top 5 (passing: 1.000)
    int8_total_variation: float = 0.03  # mean total variation distance (passing: <=0.012; broken: >=0.06)
    int8_cosine: float = 0.99  # lowest embedding cosine over the gate's texts (passing demo models: >=0.999)
    int8_mean_cosine: float = 0.995
    fp16_tie_aware: float = 0.99
    fp16_top5: float = 0.99
    fp16_total_variation: float = 0.01
    fp16_cosine: float = 0.99
    fp16_mean_cosine: float = 0.995
    # rerank / classify, lossy variants (export/cross_encoder.py), on 8 queries x 16 documents of the gate texts
    int8_rerank_spearman: float = 0.98  # mean Spearman over queries; no query below this - 0.05
    int8_rerank_top1: float = 0.875  # queries whose best document is PyTorch's (7 of 8)
    int8_label_agreement: float = 0.98  # classify: argmax label equal to PyTorch's
    # embed_sparse, lossy variants (export/sparse.py): mean over texts of the top-32 ids both vectors share, beside
    # the cosine gates above (the fp32 threshold, not a measured one: no trained sparse encoder was quantized yet)
    int8_sparse_top_overlap: float = 0.95
    fp16_sparse_top_overlap: float = 0.95

    def __post_init__(self) -> None:
        for name in ("tie_margin", "int8_tie_aware", "int8_top5", "int8_total_variation", "int8_cosine",
                     "int8_mean_cosine", "fp16_tie_aware", "fp16_top5", "fp16_total_variation", "fp16_cosine",
                     "fp16_mean_cosine", "int8_rerank_spearman", "int8_rerank_top1", "int8_label_agreement",
                     "int8_sparse_top_overlap", "fp16_sparse_top_overlap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"gates.{name} must lie in 0..1, got {getattr(self, name)}")
        if self.fp32_max_abs_diff <= 0:
            raise ConfigError("gates.fp32_max_abs_diff must be > 0")
        if self.min_masks < 1:
            raise ConfigError("gates.min_masks must be >= 1")


@dataclass(kw_only=True)
class ExportConfig:
    """One export: an encoder folder -> verified ONNX variants (+ a Triton repository)."""

    model: Path | None = None  # HF or sentence-transformers folder (config.json, weights, tokenizer[, modules.json])
    repo: Path | None = Path("model_repository")  # Triton model repository to write (None with `output`)
    output: Path | None = None  # plain mode: only ONNX variants + report, no Triton files
    # "auto" or one of PRECISIONS; `output` mode also takes a comma list or "all" (export/precision.py): kept as
    # written, parsed once into `requested_precision`
    precision: str = DEFAULT_PRECISION
    tasks: tuple[str, ...] = TASKS  # the default means "what the folder is exported as" (export/targets.py)
    name: str | None = None  # one task other than fill_mask/embed: the model's name in the repository (default: the task's)
    optimize: bool = True  # ONNX Runtime transformer fusions (Attention, SkipLayerNorm, Gelu)
    opset: int = 18
    # embed graph: None = as the folder defines it (sentence-transformers: 1_Pooling, Normalize), else mean / no
    # normalisation; a value that contradicts a sentence-transformers folder is honoured with a warning
    pooling: str | None = None  # sentence-transformers modes joined by "+": cls, mean, max, mean_sqrt_len_tokens, ...
    normalize: bool | None = None
    # fill_mask graph
    max_top_k: int = contract.MAX_TOP_K
    max_length: int | None = None  # default: min(max_position_embeddings, tokenizer.model_max_length)
    # data for int8-static calibration and the parity gate (default: the demo corpus cache, else built-in text)
    calibration_file: Path | None = None  # .txt (one text a line) or .jsonl ({"text": ...})
    calibration_samples: int = 64
    parity_file: Path | None = None
    parity_samples: int = 400  # texts read at most; the gate cuts them into windows until it has gates.min_masks
    # int8 recipe search: stop after this many gated candidates. A count picks the same recipe on a machine of any
    # speed (a budget in seconds served MiniLM fp32 on a busy Zen 1 where int8 passes); 40 is more than the whole
    # search of a 24-layer encoder takes (8 fixed recipes, then at most 12 per sensitivity base: export.int8_search)
    search_candidates: int = 40
    search_seconds: float = 0.0  # ... or after this long, if > 0 (0: no time limit)
    # int8 that answers the same on every CPU: only 7-bit or u8 weights (exact on every int8 kernel,
    # bertforge/cpu.py), for exporting on one CPU (say a VNNI build machine) and serving on others (AVX2)
    int8_portable: bool = False
    seed: int = 0
    gates: ParityGates = field(default_factory=ParityGates)
    # how the exported models are served (max_batch_size, instance_count, ...): checked when the config loads
    serving: ServingOptions = field(default_factory=ServingOptions)
    progress: bool = True

    def __post_init__(self) -> None:
        self.precision = str(self.precision)  # a Precision given as a value: its text (TOML keeps the spelling)
        self._requested_precision = Precision.parse(self.precision)
        if self.output is None and self.repo is None:
            raise ConfigError("give a repository (--repo DIR) or a plain output folder (--output DIR)")
        if self.output is None and self.requested_precision.single is None:
            raise ConfigError(f"a Triton repository serves one precision; got {list(self.precisions)} "
                              "(use --output DIR to write several variants)")
        unknown = sorted(set(self.tasks) - set(ALL_TASKS))
        if unknown or not self.tasks:
            raise ConfigError(f"tasks {unknown or '[]'} invalid; choose from {list(ALL_TASKS)}")
        if self.opset < 17:
            raise ConfigError(f"opset must be >= 17 (LayerNormalization), got {self.opset}")
        if not 1 <= self.max_top_k:
            raise ConfigError(f"max_top_k must be >= 1, got {self.max_top_k}")
        if self.max_length is not None and self.max_length < 3:
            raise ConfigError("max_length must leave room for [CLS] text [SEP] (>= 3)")
        if self.calibration_samples < 1 or self.parity_samples < 1:
            raise ConfigError("calibration_samples and parity_samples must be >= 1")
        if self.search_seconds < 0:
            raise ConfigError(f"search_seconds must be >= 0 (the int8 recipe search's time budget; 0: none), got "
                              f"{self.search_seconds}")
        if self.search_candidates < 0:
            raise ConfigError(f"search_candidates must be >= 0 (0: no count limit), got {self.search_candidates}")
        if self.search_candidates == 0 and self.search_seconds == 0:
            raise ConfigError("the int8 search needs a bound: search_candidates > 0 or search_seconds > 0")

    @property
    def requested_precision(self) -> Precision:
        """`precision`, parsed (export/precision.py)."""
        return self._requested_precision

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions to build, in order (`all`: every one of PRECISIONS)."""
        return self._requested_precision.names


def load_export_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExportConfig:
    return load_config(ExportConfig, path, overrides)
