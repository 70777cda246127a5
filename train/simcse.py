"""The embedding stage: unsupervised SimCSE (Gao et al. 2021) turns a trained masked-LM into a sentence embedder.

Each sentence of the training corpus goes through the encoder twice; the two dropout masks make two
views of it, the positive pair, and the other sentences of the batch are the negatives (InfoNCE over
cosine similarities / temperature). No labels, so it runs on the user's own corpus. The embedder is a
sentence-transformers model (the masked-LM's encoder + pooling) saved as a sentence-transformers folder in
the run's model/; checkpoints and resume work as in the masked-LM loop (train/checkpoint.py). One process.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertforge.config import ConfigError
from bertforge.files import remove_leftover_staging, staged_folder
from bertforge.run_dir import RunDir
from train.budget import BudgetClock
from train.checkpoint import latest_complete_checkpoint, load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.logger import MetricsLogger
from train.optim import build_optimizer, lr_at
from train.prepare import prepare_run_dir, resolve_source
from train.runtime import TrainingRuntime


def train_simcse(config: TrainConfig, run: RunDir, resume: bool, runtime: TrainingRuntime) -> Path:
    if runtime.world_size > 1:
        raise ConfigError("the SimCSE stage runs in one process; start it with `bertforge train`, not torchrun")
    # Run folder, training sentences, the embedder and its optimizer
    prepare_run_dir(config, run, resume, runtime)  # what must match to resume: RESUME_INVARIANTS['simcse']
    sentences = SentenceBatches(corpus_sentences(config), config.train.batch_size, config.train.seed)
    torch.manual_seed(config.train.seed)
    embedder = build_embedder(config, runtime.device)
    optimizer = build_optimizer(embedder, config.optim, runtime.device)

    # Resume from the newest complete checkpoint
    checkpoints, max_steps = run.checkpoints_dir, config.train.max_steps
    state = {"step": 0, "elapsed_s": 0.0}
    resume_from = latest_complete_checkpoint(checkpoints) if resume else None
    if resume_from is not None:
        state = load_checkpoint(resume_from, embedder, optimizer, None)
        runtime.print(f"[simcse] resumed from {resume_from} (step {state['step']})")
    runtime.print(f"[simcse] {len(sentences.texts):,} training sentences; {runtime.device}, from {config.model.init_from}")

    logger = MetricsLogger(run, config.log.tensorboard)
    try:
        clock = BudgetClock(config.train.max_minutes * 60, state["elapsed_s"])
        step, out_of_time = state["step"], False
        embedder.train()
        while step < max_steps and not out_of_time:
            # This step's LR; both views of the batch in one forward pass (independent dropout per row)
            budget_used = clock.used_by_next_step()
            lr = lr_at(step, max_steps, config.optim, budget_used)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with runtime.autocast():
                loss, accuracy = simcse_loss(embedder, sentences.batch(step), config.simcse.temperature, runtime.device)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(embedder.parameters(), config.optim.grad_clip or math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            clock.step_done()
            step, out_of_time = step + 1, budget_used >= 1.0
            state["step"] = step

            # Log, checkpoint
            if step % config.log.every == 0 or step == max_steps or out_of_time:
                logger.log({"step": step, "simcse_loss": loss.item(), "simcse_accuracy": accuracy, "lr": lr,
                            "grad_norm": grad_norm.item(), "elapsed_s": clock.elapsed()})
            if step % config.checkpoint.every == 0 or step == max_steps or out_of_time:
                state["elapsed_s"] = clock.elapsed()
                save_checkpoint(checkpoints, step, embedder, optimizer, None, state, config, config.checkpoint.keep)

        # The sentence-transformers folder, then the embedding probe on text it never saw
        save_embedder(embedder, run.model_dir)
        if config.log.probe:
            from train.probe import run_probes, sentence_transformer_encoder

            logger.log({"step": step, **run_probes(sentence_transformer_encoder(embedder), config)})
        runtime.print(f"[simcse] done: {step} steps; sentence-transformers model saved to {run.model_dir}")
    finally:
        logger.close()
    return run.path


def build_embedder(config: TrainConfig, device: torch.device):
    """SentenceTransformer(masked-LM encoder + pooling); the run's dropout is SimCSE's augmentation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers.utils import logging

    dropout = {"hidden_dropout_prob": config.model.hidden_dropout_prob,
               "attention_probs_dropout_prob": config.model.attention_probs_dropout_prob}
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "cls.* unused, pooler newly initialised": expected for an MLM folder
    try:
        transformer = Transformer(config.model.init_from, max_seq_length=config.data.seq_len, config_kwargs=dropout)
    finally:
        logging.set_verbosity(verbosity)
    pooling = Pooling(transformer.get_embedding_dimension(), config.simcse.pooling)
    return SentenceTransformer(modules=[transformer, pooling], device=str(device))


def simcse_loss(embedder, texts: list[str], temperature: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """InfoNCE of each sentence's first view against all second views; (loss, in-batch top-1 accuracy)."""
    features = embedder.preprocess(texts + texts)
    features = {key: value.to(device) for key, value in features.items() if isinstance(value, torch.Tensor)}
    embeddings = nn.functional.normalize(embedder(features)["sentence_embedding"].float(), dim=-1)  # (2B, H)
    first, second = embeddings.chunk(2)
    logits = first @ second.T / temperature  # (B, B): the diagonal holds the positive pairs
    targets = torch.arange(len(texts), device=device)
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return nn.functional.cross_entropy(logits, targets), accuracy


class SentenceBatches:
    """Batch i of a fixed shuffled order per epoch: a resumed run sees exactly the batches it would have."""

    def __init__(self, texts: list[str], batch_size: int, seed: int):
        if len(texts) < batch_size:
            raise ConfigError(f"the corpus has {len(texts)} training sentences, fewer than train.batch_size="
                              f"{batch_size}; use a larger corpus or a smaller batch")
        self.texts, self.batch_size, self.seed = texts, batch_size, seed
        self._orders: dict[int, np.ndarray] = {}

    def batch(self, step: int) -> list[str]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [self.texts[self._order(p // len(self.texts))[p % len(self.texts)]] for p in positions]

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.texts))}
        return self._orders[epoch]


def corpus_sentences(config: TrainConfig) -> list[str]:
    """The training corpus split into sentences of at least simcse.min_words words, deduplicated, in order."""
    from train.corpus import load_text_dataset, split_sentences

    documents = load_text_dataset(resolve_source(config.data.train, "train"), config.data.text_column,
                                  config.data.hf_split)["text"]
    seen: dict[str, None] = {}
    for document in documents:
        for sentence in split_sentences(document):
            if len(sentence.split()) >= config.simcse.min_words:
                seen.setdefault(sentence, None)
        if len(seen) >= config.simcse.max_sentences:
            break
    return list(seen)[: config.simcse.max_sentences]


def save_embedder(embedder, folder: Path) -> None:
    """The sentence-transformers folder (modules.json, 1_Pooling/, the transformer files at the root), swapped in whole."""
    with staged_folder(folder) as staged:
        embedder.save(str(staged), create_model_card=False)
    remove_leftover_staging(folder)
