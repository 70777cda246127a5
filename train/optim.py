"""Optimizers (AdamW, LAMB) with BERT's weight-decay groups, and the LR schedule."""

from __future__ import annotations

import math

import torch

from train.config import OptimConfig


def build_optimizer(model: torch.nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA) or LAMB; no weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    betas = tuple(config.betas)
    if config.name == "lamb":
        return Lamb(groups, lr=config.lr, betas=betas, eps=config.eps)
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.eps, fused=fused)


def lr_at(step: int, max_steps: int, config: OptimConfig, budget_used: float = 0.0) -> float:
    """Linear warmup, then linear, cosine or warmup-stable-decay ("wsd": the peak until the last
    `decay_fraction` of the run, then linear) decay to min_lr_ratio * lr, over the run's progress.

    Progress is max(step / max_steps, budget_used), budget_used being the fraction of the wall-clock
    budget (train.max_minutes) spent by the end of this step, 0 without one. Whichever limit ends the
    run ends the schedule with it: a slow machine reaches the floor when its time runs out instead of
    being cut off half-annealed, a fast one when its steps run out, and a machine in between follows
    whichever is further along (max of two rising curves, so the LR never jumps back up). Warm-up is
    the same share of the run in either unit: warmup_steps / max_steps. Without a budget this is
    exactly the per-step schedule (same arithmetic, so step-budget resumes stay bit-identical), as it is
    with optim.schedule_unit = "steps".
    """
    if config.schedule_unit == "steps":
        budget_used = 0.0
    warmup = config.warmup_steps / max_steps
    progress = max(step / max_steps, budget_used)
    if progress < warmup:
        return config.lr * max((step + 1) / config.warmup_steps, budget_used / warmup)
    if config.schedule == "constant":
        return config.lr
    if budget_used > step / max_steps:
        decayed = min(1.0, (budget_used - warmup) / max(1e-9, 1.0 - warmup))
    else:
        decayed = min(1.0, (step - config.warmup_steps) / max(1, max_steps - config.warmup_steps))
    if config.schedule == "linear":
        decay = 1.0 - decayed
    elif config.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * decayed))
    else:  # "wsd": warm-up, stable at the peak, then linear decay over the last decay_fraction of the run
        progress_after = warmup + decayed * (1.0 - warmup)
        decay = min(1.0, (1.0 - progress_after) / config.decay_fraction)
    return config.lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * decay)


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019): Adam moments with a per-tensor trust ratio ||w|| / ||update||."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(parameter)
                    state["exp_avg_sq"] = torch.zeros_like(parameter)
                state["step"] += 1
                step = state["step"].item()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(parameter.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(parameter.grad, parameter.grad, value=1 - beta2)
                # Bias-corrected Adam direction plus decoupled weight decay
                update = (exp_avg / (1 - beta1**step)) / ((exp_avg_sq / (1 - beta2**step)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(parameter, alpha=group["weight_decay"])
                # Layer-wise trust ratio
                weight_norm, update_norm = parameter.norm(), update.norm()
                trust = torch.where((weight_norm > 0) & (update_norm > 0), weight_norm / update_norm, 1.0)
                parameter.add_(update, alpha=-group["lr"] * float(trust))
        return loss
