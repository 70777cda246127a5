"""`BenchConfig`: what `bertforge bench serve|tune` measures (TOML file + `--set section.key=value`).

Presets live next to this file (`bench/configs/quick.toml`, `full.toml`); every run writes the
resolved config into its result JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from bertforge.cli_options import preset_file
from bertforge.config import ConfigError
from bertforge.tasks import DEFAULT_TASKS, EMBED, FILL_MASK
from export.config import DEFAULT_PRECISION

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass(kw_only=True)
class TextsConfig:
    """Request texts cut from the held-out corpus (House of Commons speeches)."""

    source: str = "demo"  # "demo" = the demo corpus' held-out file; or a .jsonl ({"text": ...}) / .txt path
    length: Literal["mix", "fixed"] = "mix"  # mix: log-normal word counts in [min_words, max_words]
    min_words: int = 5
    median_words: int = 20
    max_words: int = 120
    fixed_words: int = 32  # every text has exactly this many words (length = "fixed")
    count: int = 512  # distinct texts, sent round-robin
    masks_per_text: int = 1  # fill_mask: words replaced by [MASK]
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.median_words <= self.max_words:
            raise ConfigError("texts: need 1 <= min_words <= median_words <= max_words, got "
                              f"{self.min_words}, {self.median_words}, {self.max_words}")
        for name in ("fixed_words", "count", "masks_per_text"):
            if getattr(self, name) < 1:
                raise ConfigError(f"texts.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(kw_only=True)
class LoadConfig:
    """The load generator: a closed-loop concurrency sweep, or an open loop at a fixed request rate."""

    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    request_rate: float = 0.0  # > 0: open loop, this many requests/s (one point), instead of the sweep
    max_requests: int = 3000  # per point (whichever bound comes first)
    max_seconds: float = 10.0  # per point
    warmup_seconds: float = 1.0  # per point, excluded from every figure
    timeout_s: float = 30.0  # per request; a timeout counts as an error
    top_k: int = 5

    def __post_init__(self) -> None:
        if not self.concurrency or any(users < 1 for users in self.concurrency):
            raise ConfigError(f"load.concurrency must be a non-empty list of integers >= 1, got {list(self.concurrency)}")
        if self.request_rate < 0:
            raise ConfigError("load.request_rate must be >= 0 (0 = closed-loop concurrency sweep)")
        if self.max_requests < 1 or self.max_seconds <= 0:
            raise ConfigError("load.max_requests must be >= 1 and load.max_seconds > 0")
        if self.warmup_seconds < 0 or self.timeout_s <= 0:
            raise ConfigError("load.warmup_seconds must be >= 0 and load.timeout_s > 0")


@dataclass(kw_only=True)
class BaselinesConfig:
    """Contenders measured in the same run on the same texts (each can be switched off)."""

    pipeline: bool = True  # transformers pipeline("fill-mask") / PyTorch mean pooling (needs --model)
    onnxruntime: bool = True  # the exported graph in this process, no Triton
    batching_off: bool = True  # the same repository served with dynamic batching off
    batch_size: int = 16  # the "batched" in-process variants
    # PyTorch intra-op threads for the pipeline baseline (0 = torch's default, one per core). 1 because on the
    # shared 2-core host torch's default made one forward 50x slower (660 ms vs 12 ms, docs/bench.md)
    torch_threads: int = 1
    max_requests: int = 400  # per in-process contender
    max_seconds: float = 6.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_requests < 1 or self.max_seconds <= 0 or self.torch_threads < 0:
            raise ConfigError("baselines: batch_size and max_requests must be >= 1, max_seconds > 0, torch_threads >= 0")


@dataclass(kw_only=True)
class TuneConfig:
    """`bertforge bench tune`: the grid tried on a repository copy, and the latency bound."""

    delays_us: tuple[int, ...] = (0, 500, 2000)
    preferred_batch_sizes: tuple[tuple[int, ...], ...] = ((), (4, 8), (8, 16))
    instance_counts: tuple[int, ...] = (1, 2)
    intra_op_threads: tuple[int, ...] = (0, 1)  # ONNX Runtime threads per instance; 0 = its default (one per core)
    # also vary these (empty = as exported): Triton's merge limit, and the length bucketing of each merged batch
    # (its best value depends on the model: docs/performance.md)
    max_batch_sizes: tuple[int, ...] = ()
    min_batch_fills: tuple[float, ...] = ()
    concurrency: int = 16
    p99_bound_ms: float = 300.0
    max_seconds: float = 4.0  # per setting
    max_requests: int = 2000

    def __post_init__(self) -> None:
        if not self.delays_us or any(delay < 0 for delay in self.delays_us):
            raise ConfigError("tune.delays_us must be a non-empty list of integers >= 0")
        if not self.preferred_batch_sizes:
            raise ConfigError("tune.preferred_batch_sizes must hold at least one entry ([] = no preference)")
        if not self.instance_counts or any(count < 1 for count in self.instance_counts):
            raise ConfigError("tune.instance_counts must be a non-empty list of integers >= 1")
        if not self.intra_op_threads or any(threads < 0 for threads in self.intra_op_threads):
            raise ConfigError("tune.intra_op_threads must be a non-empty list of integers >= 0 (0 = ORT default)")
        if any(size < 1 for size in self.max_batch_sizes) or any(not 0 <= fill <= 1 for fill in self.min_batch_fills):
            raise ConfigError("tune.max_batch_sizes must be integers >= 1 and tune.min_batch_fills numbers in 0..1, "
                              f"got {list(self.max_batch_sizes)} and {list(self.min_batch_fills)}")
        if self.concurrency < 1 or self.p99_bound_ms <= 0 or self.max_seconds <= 0 or self.max_requests < 1:
            raise ConfigError("tune: concurrency and max_requests >= 1, p99_bound_ms and max_seconds > 0")


API_TASKS = {"openai": EMBED, "tei": EMBED, "hf": FILL_MASK}


@dataclass(kw_only=True)
class BenchConfig:
    task: str = FILL_MASK  # one of bertforge.tasks.DEFAULT_TASKS
    precision: str = DEFAULT_PRECISION  # only when --model is exported on the fly (no --repo): the exporter's default
    rounds: int = 2  # alternating repetitions; figures = fastest round, goals = median of per-round ratios
    output: Path = Path("bench/results/serve.json")  # PNG plots are written next to it
    plots: bool = True
    texts: TextsConfig = field(default_factory=TextsConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    # also measure the HTTP API beside Triton (serve/api/), side by side with direct gRPC:
    # "openai" (/v1/embeddings) and "tei" (/embed) need the embed task, "hf" (/fill-mask) the fill_mask task
    api: Literal["", "openai", "tei", "hf"] = ""
    # also measure another embedding server in the same rounds, with the same load generator and texts (contender
    # "external"): its OpenAI-style embeddings URL, e.g. Infinity's http://127.0.0.1:7997/embeddings; the embed task
    compare_url: str = ""
    # also serve copies of the repository with changed serving settings (ServingSettings keys), each a contender
    # `triton_<name>` measured in the same rounds, alternating with the others: a lever measured side by side,
    # e.g. --set 'variants.two_single={instance_count=2, intra_op_threads=1}'
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from bertforge.served_model import ServingSettings

        settings = {item.name for item in fields(ServingSettings)}
        for name, changes in self.variants.items():
            unknown = sorted(set(changes) - settings)
            if not name.isidentifier() or not changes or unknown:
                raise ConfigError(f"variants.{name}: a variant needs a name of letters, digits and _ and at least one "
                                  f"serving setting; unknown {unknown}; valid: {sorted(settings)}")
        if self.task not in DEFAULT_TASKS:
            raise ConfigError(f"bench.task must be one of {', '.join(DEFAULT_TASKS)}, got {self.task!r}")
        if self.api and API_TASKS[self.api] != self.task:
            raise ConfigError(f"--api {self.api} serves {API_TASKS[self.api]}; add --task {API_TASKS[self.api]} "
                              f"(or pick --api {'hf' if self.task == FILL_MASK else 'openai or tei'})")
        if self.compare_url and (self.task != EMBED or not self.compare_url.startswith(("http://", "https://"))):
            raise ConfigError(f"compare_url must be an http(s):// embeddings URL and needs --task embed, got "
                              f"{self.compare_url!r} with task {self.task}")
        if self.rounds < 1:
            raise ConfigError(f"bench.rounds must be >= 1, got {self.rounds}")
        if self.output.suffix != ".json":
            raise ConfigError(f"bench.output must end in .json (plots go next to it), got {self.output}")


def preset_path(name: str) -> Path:
    """`bench/configs/<name>.toml`; raises with the list of presets when it does not exist."""
    return preset_file(CONFIG_DIR, name)
