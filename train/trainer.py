"""The pretraining loop: one readable page, CPU and CUDA, one process or DDP under torchrun.

run_training(config, run_dir, resume) -> the run folder (bertforge/run_dir.py) with config.toml, tokenizer/,
checkpoints/, model/ (save_pretrained + tokenizer), metrics.jsonl and loss_curve.png. One optimizer step
is train/step.py's train_step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from bertforge.config import ConfigError
from bertforge.errors import BertforgeError
from bertforge.files import remove_leftover_staging, staged_folder
from bertforge.run_dir import RunDir
from train.architecture import Family, family_of
from train.budget import BudgetClock
from train.checkpoint import latest_complete_checkpoint, load_checkpoint, save_checkpoint
from train.cloze import cloze_probe
from train.config import TrainConfig
from train.init import unigram_output_bias
from train.logger import MetricsLogger, plot_loss_curve
from train.model import MaskedLMObjective, build_model, flops_per_token, peak_flops
from train.optim import lr_at
from train.prepare import prepare_data, prepare_run_dir, prepare_tokenizer
from train.probe import mean_pooled_encoder, run_probes
from train.runtime import TrainingRuntime, start_runtime
from train.step import StepMetrics, TrainingParts, TrainState, train_step


class TrainingDiverged(BertforgeError):
    """Too many consecutive non-finite steps."""


def run_training(config: TrainConfig, run_dir: str | Path | RunDir | None = None, resume: bool = False) -> Path:
    runtime = start_runtime(config.train)
    try:
        run = RunDir.for_run(config.name, run_dir)
        if config.train.objective == "simcse":
            from train.simcse import train_simcse

            return train_simcse(config, run, resume, runtime)
        return _train(config, run, resume, runtime)
    finally:
        runtime.close()


def _train(config: TrainConfig, run: RunDir, resume: bool, runtime: TrainingRuntime) -> Path:
    master, loop = runtime.rank == 0, config.train
    # Run folder, tokenizer and packed data (rank 0 builds, the others reuse its caches)
    prepare_run_dir(config, run, resume, runtime)
    tokenizer = prepare_tokenizer(config.data, run, runtime)
    data = prepare_data(config, tokenizer, runtime)

    # Model, objective (sparse MLM head), DDP, optimizer, loss scaling
    parts = TrainingParts.build(config, initial_model(config, tokenizer, data, runtime), runtime)

    # Resume from the newest complete checkpoint (broken ones are skipped with a warning)
    state = resume_state(config, run, resume, parts, len(tokenizer), runtime)

    # Data loader positioned at this step's first micro-batch
    accum = loop.grad_accum
    batches = iter(data.loader(start=state.step * accum, end=loop.max_steps * accum, runtime=runtime))
    logger = MetricsLogger(run, config.log.tensorboard) if master else None
    try:
        _announce_device(state, logger, runtime)
        progress = _progress_bar(master and config.log.progress, state.step, loop.max_steps)
        throughput = Throughput(config, parts.mlm, runtime, state.tokens_seen)
        clock, out_of_time = BudgetClock(loop.max_minutes * 60, state.elapsed_s), False
        while state.step < loop.max_steps and not out_of_time:
            # This step's learning rate, over the steps or the wall-clock budget, whichever is further along
            budget_used = runtime.agreed_max(clock.used_by_next_step()) if clock.budget_s else 0.0
            lr = lr_at(state.step, loop.max_steps, config.optim, budget_used)

            # One optimizer step over grad_accum micro-batches; a non-finite one is skipped, too many stop the run
            metrics = train_step(parts, [next(batches) for _ in range(accum)], lr, config.optim.grad_clip, runtime)
            state.end_step(metrics.finite, throughput.tokens_per_step)
            _stop_if_diverging(state, metrics, loop.max_consecutive_bad_steps, run, runtime)
            clock.step_done()
            out_of_time = budget_used >= 1.0  # the step that used up the budget ran at the floor
            progress.update(1)

            # Log every N steps (and the last): loss, LR, grad-norm, tokens/s, MFU on CUDA
            last = state.step == loop.max_steps or out_of_time
            if master and (state.step % config.log.every == 0 or last):
                logger.log(step_record(state, metrics, lr, throughput.take(state.tokens_seen), clock.elapsed()))
                progress.set_postfix(loss=f"{metrics.loss:.3f}", tok_s=f"{throughput.last_tokens_per_s:,.0f}")

            # Evaluate on the held-out set, checkpoint (the last step always)
            if master and loop.eval_every and state.step % loop.eval_every == 0 and state.step < loop.max_steps:
                logger.log({"step": state.step, **evaluate(parts.objective, data.eval_batches(), runtime),
                            "tokens_seen": state.tokens_seen, "elapsed_s": clock.elapsed()})
            if master and (state.step % config.checkpoint.every == 0 or last):
                _save_checkpoint(config, run, parts, state, clock.elapsed())
        progress.close()
        if out_of_time:
            runtime.print(f"[train] wall-clock budget of {loop.max_minutes} min used up at step {state.step} "
                          f"(LR {lr:.2g}); raise train.max_minutes to train further")
        runtime.barrier()

        # Final held-out evaluation, model/ folder for transformers.pipeline, embedding probe, loss curve
        if master:
            _finish(config, run, parts, tokenizer, data, state, logger, runtime, clock.elapsed())
    finally:  # a failed or interrupted run still flushes and closes its metrics (and TensorBoard) files
        if logger is not None:
            logger.close()
    return run.path


def resume_state(config: TrainConfig, run: RunDir, resume: bool, parts: TrainingParts, vocab_size: int,
                 runtime: TrainingRuntime) -> TrainState:
    """Step 0, or the newest complete checkpoint's state with weights, optimizer, scaler and RNGs restored."""
    state = TrainState(precision=runtime.precision)
    resume_from = latest_complete_checkpoint(run.checkpoints_dir) if resume else None
    if resume_from is not None:
        check_vocabulary(resume_from, vocab_size, run.tokenizer_dir, family_of(parts.mlm))
        saved = load_checkpoint(resume_from, parts.mlm, parts.optimizer, parts.scaler)
        state = TrainState.from_checkpoint(saved, runtime.precision)
        runtime.print(f"[train] resumed from {resume_from} (step {state.step})")
        if config.train.precision == "auto" and state.precision != runtime.precision:
            # "auto" is decided once per run: a resumed run keeps its arithmetic even if a new measurement differs
            runtime.precision, runtime.precision_reason = state.precision, "auto: as the run was started"
        state.precision = runtime.precision
    elif resume:
        runtime.print("[train] --resume: no complete checkpoint yet, starting from step 0")
    return state


class Throughput:
    """Tokens/s over the steps since the last log line, and the model FLOPs utilisation where the peak is known."""

    def __init__(self, config: TrainConfig, mlm: torch.nn.Module, runtime: TrainingRuntime, tokens_seen: int):
        data, loop = config.data, config.train
        self.tokens_per_step = loop.batch_size * data.seq_len * loop.grad_accum * runtime.world_size
        self.flops_per_token = flops_per_token(mlm, data.seq_len, data.mask_prob, loop.sparse_head)
        self.peak, self.world_size = peak_flops(runtime.device), runtime.world_size
        self.window_start, self.window_tokens_seen, self.last_tokens_per_s = time.perf_counter(), tokens_seen, 0.0

    def take(self, tokens_seen: int) -> dict[str, float]:
        """tokens_per_s (and mfu) since the last call (or the start); starts the next window."""
        tokens = tokens_seen - self.window_tokens_seen
        self.last_tokens_per_s = tokens / max(time.perf_counter() - self.window_start, 1e-9)
        self.window_start, self.window_tokens_seen = time.perf_counter(), tokens_seen
        mfu = {"mfu": self.flops_per_token * self.last_tokens_per_s / (self.peak * self.world_size)} if self.peak else {}
        return {"tokens_per_s": self.last_tokens_per_s, **mfu}


def step_record(state: TrainState, metrics: StepMetrics, lr: float, throughput: dict[str, float],
                elapsed_s: float) -> dict:
    """One metrics.jsonl line of a training step (its keys in the order readers have always seen)."""
    mfu = {"mfu": throughput["mfu"]} if "mfu" in throughput else {}
    return {"step": state.step, "loss": metrics.loss, "accuracy": metrics.accuracy, "lr": lr,
            "grad_norm": metrics.grad_norm, "tokens_per_s": throughput["tokens_per_s"],
            "tokens_seen": state.tokens_seen, "bad_steps": state.bad_steps, "elapsed_s": elapsed_s, **mfu}


def _announce_device(state: TrainState, logger: MetricsLogger | None, runtime: TrainingRuntime) -> None:
    """Device and precision (and why) on the console and as the run's first metrics line of this process."""
    runtime.print(f"[train] {runtime.device}, precision {runtime.precision} ({runtime.precision_reason})")
    if logger is not None:
        logger.log({"step": state.step, "device": str(runtime.device), "precision": runtime.precision,
                    "precision_reason": runtime.precision_reason})


def _stop_if_diverging(state: TrainState, metrics: StepMetrics, limit: int, run: RunDir,
                       runtime: TrainingRuntime) -> None:
    """Say a non-finite step was skipped; stop the run (TrainingDiverged) after `limit` in a row."""
    if metrics.finite:
        return
    step = state.step - 1  # the skipped one
    runtime.print(f"[train] step {step}: non-finite loss/gradient, step skipped ({state.bad_steps} so far)")
    if state.consecutive_bad_steps >= limit:
        last = latest_complete_checkpoint(run.checkpoints_dir, quiet=True)
        raise TrainingDiverged(
            f"{state.consecutive_bad_steps} consecutive non-finite steps at step {step}; lower optim.lr or use "
            f"fp32/bf16. Last good checkpoint: {last or 'none'} (resume with --resume)"
        )


def _save_checkpoint(config: TrainConfig, run: RunDir, parts: TrainingParts, state: TrainState,
                     elapsed_s: float) -> None:
    state.elapsed_s = elapsed_s  # a resumed run continues the wall-clock budget from here (train/budget.py)
    save_checkpoint(run.checkpoints_dir, state.step, parts.mlm, parts.optimizer, parts.scaler, state.to_checkpoint(),
                    config, config.checkpoint.keep)


def _finish(config: TrainConfig, run: RunDir, parts: TrainingParts, tokenizer, data, state: TrainState,
            logger: MetricsLogger, runtime: TrainingRuntime, elapsed_s: float) -> None:
    """Rank 0 at the end: held-out evaluation, model/, embedding probe, loss curve."""
    logger.log({"step": state.step, **evaluate(parts.objective, data.eval_batches(), runtime),
                "tokens_seen": state.tokens_seen, "elapsed_s": elapsed_s})
    _save_final_model(parts.mlm, tokenizer, run.model_dir)
    if config.log.probe:  # the mean-pooled states `embed` serves, and whole-word cloze, on text never trained on
        logger.log({"step": state.step, **run_probes(mean_pooled_encoder(parts.mlm, tokenizer, runtime.device), config),
                    **cloze_probe(parts.mlm, tokenizer, runtime.device)})
    logger.close()  # before the loss curve reads metrics.jsonl
    plot_loss_curve(run)
    runtime.print(f"[train] done: {state.step} steps; model saved to {run.model_dir}")


def initial_model(config: TrainConfig, tokenizer, data, runtime: TrainingRuntime):
    """A fresh masked-LM of the run's family, or the model.init_from folder's weights (continued pretraining)."""
    torch.manual_seed(config.train.seed)  # a fresh model's (or a fresh MLM head's) weights
    head_loaded = False
    if config.model.init_from:
        from train.continued import load_source_model

        dropout = (config.model.hidden_dropout_prob, config.model.attention_probs_dropout_prob)
        mlm, head_loaded = load_source_model(config.model.init_from, dropout, len(tokenizer))
        runtime.print(f"[train] continuing from {config.model.init_from} "
                      f"({'with its MLM head' if head_loaded else 'no MLM head there: a fresh one'})")
    else:
        mlm = build_model(config.model, len(tokenizer), tokenizer.pad_token_id, tokenizer.cls_token_id,
                          tokenizer.sep_token_id)
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


def check_vocabulary(checkpoint: Path, vocab_size: int, tokenizer_dir: Path, family: Family) -> None:
    """The tokenizer must have exactly as many tokens as the checkpoint's embedding table."""
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as weights:
        name = next(name for name in family.vocabulary_tensors if name in weights.keys())
        rows = weights.get_slice(name).get_shape()[0]
    if rows != vocab_size:
        raise ConfigError(
            f"tokenizer {tokenizer_dir} has a vocabulary of {vocab_size} tokens but checkpoint {checkpoint} "
            f"has {rows} embedding rows; restore the run's original tokenizer folder"
        )


def _save_final_model(mlm, tokenizer, folder: Path) -> None:
    """save_pretrained + tokenizer (as the family takes it) into a staging folder, swapped in whole (a reader never
    sees half a model)."""
    with staged_folder(folder) as staged:
        mlm.save_pretrained(staged, safe_serialization=True)
        family_of(mlm).prepare_tokenizer(tokenizer).save_pretrained(staged)
    remove_leftover_staging(folder)  # a killed earlier save's


def _progress_bar(enabled: bool, start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


