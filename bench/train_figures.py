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

DEMO = "train/configs/demo.toml"
RUNS = Path("runs/figures")
QUIET = ["--set", "log.progress=false", "--set", "log.tensorboard=false"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    schedule = parts.add_parser("schedule", help="demo config, budget vs step schedule, alternating pairs")
    schedule.add_argument("--pairs", type=int, default=3)
    schedule.add_argument("--minutes", type=float, default=7.0, help="train.max_minutes (halve it on a fast machine)")
    continued = parts.add_parser("continued", help="300 steps on the speeches: from --start vs from scratch")
    continued.add_argument("--start", required=True, help="the starting model folder (a demo run's model/)")
    continued.add_argument("--steps", type=int, default=300)
    simcse = parts.add_parser("simcse", help="SimCSE stage on --start vs its mean-pooled MLM: embedding probe")
    simcse.add_argument("--start", required=True, help="the starting model folder (a demo run's model/)")
    simcse.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args(argv)
    summary = {"schedule": schedule_figure, "continued": continued_figure, "simcse": simcse_figure}[args.part](args)
    output = Path("bench/results") / f"train_{args.part}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def schedule_figure(args) -> dict:
    """Held-out masked-token accuracy of the demo with optim.schedule_unit auto (budget) vs steps, back to back."""
    runs = {"auto": [], "steps": []}
    for pair in range(args.pairs):
        order = ("steps", "auto") if pair % 2 == 0 else ("auto", "steps")  # alternate who goes first
        for unit in order:
            run_dir = fresh(RUNS / f"schedule-{unit}-{pair}")
            train(DEMO, run_dir, f"train.max_minutes={args.minutes}", f"optim.schedule_unit={unit}")
            runs[unit].append(final_figures(run_dir))
    gains = [auto["eval_accuracy"] - steps["eval_accuracy"] for auto, steps in zip(runs["auto"], runs["steps"])]
    return {"minutes": args.minutes, "pairs": args.pairs, "runs": runs,
            "accuracy_gain_points": [round(100 * g, 2) for g in gains], "median_gain_points": round(100 * median(gains), 2)}


def continued_figure(args) -> dict:
    raise NotImplementedError


def simcse_figure(args) -> dict:
    raise NotImplementedError


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
    return {"run": str(run_dir), "steps": steps[-1]["step"], "final_lr": steps[-1]["lr"],
            "elapsed_s": round(steps[-1]["elapsed_s"], 1), "eval_accuracy": final["eval_accuracy"],
            "eval_loss": final["eval_loss"]}


def fresh(run_dir: Path) -> Path:
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_dir


if __name__ == "__main__":
    raise SystemExit(main())
