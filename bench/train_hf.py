"""The Hugging Face contenders of the training yardstick (bench/train_quality.py), one run per process.

- `stock`: what a user gets from transformers' `run_mlm.py` training from scratch: `BertForMaskedLM` with
  transformers' own initialisation and dropout, `DataCollatorForLanguageModeling` at 15 %, `Trainer` with its
  defaults (AdamW betas 0.9/0.999, eps 1e-8, no warm-up, no weight decay, linear decay, clipping at 1.0) but for
  the learning rate and `max_steps`, which is set from the step time measured here so that the schedule anneals
  when the wall-clock budget ends (a 100k-step default would never anneal in minutes).
- `stock-init`: `stock` from bertforge's starting point (the run config's initialisation: locality prior and
  unigram output bias), all else stock: the difference to `stock` is the initialisation alone.
- `same-start`: the same Trainer and collator from bertforge's starting point and with the run config's
  optimizer settings (LR, betas, weight decay, warm-up share, dropout): the difference to `stock-init` is the
  rest of the recipe, the difference to bertforge's own run the loop.

Both train the run config's model size on the same tokenizer, packed blocks and block order as bertforge
(`train.data.BlockBatches`), stop when the budget is spent, and evaluate with bertforge's own `evaluate` on the
same held-out blocks masked at `data.eval_mask_prob` (15 %) every `--eval-every` steps. They write what a
bertforge run writes for the yardstick to read the same way: `metrics.jsonl` (evaluation records with step,
tokens_seen, elapsed_s) and `model/` (save_pretrained + tokenizer).

    python -m bench.train_hf --kind stock --config train/configs/demo-bert.toml --tokenizer DIR --minutes 7 \\
        --lr 1e-3 --run-dir DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

CALIBRATION_STEPS = 24  # steps timed before the run (the first few are excluded as warm-up)
CALIBRATION_WARMUP = 6
KINDS = ("stock", "stock-init", "same-start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--config", required=True, help="run config: model size, data, (same-start) optimizer")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer folder every contender shares")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (stock: required)")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: about 14 times)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="run config overrides")
    args = parser.parse_args(argv)
    if args.kind != "same-start" and args.lr is None:
        parser.error(f"--kind {args.kind} needs --lr (the yardstick picks stock's best of 5e-4, 1e-3, 2e-3)")
    train_contender(args.kind, args.config, args.tokenizer, args.minutes * 60, Path(args.run_dir), lr=args.lr,
                    eval_every=args.eval_every, overrides=args.overrides)
    return 0


def train_contender(kind: str, config_file: str, tokenizer_dir: str, budget_s: float, run_dir: Path,
                    lr: float | None = None, eval_every: int = 0, overrides: list[str] = ()) -> Path:
    """Train one HF contender for `budget_s` seconds; returns the run folder."""
    import torch

    from bertforge.run_dir import RunDir
    from train.config import load_train_config
    from train.prepare import prepare_data, prepare_tokenizer
    from train.runtime import start_runtime

    # The run config (model size, data, optimizer), on the shared tokenizer and packed blocks
    config = load_train_config(config_file, [*overrides, f"data.tokenizer={tokenizer_dir}", "train.precision=fp32"])
    runtime = start_runtime(config.train)
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_tokenizer(config.data, run, runtime)
    data = prepare_data(config, tokenizer, runtime)

    # Step time (and one evaluation's) measured on a throwaway model, then max_steps that anneal at the budget
    step_s, eval_s = _calibrate(kind, config, tokenizer, data, runtime, lr)
    evaluations = 14
    max_steps = max(10, int((budget_s - evaluations * eval_s) / step_s))
    eval_every = eval_every or max(1, max_steps // evaluations)
    print(f"[{kind}] {step_s * 1000:.0f} ms/step, {eval_s:.1f} s/evaluation: max_steps {max_steps}, "
          f"evaluating every {eval_every} steps")

    # The real run, stopped by the budget at the latest; evaluations logged as bertforge logs them
    torch.manual_seed(config.train.seed)
    model = _model(kind, config, tokenizer, data)
    trainer, recorder = _trainer(kind, config, tokenizer, data, runtime, model, lr, max_steps, budget_s, eval_every,
                                 run)
    recorder.start()
    trainer.train()
    recorder.final(trainer.state.global_step)
    model.save_pretrained(run.model_dir, safe_serialization=True)
    tokenizer.save_pretrained(run.model_dir)
    return run.path


def _model(kind: str, config, tokenizer, data):
    """stock: transformers' BertForMaskedLM as run_mlm builds it (with its dropout); stock-init and same-start:
    bertforge's initialised model of the run config (stock-init with transformers' default dropout)."""
    from transformers import BertConfig, BertForMaskedLM

    from train.init import unigram_output_bias
    from train.model import build_model

    size = config.model
    if kind == "stock":
        return BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=size.hidden_size,
                                          num_hidden_layers=size.num_hidden_layers,
                                          num_attention_heads=size.num_attention_heads,
                                          intermediate_size=size.intermediate_size,
                                          max_position_embeddings=size.max_position_embeddings,
                                          pad_token_id=tokenizer.pad_token_id))
    if kind == "stock-init":  # transformers' default dropout: only the starting point differs from stock
        size = dataclasses.replace(size, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = build_model(size, len(tokenizer), tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    if size.output_bias_init == "unigram":
        unigram_output_bias(model, data.blocks, data.spec.special_ids)
    return model


def _trainer(kind: str, config, tokenizer, data, runtime, model, lr, max_steps: int, budget_s: float,
             eval_every: int, run):
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    optim = config.optim
    if kind in ("stock", "stock-init"):  # Trainer's defaults but for the LR and the step count
        settings = dict(learning_rate=lr)
    else:  # bertforge's optimizer settings (warm-up as the same share of the run)
        settings = dict(learning_rate=lr or optim.lr, weight_decay=optim.weight_decay, adam_beta1=optim.betas[0],
                        adam_beta2=optim.betas[1], adam_epsilon=optim.eps,
                        warmup_ratio=min(1.0, optim.warmup_steps / config.train.max_steps),
                        lr_scheduler_type=optim.schedule if optim.schedule in ("linear", "cosine") else "linear",
                        max_grad_norm=optim.grad_clip)
    arguments = TrainingArguments(
        output_dir=str(run.path / "trainer"), per_device_train_batch_size=config.train.batch_size,
        max_steps=max_steps, save_strategy="no", report_to=[], logging_steps=10**9, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=config.train.seed, **settings)
    recorder = evaluation_recorder(model, data, runtime, config, budget_s, eval_every, run.metrics_file)
    trainer = Trainer(model=model, args=arguments, train_dataset=blocks_in_order(data, config),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
                      callbacks=[recorder])
    return trainer, recorder


def blocks_in_order(data, config):
    """The training blocks in bertforge's order (BlockBatches of rank 0 of 1), as an iterable dataset: Trainer
    batches consecutive items, so its batch g holds the same blocks as bertforge's micro-batch g."""
    import torch

    from train.data import BlockBatches

    class BlocksInOrder(torch.utils.data.IterableDataset):
        def __iter__(self):
            batches = BlockBatches(len(data.blocks), config.train.batch_size, 1, 0, config.train.seed)
            batch = 0
            while True:
                for index in batches.indices(batch)[1]:
                    yield {"input_ids": torch.tensor(data.blocks[index], dtype=torch.long)}
                batch += 1

    return BlocksInOrder()


def _calibrate(kind: str, config, tokenizer, data, runtime, lr) -> tuple[float, float]:
    """(seconds per optimizer step, seconds per evaluation) of this contender, measured on a throwaway model."""
    import tempfile

    from bertforge.run_dir import RunDir

    model = _model(kind, config, tokenizer, data)
    with tempfile.TemporaryDirectory(prefix="calibrate-") as folder:
        trainer, recorder = _trainer(kind, config, tokenizer, data, runtime, model, lr or config.optim.lr,
                                     CALIBRATION_STEPS, 1e9, 10**9, RunDir(folder))
        trainer.train()
        steps = recorder.step_times[CALIBRATION_WARMUP:]
        started = time.perf_counter()
        recorder.evaluate()
        return (steps[-1] - steps[0]) / (len(steps) - 1), time.perf_counter() - started


def evaluation_recorder(model, data, runtime, config, budget_s: float, eval_every: int, metrics_file: Path):
    """A TrainerCallback that evaluates every `eval_every` steps (and at `final`), logging as bertforge does, and
    stops the run when the budget is spent."""
    from transformers import TrainerCallback

    from train.model import MaskedLMObjective
    from train.trainer import evaluate

    class EvaluationRecorder(TrainerCallback):
        def __init__(self):
            self.tokens_per_step = config.train.batch_size * config.data.seq_len
            self.started = time.perf_counter()
            self.step_times: list[float] = []

        def start(self) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_times.append(time.perf_counter())
            if state.global_step % eval_every == 0:
                self.log(state.global_step, self.evaluate())
            if time.perf_counter() - self.started >= budget_s:
                control.should_training_stop = True

        def final(self, step: int) -> None:
            self.log(step, self.evaluate())

        def evaluate(self) -> dict:
            return evaluate(MaskedLMObjective(model), data.eval_batches(), runtime)

        def log(self, step: int, scores: dict) -> None:
            record = {"step": step, **scores, "tokens_seen": step * self.tokens_per_step,
                      "elapsed_s": time.perf_counter() - self.started}
            with metrics_file.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    return EvaluationRecorder()


if __name__ == "__main__":
    raise SystemExit(main())
