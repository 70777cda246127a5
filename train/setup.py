"""What the loop needs before its first step: device/DDP runtime, run folder, tokenizer, data."""

from __future__ import annotations

import os
import tomllib
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from bertforge.config import ConfigError, save_config, to_dict
from bertforge.paths import cache_dir
from train.config import DataConfig, LoopConfig, TrainConfig
from train.data import BlockBatches, MaskedBlockDataset, build_blocks, masked_eval_batches, masking_spec
from train.precision import choose_precision


@dataclass
class Runtime:
    """Device, precision and the process group (torchrun's environment switches DDP on)."""

    device: torch.device
    precision: str
    rank: int = 0
    world_size: int = 1
    distributed: bool = False
    precision_reason: str = ""  # why this precision (train/precision.py), logged at start

    def autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return nullcontext()

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        if self.distributed:
            torch.distributed.all_reduce(tensor)

    def any_rank(self, flag: bool) -> bool:
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(value)
        return bool(value.item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def print(self, message: str) -> None:
        if self.rank == 0:
            from tqdm.auto import tqdm

            tqdm.write(message)

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def start_runtime(loop: LoopConfig) -> Runtime:
    """Pick the device and precision; join the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    # Device
    if loop.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    use_cuda = loop.device == "cuda" or (loop.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if loop.precision == "fp16" and not use_cuda:
        raise ConfigError("train.precision = 'fp16' needs CUDA (GradScaler); use 'fp32' or 'bf16' on CPU")
    # Process group: nccl on CUDA, gloo on CPU
    distributed = world_size > 1
    if distributed:
        torch.distributed.init_process_group(
            "nccl" if use_cuda else "gloo", rank=rank, world_size=world_size, timeout=timedelta(minutes=30)
        )
    # Precision: bf16 autocast where it is supported (CUDA) or measured faster (CPU), else fp32
    precision, reason = _agreed_precision(loop.precision, use_cuda, rank, distributed, device)
    return Runtime(device=device, precision=precision, rank=rank, world_size=world_size, distributed=distributed,
                   precision_reason=reason)


def _agreed_precision(requested: str, use_cuda: bool, rank: int, distributed: bool, device) -> tuple[str, str]:
    """choose_precision, measured once on rank 0 when it is a CPU measurement: all ranks must agree."""
    if not (distributed and requested == "auto" and not use_cuda):
        return choose_precision(requested, use_cuda)
    precision, reason = choose_precision(requested, use_cuda) if rank == 0 else ("", "")
    flag = torch.tensor([1.0 if precision == "bf16" else 0.0], device=device)
    torch.distributed.broadcast(flag, src=0)
    if rank == 0:
        return precision, reason
    return ("bf16" if flag.item() > 0 else "fp32"), "auto: rank 0's measurement"


def prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool, runtime: Runtime, invariants) -> None:
    """Create the run folder (rank 0); refuse to clobber a run or to resume with a different model."""
    if runtime.rank == 0:
        saved_file = run_dir / "config.toml"
        trained = (run_dir / "model").exists() or any((run_dir / "checkpoints").glob("step-*"))
        if saved_file.is_file() and trained:
            if not resume:
                raise ConfigError(
                    f"{run_dir} already holds a run; pass --resume to continue it or --run-dir for a new one"
                )
            differing = config_differences(tomllib.loads(saved_file.read_text()), config, invariants)
            if differing:
                raise ConfigError(f"cannot resume {run_dir} with a different setup: {'; '.join(differing)}")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, saved_file)
    runtime.barrier()


def prepare_tokenizer(data: DataConfig, run_dir: Path, runtime: Runtime):
    """run_dir/tokenizer: reused on resume, copied from data.tokenizer, or trained on the corpus."""
    from train.corpus import load_text_dataset
    from train.tokenizer import load_tokenizer, train_wordpiece_tokenizer

    folder = run_dir / "tokenizer"
    if runtime.rank == 0 and not (folder / "tokenizer.json").is_file():
        if data.tokenizer:
            source = load_tokenizer(data.tokenizer)
            source.save_pretrained(folder)
        else:
            runtime.print(f"[train] training a WordPiece tokenizer (vocab {data.vocab_size}) on the corpus")
            texts = load_text_dataset(resolve_source(data.train, "train"), data.text_column, data.hf_split)["text"]
            train_wordpiece_tokenizer(texts, folder, vocab_size=data.vocab_size, lowercase=data.lowercase)
    runtime.barrier()
    return load_tokenizer(folder)


@dataclass
class TrainingData:
    blocks: np.ndarray
    eval_blocks: np.ndarray
    spec: object
    config: TrainConfig

    def loader(self, start: int, end: int, runtime: Runtime):
        """Masked micro-batches start..end-1 of this rank (workers + pinned memory when asked)."""
        loop, data = self.config.train, self.config.data
        batches = BlockBatches(len(self.blocks), loop.batch_size, runtime.world_size, runtime.rank, loop.seed)
        dataset = MaskedBlockDataset(self.blocks, batches, self.spec, loop.seed)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            sampler=range(start, end),
            num_workers=data.num_workers,
            pin_memory=runtime.device.type == "cuda",
            prefetch_factor=4 if data.num_workers else None,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(loop.seed),  # keeps the global RNG (dropout) untouched
        )

    def eval_batches(self):
        return masked_eval_batches(self.eval_blocks, self.spec, batch_size=self.config.train.batch_size, seed=0)


def prepare_data(config: TrainConfig, tokenizer, runtime: Runtime) -> TrainingData:
    """Tokenize + pack train and held-out corpora once (rank 0 first; other ranks hit the cache)."""
    from train.corpus import load_text_dataset

    data = config.data
    folder = cache_dir() / "blocks"
    results = {}
    for turn in (0, 1):  # rank 0 builds in turn 0, the others read the cache in turn 1
        if (runtime.rank == 0) == (turn == 0):
            for split in ("train", "eval"):
                source = resolve_source(getattr(data, split), split)
                dataset = load_text_dataset(source, data.text_column, data.hf_split)
                results[split] = build_blocks(dataset, tokenizer, data.seq_len, folder, data.num_proc)
        runtime.barrier()
    eval_blocks = results["eval"][: data.max_eval_blocks]
    spec = masking_spec(tokenizer, data.mask_prob, data.whole_word_mask)
    runtime.print(f"[train] {len(results['train']):,} training blocks, {len(eval_blocks):,} held-out blocks "
                  f"of {data.seq_len} tokens")
    return TrainingData(results["train"], eval_blocks, spec, config)


def resolve_source(source: str, split: str) -> str:
    """'demo' -> the built-in demo corpus file for this split (built on first use)."""
    if source != "demo":
        return source
    from train.corpus import build_demo_corpus

    corpus = build_demo_corpus()
    return str(corpus.train if split == "train" else corpus.eval)


def config_differences(saved: dict, current: TrainConfig, keys) -> list[str]:
    """Dotted keys whose values differ between a saved config dict and the current config."""
    now = to_dict(current)
    differing = []
    for key in keys:
        old, new = saved, now
        for part in key.split("."):
            old, new = (old or {}).get(part), (new or {}).get(part)
        if old != new:
            differing.append(f"{key}: {old!r} -> {new!r}")
    return differing


__all__ = ["Runtime", "start_runtime", "prepare_run_dir", "prepare_tokenizer", "prepare_data"]
