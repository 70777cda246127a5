"""What the loop needs before its first step: the run folder, the tokenizer and the packed data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertforge.config import ConfigError, save_config
from bertforge.paths import cache_dir
from bertforge.run_dir import RunDir
from train.config import DataConfig, TrainConfig
from train.data import BlockBatches, MaskedBlockDataset, build_blocks, masked_eval_batches, masking_spec
from train.runtime import TrainingRuntime


def prepare_run_dir(config: TrainConfig, run: RunDir, resume: bool, runtime: TrainingRuntime) -> None:
    """Create the run folder (rank 0); refuse to clobber a run or to resume with a different model."""
    if runtime.rank == 0:
        if run.holds_training():
            if not resume:
                raise ConfigError(
                    f"{run} already holds a run; pass --resume to continue it or --run-dir for a new one"
                )
            verdict = run.resumability(config)
            if not verdict.resumable:
                raise ConfigError(f"cannot resume {run} with a different setup: {'; '.join(verdict.differences)}")
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(config, run.config_file)
    runtime.barrier()


def prepare_tokenizer(data: DataConfig, run: RunDir | Path, runtime: TrainingRuntime):
    """The run's tokenizer/: reused on resume, copied from data.tokenizer, or trained on the corpus."""
    from train.corpus import load_text_dataset
    from train.tokenizer import load_tokenizer, train_wordpiece_tokenizer

    folder = RunDir(run).tokenizer_dir
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


def prepare_data(config: TrainConfig, tokenizer, runtime: TrainingRuntime) -> TrainingData:
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
    eval_spec = masking_spec(tokenizer, data.eval_mask_prob, data.whole_word_mask)
    runtime.print(f"[train] {len(results['train']):,} training blocks, {len(eval_blocks):,} held-out blocks "
                  f"of {data.seq_len} tokens (held out masked at {data.eval_mask_prob:.0%})")
    return TrainingData(results["train"], eval_blocks, spec, config, eval_spec)


@dataclass
class TrainingData:
    blocks: np.ndarray
    eval_blocks: np.ndarray
    spec: object  # training masks (data.mask_prob)
    config: TrainConfig
    eval_spec: object  # held-out masks (data.eval_mask_prob): the same questions for every recipe

    def loader(self, start: int, end: int, runtime: TrainingRuntime):
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
        return masked_eval_batches(self.eval_blocks, self.eval_spec, batch_size=self.config.train.batch_size, seed=0)


def resolve_source(source: str, split: str) -> str:
    """'demo' -> the built-in demo corpus file for this split (built on first use)."""
    if source != "demo":
        return source
    from train.corpus import build_demo_corpus

    corpus = build_demo_corpus()
    return str(corpus.train if split == "train" else corpus.eval)
