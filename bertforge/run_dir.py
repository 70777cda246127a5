"""The training run folder (`RunDir`): its layout, its default place and its state, known here and nowhere else.

runs/<name>/
  config.toml           the resolved config, written first: its presence marks a started run
  tokenizer/            the run's tokenizer (copied, trained, or the --init-from folder's)
  checkpoints/step-N/   written by train/checkpoint.py (which owns what is inside one)
  metrics.jsonl         one JSON object per logged record; tensorboard/ mirrors it when installed
  loss_curve.png        drawn from metrics.jsonl at the end
  model/                the final model, written last: its presence (config.json) marks a finished run

On the ground floor because the trainer writes it and the pipeline, bench and export's users read it;
it imports no stage. Which config keys must match to resume a run is part of the run's contract,
so it lives here too (RESUME_INVARIANTS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from bertforge.config import read_toml, to_dict

RUNS = Path("runs")  # runs/<name> unless --run-dir says otherwise (relative to where the command runs)
CONFIG_FILE = "config.toml"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"  # checkpoints/step-<N>
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOSS_CURVE_FILE = "loss_curve.png"
MODEL_DIR = "model"
FINISHED_MARKER = "config.json"  # model/config.json: a masked-LM and a sentence-transformers folder both have it

# Config keys that must match to resume a run, per train.objective: what the weights and the data position
# depend on (step counts, logging, dropout and how the model was initialised may change)
RESUME_INVARIANTS: dict[str, tuple[str, ...]] = {
    "mlm": ("model.family", "model.hidden_size", "model.num_hidden_layers", "model.num_attention_heads", "model.intermediate_size",
            "model.max_position_embeddings", "data.seq_len", "data.mask_prob", "data.whole_word_mask",
            "train.batch_size", "train.grad_accum", "train.seed"),
    "simcse": ("model.init_from", "data.train", "data.seq_len", "train.batch_size", "train.seed",
               "simcse.pooling", "simcse.min_words", "simcse.max_sentences"),
}

# What a run saved before a key existed had: runs started before model families were BERT's
SAVED_DEFAULTS: dict[str, Any] = {"model.family": "bert"}


class RunStatus(StrEnum):
    FRESH = "fresh"  # no config.toml: nothing has run here
    STARTED = "started"  # config.toml but no final model: running, interrupted or killed
    FINISHED = "finished"  # model/ written (also when the wall-clock budget ended the run)


@dataclass(frozen=True)
class Resumability:
    """Whether a config may continue the run in a folder, and why (or why not)."""

    resumable: bool
    reason: str
    differences: tuple[str, ...] = ()  # "key: old -> new" for each resume invariant that differs


@dataclass(frozen=True)
class RunDir:
    """One training run folder, `runs/<name>/`: the trainer writes it, the pipeline and bench read it."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]):
        object.__setattr__(self, "path", Path(path))  # a str, a Path or another RunDir

    @classmethod
    def for_run(cls, name: str, run_dir: str | os.PathLike[str] | None = None) -> RunDir:
        """`run_dir` when given, else the default `runs/<name>`."""
        return cls(run_dir if run_dir is not None and str(run_dir) else RUNS / name)

    def __fspath__(self) -> str:  # RunDir(RunDir(...)), Path(RunDir(...)) and open() all work
        return str(self.path)

    def __str__(self) -> str:  # messages name the folder
        return str(self.path)

    # --- layout --------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def loss_curve_file(self) -> Path:
        return self.path / LOSS_CURVE_FILE

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    # --- state ---------------------------------------------------------------------------------------
    @property
    def status(self) -> RunStatus:
        if not self.config_file.is_file():
            return RunStatus.FRESH
        if (self.model_dir / FINISHED_MARKER).is_file():
            return RunStatus.FINISHED
        return RunStatus.STARTED

    def holds_training(self) -> bool:
        """A started run with something trained in it (a checkpoint or a model): starting over would clobber it."""
        if not self.config_file.is_file():
            return False
        return self.model_dir.exists() or any(self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*"))

    def saved_config(self) -> dict[str, Any]:
        return read_toml(self.config_file)

    def resumability(self, config: Any) -> Resumability:
        """May `config` (a TrainConfig) continue this run? Only if every resume invariant of its objective matches."""
        status = self.status
        if status is RunStatus.FRESH:
            return Resumability(False, f"{self.path} holds no run yet (no {CONFIG_FILE})")
        current = to_dict(config)
        keys = RESUME_INVARIANTS[current.get("train", {}).get("objective", "mlm")]
        differing = tuple(setup_differences(self.saved_config(), current, keys))
        if differing:
            return Resumability(False, f"{self.path} holds a {status} run of a different setup: {'; '.join(differing)}",
                                differing)
        return Resumability(True, f"{self.path} holds a {status} run of the same setup ({', '.join(keys)} match)")


def setup_differences(saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """'key: old -> new' for each dotted key whose value differs between two config dicts (a key the saved config
    predates counts as its SAVED_DEFAULTS value)."""
    differing = []
    for key in keys:
        old, new = saved, current
        for part in key.split("."):
            old, new = (old or {}).get(part), (new or {}).get(part)
        if old is None:
            old = SAVED_DEFAULTS.get(key)
        if old != new:
            differing.append(f"{key}: {old!r} -> {new!r}")
    return differing


def checkpoint_folder(checkpoints_dir: Path, step: int) -> Path:
    return Path(checkpoints_dir) / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_folders(checkpoints_dir: Path) -> list[Path]:
    """step-N folders sorted by N (staging and other folders excluded)."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
