"""One optimizer step of the masked-LM loop (`train_step`), the parts it drives and the state it advances.

The loop in train/trainer.py reads top-down; what one step does to the model, and what a run carries
from step to step (and from checkpoint to resume), is here.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from bertforge import contract
from train.config import TrainConfig
from train.model import MaskedLMObjective
from train.optim import build_optimizer
from train.runtime import TrainingRuntime


@dataclass
class TrainState:
    """Where a run is: saved in every checkpoint (trainer_state.pt) and restored on resume."""

    step: int = 0  # optimizer steps done, skipped non-finite ones included (the data moved on)
    tokens_seen: int = 0
    bad_steps: int = 0  # non-finite steps skipped over the run's life
    elapsed_s: float = 0.0  # wall-clock seconds over the run's life (train/budget.py), set at each checkpoint
    precision: str = ""  # the run's arithmetic, decided once ("auto" keeps it on resume)
    consecutive_bad_steps: int = dataclasses.field(default=0, compare=False)  # this process only: not saved

    CHECKPOINTED = ("step", "tokens_seen", "bad_steps", "elapsed_s", "precision")  # trainer_state.pt's keys

    def to_checkpoint(self) -> dict[str, Any]:
        """The trainer_state.pt dict (train/checkpoint.py adds the RNG states)."""
        return {key: getattr(self, key) for key in self.CHECKPOINTED}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], precision: str) -> TrainState:
        """A checkpoint's trainer state; one saved before precision was recorded runs in `precision`."""
        restored = {key: saved[key] for key in cls.CHECKPOINTED if key in saved}
        return cls(**{**restored, "precision": saved.get("precision", precision)})

    def end_step(self, finite: bool, tokens: int) -> None:
        """Count a finished step; a skipped non-finite one too (its micro-batches are consumed)."""
        self.consecutive_bad_steps = 0 if finite else self.consecutive_bad_steps + 1
        self.bad_steps += 0 if finite else 1
        self.step += 1
        self.tokens_seen += tokens


@dataclass
class StepMetrics:
    """What one step measured, summed over its micro-batches and all ranks."""

    loss: float  # mean cross-entropy per masked token
    accuracy: float  # masked-token top-1 accuracy
    grad_norm: float  # before clipping

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


@dataclass
class TrainingParts:
    """The model and what trains it: objective (sparse MLM head), its DDP wrapper, optimizer, loss scaler."""

    mlm: torch.nn.Module  # BertForMaskedLM: what checkpoints and model/ hold
    objective: MaskedLMObjective
    step_module: torch.nn.Module  # the objective, or DDP around it
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only

    @classmethod
    def build(cls, config: TrainConfig, mlm: torch.nn.Module, runtime: TrainingRuntime) -> TrainingParts:
        objective = MaskedLMObjective(mlm, sparse_head=config.train.sparse_head, compile_encoder=config.train.compile)
        step_module = objective
        if runtime.world_size > 1:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            step_module = torch.nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
        optimizer = build_optimizer(mlm, config.optim, runtime.device)
        scaler = torch.amp.GradScaler("cuda") if runtime.precision == "fp16" else None
        mlm.train()  # a from_pretrained model (continued pretraining) comes in eval mode
        return cls(mlm, objective, step_module, optimizer, scaler)


def train_step(parts: TrainingParts, micro_batches: list, lr: float, grad_clip: float,
               runtime: TrainingRuntime) -> StepMetrics:
    """Forward + backward over the micro-batches, clip, step (skipped when the loss or gradient is not finite)."""
    optimizer, scaler = parts.optimizer, parts.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    # Normalise by the masked count over all micro-batches and all ranks
    masked = sum((labels != contract.IGNORE_INDEX).sum() for _, labels in micro_batches).to(runtime.device, torch.float32)
    runtime.all_reduce_sum(masked)

    # Forward + backward per micro-batch; DDP syncs gradients on the last one only
    loss_total = torch.zeros((), device=runtime.device)
    correct_total = torch.zeros((), device=runtime.device)
    for index, (inputs, labels) in enumerate(micro_batches):
        inputs = inputs.to(runtime.device, non_blocking=True)  # (B, T)
        labels = labels.to(runtime.device, non_blocking=True)  # (B, T)
        last = index == len(micro_batches) - 1
        sync = nullcontext() if last or runtime.world_size == 1 else parts.step_module.no_sync()
        with sync, runtime.autocast():
            loss_sum, _, correct = parts.step_module(inputs, labels)
            scaled = loss_sum * runtime.world_size / masked  # DDP averages over ranks
        (scaler.scale(scaled) if scaler else scaled).backward()
        loss_total += loss_sum.detach()
        correct_total += correct.detach()

    # Unscale, clip, skip non-finite steps, step
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.mlm.parameters(), grad_clip if grad_clip > 0 else math.inf)
    runtime.all_reduce_sum(loss_total)
    runtime.all_reduce_sum(correct_total)
    metrics = StepMetrics(loss=(loss_total / masked).item(), accuracy=(correct_total / masked).item(),
                          grad_norm=grad_norm.item())
    if metrics.finite:
        (scaler.step(optimizer) if scaler else optimizer.step())
    if scaler:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return metrics
