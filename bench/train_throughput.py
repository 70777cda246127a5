"""Training throughput: bertforge's trainer vs the Hugging Face baseline, side by side in one run.

Baseline = `transformers.Trainer` + `DataCollatorForLanguageModeling` (what run_mlm.py does) on the
same packed blocks, model config, sequence length, batch, optimizer settings and precision (resolved
once, `--precision auto` included, and handed to both: bf16 autocast for both or fp32 for both). Each
contender trains for the same wall-clock budget, alternating (ours, HF, ours, HF, ...) so machine
noise hits both; then both models are scored on the same held-out blocks masked with a fixed seed.

    python -m bench.train_throughput --preset mini --seconds 240 --rounds 1
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

WARMUP_STEPS = 5  # excluded from tokens/s (allocator warm-up, first-step overheads)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.train_throughput` (the same flags as `bertforge bench train`)."""
    from bertforge.cli_options import module_main

    return module_main("python -m bench.train_throughput", __doc__, add_arguments, run_command, argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's flags (`bertforge bench train` registers them as a subcommand)."""
    parser.add_argument("--config", default="train/configs/demo.toml", help="run config (corpus, optimizer)")
    parser.add_argument("--preset", default="mini", help="model size, train/configs/models/<NAME>.toml (default mini)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=240.0, help="wall-clock budget per contender per round")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="stop each contender at this many steps (0: the --seconds budget alone ends a run); "
                             "a step count makes the run's length independent of the machine's speed")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (throughput = median)")
    parser.add_argument("--tokenizer", default="", help="reuse a tokenizer folder (default: train one)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="one precision for both contenders (auto: train/precision.py decides once)")
    parser.add_argument("--output", default="bench/results/train_throughput.json")


def run_command(args: argparse.Namespace) -> int:
    """Run both contenders, print the table, write the JSON report."""
    from bertforge.cli_options import preset_file
    from train.config import PRESET_DIR

    preset_file(PRESET_DIR, args.preset)  # an unknown size fails here, listing the known ones, before torch loads
    from bench.report import provenance, write_results

    # git commit, command line, time; the benchmark's own machine, versions and config keys win over provenance's
    results = provenance() | run_benchmark(args)
    print_table(results)
    for path in write_results(results, Path(args.output), plots=False):
        print(f"written: {path}")
    return 0


def run_benchmark(args) -> dict:
    import dataclasses
    import tempfile

    import torch

    from bertforge.run_dir import RunDir
    from train.config import load_train_config
    from train.prepare import prepare_data, prepare_tokenizer
    from train.runtime import start_runtime

    # One config for both contenders; a long schedule so the budget, not max_steps, ends each run (unless
    # --max-steps asks for a fixed count)
    overrides = [f"model.preset={args.preset}", f"data.seq_len={args.seq_len}", f"train.batch_size={args.batch_size}",
                 f"train.max_steps={args.max_steps or 100000}", "train.max_minutes=0",
                 "optim.schedule_unit=steps",  # as the HF baseline
                 "log.progress=false", "log.tensorboard=false",
                 "log.every=5", "checkpoint.every=100000", "model.max_position_embeddings=512",
                 f"train.precision={args.precision}"]
    if args.tokenizer:
        overrides.append(f"data.tokenizer={args.tokenizer}")
    config = load_train_config(args.config, overrides)
    runtime = start_runtime(config.train)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision=runtime.precision))
    print(f"[bench] both contenders train in {runtime.precision} ({runtime.precision_reason})")
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    tokenizer = prepare_tokenizer(config.data, RunDir(workdir), runtime)  # workdir/tokenizer/: both contenders
    data = prepare_data(config, tokenizer, runtime)

    # Alternate the contenders; each round trains a fresh model for the same wall-clock budget
    rounds = {"bertforge": [], "hf_trainer": []}
    for index in range(args.rounds):
        rounds["bertforge"].append(train_ours(config, data, tokenizer, runtime, args.seconds, workdir / f"ours{index}"))
        rounds["hf_trainer"].append(train_hf(config, data, tokenizer, runtime.precision, args.seconds, workdir / f"hf{index}"))
    summary = {name: _median_round(runs) for name, runs in rounds.items()}
    return {
        "benchmark": "train_throughput",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
                    "device": str(runtime.device), "precision": runtime.precision,
                    "precision_reason": runtime.precision_reason},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "config": {"preset": args.preset, "seq_len": args.seq_len, "batch_size": args.batch_size,
                   "seconds_per_run": args.seconds, "rounds": args.rounds, "vocab_size": len(tokenizer)},
        "rounds": rounds,
        "summary": summary,
        "speedup_tokens_per_s": summary["bertforge"]["tokens_per_s"] / summary["hf_trainer"]["tokens_per_s"],
    }


def train_ours(config, data, tokenizer, runtime, seconds: float, folder: Path) -> dict:
    """Our loop, stopped by a wall-clock budget; tokens/s from steps after warm-up."""
    import dataclasses

    from bertforge.run_dir import RunDir
    from train.logger import read_metrics
    from train.trainer import run_training

    loop = dataclasses.replace(config.train, max_minutes=seconds / 60.0)
    shared_tokenizer = dataclasses.replace(config.data, tokenizer=str(RunDir(folder.parent).tokenizer_dir))
    run_config = dataclasses.replace(config, train=loop, data=shared_tokenizer)
    started = time.perf_counter()
    run_training(run_config, folder)
    wall = time.perf_counter() - started
    records = read_metrics(folder)
    steps = [r for r in records if "loss" in r]
    final = [r for r in records if "eval_accuracy" in r][-1]
    timed = [r for r in steps if r["step"] > WARMUP_STEPS]
    if len(timed) < 2:
        raise RuntimeError(f"our run logged {len(steps)} step records in {seconds} s, too few to time after "
                           f"{WARMUP_STEPS} warm-up steps; raise --seconds")
    seconds_timed = timed[-1]["elapsed_s"] - steps[0]["elapsed_s"] if len(timed) > 1 else float("nan")
    tokens_timed = timed[-1]["tokens_seen"] - steps[0]["tokens_seen"]
    precision = next(r["precision"] for r in records if "precision" in r)
    return {"steps": final["step"], "tokens_per_s": tokens_timed / seconds_timed, "wall_s": wall,
            "eval_accuracy": final["eval_accuracy"], "eval_loss": final["eval_loss"], "precision": precision}


def train_hf(config, data, tokenizer, precision: str, seconds: float, folder: Path) -> dict:
    """transformers.Trainer + DataCollatorForLanguageModeling on the same blocks and settings."""
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from train.init import unigram_output_bias
    from train.model import MaskedLMObjective, build_model
    from train.runtime import TrainingRuntime
    from train.trainer import evaluate

    class Budget(TrainerCallback):
        def __init__(self):
            self.times, self.start = {}, None

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.times[state.global_step] = now
            if self.start is None:
                self.start = now
            if now - self.start > seconds:
                control.should_training_stop = True

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(data.blocks)

        def __getitem__(self, index):
            return {"input_ids": torch.tensor(data.blocks[index], dtype=torch.long)}

    torch.manual_seed(config.train.seed)
    model = build_model(config.model, len(tokenizer), tokenizer.pad_token_id)
    if config.model.output_bias_init == "unigram":  # the same starting point as ours
        unigram_output_bias(model, data.blocks, data.spec.special_ids)
    arguments = TrainingArguments(
        output_dir=str(folder), per_device_train_batch_size=config.train.batch_size, max_steps=config.train.max_steps,
        learning_rate=config.optim.lr, weight_decay=config.optim.weight_decay, adam_beta1=config.optim.betas[0],
        adam_beta2=config.optim.betas[1], adam_epsilon=config.optim.eps, warmup_steps=config.optim.warmup_steps,
        lr_scheduler_type=config.optim.schedule, max_grad_norm=config.optim.grad_clip, save_strategy="no",
        report_to=[], logging_steps=10**9, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        bf16=precision == "bf16", fp16=precision == "fp16", disable_tqdm=True, seed=config.train.seed,
    )
    budget = Budget()
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=config.data.mask_prob)
    trainer = Trainer(model=model, args=arguments, train_dataset=Blocks(), data_collator=collator, callbacks=[budget])
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    steps = max(budget.times)
    timed = steps - WARMUP_STEPS
    tokens_per_s = timed * config.train.batch_size * config.data.seq_len / (budget.times[steps] - budget.times[WARMUP_STEPS])
    runtime = TrainingRuntime(device=torch.device("cpu"), precision="fp32" if precision == "fp16" else precision)  # as ours
    scores = evaluate(MaskedLMObjective(model.cpu()), data.eval_batches(), runtime)
    return {"steps": steps, "tokens_per_s": tokens_per_s, "wall_s": wall,
            "eval_accuracy": scores["eval_accuracy"], "eval_loss": scores["eval_loss"], "precision": precision}


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training throughput, {results['config']['preset']} preset, seq {results['config']['seq_len']}, "
                        f"batch {results['config']['batch_size']}, {results['machine']['device']} {results['machine']['precision']}")
    for column in ("trainer", "tokens/s", "steps in budget", "held-out MLM acc", "held-out loss"):
        table.add_column(column)
    for name, row in results["summary"].items():
        table.add_row(name, f"{row['tokens_per_s']:,.0f}", str(row["steps"]), f"{row['eval_accuracy']:.4f}",
                      f"{row['eval_loss']:.3f}")
    Console().print(table)
    print(f"speed-up (tokens/s, bertforge / HF Trainer): {results['speedup_tokens_per_s']:.2f}x")


def _median_round(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    return ordered[len(ordered) // 2]


if __name__ == "__main__":
    raise SystemExit(main())
