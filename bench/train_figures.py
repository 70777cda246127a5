"""The figures of README's Training section, reproducible: each part prints and saves one JSON summary.

    python -m bench.train_figures schedule --pairs 2 --minutes 3.5   # budget vs step schedule, alternating pairs
    python -m bench.train_figures continued --start runs/figures/schedule-auto-0/model   # 300 steps on speeches
    python -m bench.train_figures simcse --start runs/figures/schedule-auto-0/model      # embedding probe

Runs go under runs/figures/ (a part's earlier runs are replaced), summaries to bench/results/train_<part>.json.
Everything goes through the real `bertforge train` command on the demo config.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import median

from bench.report import provenance, write_results
from bertforge.run_dir import RUNS as RUNS_ROOT

DEMO = "train/configs/demo.toml"
SIMCSE = "train/configs/simcse.toml"
RUNS = RUNS_ROOT / "figures"
QUIET = ["--set", "log.progress=false", "--set", "log.tensorboard=false"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    schedule = parts.add_parser("schedule", help="demo config, budget vs step schedule, alternating pairs")
    schedule.add_argument("--pairs", type=int, default=3)
    schedule.add_argument("--first-pair", type=int, default=0, help="number of the first pair (to add pairs later)")
    schedule.add_argument("--minutes", type=float, default=7.0, help="train.max_minutes (halve it on a fast machine)")
    continued = parts.add_parser("continued", help="300 steps on the speeches: from --start vs from scratch")
    continued.add_argument("--start", required=True, help="the starting model folder (a demo run's model/)")
    continued.add_argument("--steps", type=int, default=300)
    simcse = parts.add_parser("simcse", help="SimCSE stage on --start vs its mean-pooled MLM: embedding probe")
    simcse.add_argument("--start", required=True, help="the starting model folder (a demo run's model/)")
    simcse.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args(argv)
    summary = {"schedule": schedule_figure, "continued": continued_figure, "simcse": simcse_figure}[args.part](args)
    write_results(provenance() | summary, Path("bench/results") / f"train_{args.part}.json", plots=False)
    print(json.dumps(summary, indent=1))
    return 0


def schedule_figure(args) -> dict:
    """Held-out masked-token accuracy of the demo with optim.schedule_unit auto (budget) vs steps, back to back."""
    runs = {"auto": [], "steps": []}
    for pair in range(args.first_pair, args.first_pair + args.pairs):
        order = ("steps", "auto") if pair % 2 == 0 else ("auto", "steps")  # alternate who goes first
        for unit in order:
            run_dir = fresh(RUNS / f"schedule-{unit}-{pair}")
            train(DEMO, run_dir, f"train.max_minutes={args.minutes}", f"optim.schedule_unit={unit}")
            runs[unit].append(final_figures(run_dir))
    gains = [auto["eval_accuracy"] - steps["eval_accuracy"] for auto, steps in zip(runs["auto"], runs["steps"])]
    return {"minutes": args.minutes, "pairs": args.pairs, "runs": runs,
            "accuracy_gain_points": [round(100 * g, 2) for g in gains], "median_gain_points": round(100 * median(gains), 2)}


def continued_figure(args) -> dict:
    """Held-out loss on the speeches after N steps from --start vs N steps from scratch (same tokenizer) vs --start."""
    train_file, eval_file = speeches_split()
    common = [f"data.train={train_file}", f"data.eval={eval_file}", f"train.max_steps={args.steps}",
              "train.max_minutes=0", "optim.warmup_steps=30", "train.eval_every=0", "checkpoint.every=100000"]
    continued, scratch = fresh(RUNS / "continued-from-start"), fresh(RUNS / "continued-from-scratch")
    train(DEMO, continued, *common, extra=("--init-from", args.start))
    train(DEMO, scratch, *common, f"data.tokenizer={args.start}")
    figures = {"starting_model": held_out(args.start, common), "continued": final_figures(continued),
               "from_scratch": final_figures(scratch)}
    start_loss = figures["starting_model"]["eval_loss"]
    return {"steps": args.steps, "start": args.start, "speeches_train": str(train_file), "speeches_eval": str(eval_file),
            **figures, "loss_below_scratch": figures["from_scratch"]["eval_loss"] - figures["continued"]["eval_loss"],
            "loss_below_start": start_loss - figures["continued"]["eval_loss"]}


def speeches_split() -> tuple[Path, Path]:
    """The demo's held-out House of Commons speeches cut by document: every 5th to eval, the rest to train."""
    from bertforge.paths import cache_dir
    from train.corpus import build_demo_corpus

    folder = cache_dir() / "figures"
    train_file, eval_file = folder / "speeches_train.jsonl", folder / "speeches_eval.jsonl"
    if not eval_file.is_file():
        documents = build_demo_corpus().eval.read_text().splitlines(keepends=True)
        folder.mkdir(parents=True, exist_ok=True)
        train_file.write_text("".join(d for i, d in enumerate(documents) if i % 5))
        eval_file.write_text("".join(d for i, d in enumerate(documents) if not i % 5))
    return train_file, eval_file


def held_out(model_dir: str, overrides: list[str]) -> dict:
    """A saved masked-LM's held-out loss/accuracy on the run's eval blocks and masks (what the runs report)."""
    from transformers import BertForMaskedLM

    from train.config import load_train_config
    from train.model import MaskedLMObjective
    from train.prepare import prepare_data
    from train.runtime import start_runtime
    from train.tokenizer import load_tokenizer
    from train.trainer import evaluate

    config = load_train_config(DEMO, [*overrides, f"model.init_from={model_dir}"])
    runtime = start_runtime(config.train)
    data = prepare_data(config, load_tokenizer(model_dir), runtime)
    mlm = BertForMaskedLM.from_pretrained(model_dir, use_safetensors=True)
    figures = evaluate(MaskedLMObjective(mlm), data.eval_batches(), runtime)
    return {"eval_loss": figures["eval_loss"], "eval_accuracy": figures["eval_accuracy"]}


def simcse_figure(args) -> dict:
    """The embedding probe of the SimCSE stage's result vs the mean-pooled masked-LM it started from."""
    from train.config import load_train_config
    from train.probe import probe_folder

    run_dir = fresh(RUNS / "simcse")
    train(SIMCSE, run_dir, f"train.max_minutes={args.minutes}", "log.probe=true",
          extra=("--init-from", args.start))
    from train.logger import read_metrics

    records = read_metrics(run_dir)
    simcse = [r for r in records if "probe_knn_accuracy" in r][-1]
    steps = [r for r in records if "simcse_loss" in r]
    return {"start": args.start, "minutes": args.minutes, "simcse_steps": steps[-1]["step"],
            "simcse_elapsed_s": round(steps[-1]["elapsed_s"], 1), "simcse_probe": simcse,
            "mean_pooled_mlm_probe": probe_folder(args.start, load_train_config(SIMCSE, [f"model.init_from={args.start}"]))}


def train(config: str, run_dir: Path, *overrides: str, extra: tuple[str, ...] = ()) -> None:
    command = [sys.executable, "-m", "bertforge.cli", "train", "--config", config, "--run-dir", str(run_dir),
               *QUIET, *[item for override in overrides for item in ("--set", override)], *extra]
    print("[figures]", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def final_figures(run_dir: Path) -> dict:
    from train.logger import read_metrics

    records = read_metrics(run_dir)
    steps = [r for r in records if "lr" in r]
    final = [r for r in records if "eval_accuracy" in r][-1]
    return {"run": str(run_dir), "steps": final["step"], "last_logged_lr": steps[-1]["lr"],
            "elapsed_s": round(steps[-1]["elapsed_s"], 1), "eval_accuracy": final["eval_accuracy"],
            "eval_loss": final["eval_loss"]}


def fresh(run_dir: Path) -> Path:
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_dir


if __name__ == "__main__":
    raise SystemExit(main())
