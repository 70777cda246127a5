"""The pretraining loop: one readable page, CPU and CUDA, one process or DDP under torchrun.

run_training(config, run_dir, resume) -> run_dir with config.toml, tokenizer/, checkpoints/,
model/ (save_pretrained + tokenizer), metrics.jsonl and loss_curve.png.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from bertforge import contract
from bertforge.config import ConfigError
from bertforge.errors import BertforgeError
from bertforge.files import remove_leftover_staging, staged_folder
from train.budget import BudgetClock
from train.checkpoint import latest_complete_checkpoint, load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.init import unigram_output_bias
from train.logger import MetricsLogger, plot_loss_curve
from train.model import MaskedLMObjective, build_model, flops_per_token, peak_flops
from train.optim import build_optimizer, lr_at
from train.prepare import prepare_data, prepare_run_dir, prepare_tokenizer
from train.probe import mean_pooled_encoder, run_probes
from train.runtime import TrainingRuntime, start_runtime

# Config keys that must match to resume a run: what the weights and the data position depend on
# (step counts, logging, dropout and how the model was initialised may change)
RESUME_INVARIANTS = ("model.hidden_size", "model.num_hidden_layers", "model.num_attention_heads",
                     "model.intermediate_size", "model.max_position_embeddings", "data.seq_len", "data.mask_prob",
                     "data.whole_word_mask", "train.batch_size", "train.grad_accum", "train.seed")


class TrainingDiverged(BertforgeError):
    """Too many consecutive non-finite steps."""


def run_training(config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False) -> Path:
    runtime = start_runtime(config.train)
    try:
        run_dir = Path(run_dir or Path("runs") / config.name)
        if config.train.objective == "simcse":
            from train.simcse import train_simcse

            return train_simcse(config, run_dir, resume, runtime)
        return _train(config, run_dir, resume, runtime)
    finally:
        runtime.close()


def _train(config: TrainConfig, run_dir: Path, resume: bool, runtime: TrainingRuntime) -> Path:
    master = runtime.rank == 0
    # Run folder, tokenizer and packed data (rank 0 builds, the others reuse its caches)
    checkpoints = run_dir / "checkpoints"
    prepare_run_dir(config, run_dir, resume, runtime, RESUME_INVARIANTS)
    tokenizer = prepare_tokenizer(config.data, run_dir, runtime)
    data = prepare_data(config, tokenizer, runtime)

    # Model, objective (sparse MLM head), DDP, optimizer, loss scaling
    mlm = initial_model(config, tokenizer, data, runtime)
    objective = MaskedLMObjective(mlm, sparse_head=config.train.sparse_head, compile_encoder=config.train.compile)
    step_module = objective
    if runtime.world_size > 1:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        step_module = torch.nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
    optimizer = build_optimizer(mlm, config.optim, runtime.device)
    scaler = torch.amp.GradScaler("cuda") if runtime.precision == "fp16" else None

    # Resume from the newest complete checkpoint (broken ones are skipped with a warning)
    state = {"step": 0, "tokens_seen": 0, "bad_steps": 0, "elapsed_s": 0.0, "precision": runtime.precision}
    resume_from = latest_complete_checkpoint(checkpoints) if resume else None
    if resume_from is not None:
        check_vocabulary(resume_from, len(tokenizer), run_dir / "tokenizer")
        state = load_checkpoint(resume_from, mlm, optimizer, scaler)
        runtime.print(f"[train] resumed from {resume_from} (step {state['step']})")
        saved_precision = state.setdefault("precision", runtime.precision)
        if config.train.precision == "auto" and saved_precision != runtime.precision:
            # "auto" is decided once per run: a resumed run keeps its arithmetic even if a new measurement differs
            runtime.precision, runtime.precision_reason = saved_precision, "auto: as the run was started"
        state["precision"] = runtime.precision
    elif resume:
        runtime.print("[train] --resume: no complete checkpoint yet, starting from step 0")

    # Data loader positioned at this step's first micro-batch
    accum, max_steps = config.train.grad_accum, config.train.max_steps
    loader = data.loader(start=state["step"] * accum, end=max_steps * accum, runtime=runtime)
    batch_iterator = iter(loader)
    tokens_per_step = config.train.batch_size * config.data.seq_len * accum * runtime.world_size
    step_flops = flops_per_token(mlm, config.data.seq_len, config.data.mask_prob, config.train.sparse_head)
    peak = peak_flops(runtime.device)
    logger = MetricsLogger(run_dir, config.log.tensorboard) if master else None
    try:
        runtime.print(f"[train] {runtime.device}, precision {runtime.precision} ({runtime.precision_reason})")
        if master:
            logger.log({"step": state["step"], "device": str(runtime.device), "precision": runtime.precision,
                        "precision_reason": runtime.precision_reason})
        progress = _progress_bar(master and config.log.progress, state["step"], max_steps)
        consecutive_bad, window_start, window_tokens = 0, time.perf_counter(), 0
        clock = BudgetClock(config.train.max_minutes * 60, state["elapsed_s"])
        step, out_of_time = state["step"], False

        mlm.train()
        while step < max_steps and not out_of_time:
            # This step's learning rate, over the steps or the wall-clock budget, whichever is further along
            budget_used = runtime.agreed_max(clock.used_by_next_step()) if clock.budget_s else 0.0
            lr = lr_at(step, max_steps, config.optim, budget_used)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # Fetch the step's micro-batches; normalise by the masked count over all of them and all ranks
            micro_batches = [next(batch_iterator) for _ in range(accum)]
            masked = sum((labels != contract.IGNORE_INDEX).sum() for _, labels in micro_batches).to(runtime.device, torch.float32)
            runtime.all_reduce_sum(masked)

            # Forward + backward per micro-batch; DDP syncs gradients on the last one only
            loss_total = torch.zeros((), device=runtime.device)
            correct_total = torch.zeros((), device=runtime.device)
            for index, (inputs, labels) in enumerate(micro_batches):
                inputs = inputs.to(runtime.device, non_blocking=True)  # (B, T)
                labels = labels.to(runtime.device, non_blocking=True)  # (B, T)
                sync = nullcontext() if index == accum - 1 or runtime.world_size == 1 else step_module.no_sync()
                with sync, runtime.autocast():
                    loss_sum, _, correct = step_module(inputs, labels)
                    scaled = loss_sum * runtime.world_size / masked  # DDP averages over ranks
                (scaler.scale(scaled) if scaler else scaled).backward()
                loss_total += loss_sum.detach()
                correct_total += correct.detach()

            # Unscale, clip, skip non-finite steps, step
            if scaler:
                scaler.unscale_(optimizer)
            clip = config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(mlm.parameters(), clip)
            runtime.all_reduce_sum(loss_total)
            runtime.all_reduce_sum(correct_total)
            loss = (loss_total / masked).item()
            if math.isfinite(loss) and torch.isfinite(grad_norm).item():
                (scaler.step(optimizer) if scaler else optimizer.step())
                consecutive_bad = 0
            else:
                state["bad_steps"] += 1
                consecutive_bad += 1
                runtime.print(f"[train] step {step}: non-finite loss/gradient, step skipped ({state['bad_steps']} so far)")
                if consecutive_bad >= config.train.max_consecutive_bad_steps:
                    last = latest_complete_checkpoint(checkpoints, quiet=True)
                    raise TrainingDiverged(
                        f"{consecutive_bad} consecutive non-finite steps at step {step}; lower optim.lr or use "
                        f"fp32/bf16. Last good checkpoint: {last or 'none'} (resume with --resume)"
                    )
            if scaler:
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            clock.step_done()
            step, out_of_time = step + 1, budget_used >= 1.0  # the step that used up the budget ran at the floor
            state["step"], state["tokens_seen"] = step, state["tokens_seen"] + tokens_per_step
            window_tokens += tokens_per_step
            progress.update(1)

            # Log every N steps (and the last): loss, LR, grad-norm, tokens/s, MFU on CUDA
            if master and (step % config.log.every == 0 or step == max_steps or out_of_time):
                tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                logger.log({
                    "step": step, "loss": loss, "accuracy": (correct_total / masked).item(), "lr": lr,
                    "grad_norm": grad_norm.item(), "tokens_per_s": tokens_per_s, "tokens_seen": state["tokens_seen"],
                    "bad_steps": state["bad_steps"], "elapsed_s": clock.elapsed(),
                    **({"mfu": step_flops * tokens_per_s / (peak * runtime.world_size)} if peak else {}),
                })
                progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                window_start, window_tokens = time.perf_counter(), 0

            # Evaluate on the held-out set, checkpoint (the last step always)
            if master and config.train.eval_every and step % config.train.eval_every == 0 and step < max_steps:
                logger.log({"step": step, **evaluate(objective, data.eval_batches(), runtime)})
            if master and (step % config.checkpoint.every == 0 or step == max_steps or out_of_time):
                state["elapsed_s"] = clock.elapsed()
                save_checkpoint(checkpoints, step, mlm, optimizer, scaler, state, config, config.checkpoint.keep)
        progress.close()
        if out_of_time:
            runtime.print(f"[train] wall-clock budget of {config.train.max_minutes} min used up at step {step} "
                          f"(LR {lr:.2g}); raise train.max_minutes to train further")
        runtime.barrier()

        # Final held-out evaluation, model/ folder for transformers.pipeline, loss curve
        if master:
            logger.log({"step": step, **evaluate(objective, data.eval_batches(), runtime)})
            _save_final_model(mlm, tokenizer, run_dir / "model")
            if config.log.probe:  # the mean-pooled states `embed` serves, on text never trained on
                logger.log({"step": step, **run_probes(mean_pooled_encoder(mlm, tokenizer, runtime.device), config)})
            logger.close()  # before the loss curve reads metrics.jsonl
            plot_loss_curve(run_dir)
            runtime.print(f"[train] done: {step} steps; model saved to {run_dir / 'model'}")
    finally:  # a failed or interrupted run still flushes and closes its metrics (and TensorBoard) files
        if logger is not None:
            logger.close()
    return run_dir


def initial_model(config: TrainConfig, tokenizer, data, runtime: TrainingRuntime):
    """A fresh BertForMaskedLM, or the model.init_from folder's weights (continued pretraining)."""
    torch.manual_seed(config.train.seed)  # a fresh model's (or a fresh MLM head's) weights
    head_loaded = False
    if config.model.init_from:
        from train.continued import load_source_model

        dropout = (config.model.hidden_dropout_prob, config.model.attention_probs_dropout_prob)
        mlm, head_loaded = load_source_model(config.model.init_from, dropout, len(tokenizer))
        runtime.print(f"[train] continuing from {config.model.init_from} "
                      f"({'with its MLM head' if head_loaded else 'no MLM head there: a fresh one'})")
    else:
        mlm = build_model(config.model, len(tokenizer), tokenizer.pad_token_id)
    if config.model.output_bias_init == "unigram" and not head_loaded:
        unigram_output_bias(mlm, data.blocks, data.spec.special_ids)
    return mlm.to(runtime.device)


@torch.no_grad()
def evaluate(objective: MaskedLMObjective, batches, runtime: TrainingRuntime) -> dict[str, float]:
    """Masked-token accuracy and perplexity on held-out blocks masked with a fixed seed."""
    was_training = objective.training
    objective.eval()
    started = time.perf_counter()
    loss_sum = count = correct = 0.0
    for inputs, labels in batches:
        with runtime.autocast():
            batch_loss, batch_count, batch_correct = objective(inputs.to(runtime.device), labels.to(runtime.device))
        loss_sum += batch_loss.item()
        count += batch_count.item()
        correct += batch_correct.item()
    objective.train(was_training)
    mean_loss = loss_sum / max(count, 1)
    return {"eval_loss": mean_loss, "eval_accuracy": correct / max(count, 1),
            "eval_perplexity": math.exp(min(mean_loss, 50.0)), "eval_masked_tokens": int(count),
            "eval_s": time.perf_counter() - started}


def check_vocabulary(checkpoint: Path, vocab_size: int, tokenizer_dir: Path) -> None:
    """The tokenizer must have exactly as many tokens as the checkpoint's embedding table."""
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as weights:
        rows = weights.get_slice("bert.embeddings.word_embeddings.weight").get_shape()[0]
    if rows != vocab_size:
        raise ConfigError(
            f"tokenizer {tokenizer_dir} has a vocabulary of {vocab_size} tokens but checkpoint {checkpoint} "
            f"has {rows} embedding rows; restore the run's original tokenizer folder"
        )


def _save_final_model(mlm, tokenizer, folder: Path) -> None:
    """save_pretrained + tokenizer into a staging folder, swapped in whole (a reader never sees half a model)."""
    with staged_folder(folder) as staged:
        mlm.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
    remove_leftover_staging(folder)  # a killed earlier save's


def _progress_bar(enabled: bool, start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


