"""The training yardstick: how good a model each contender gives per hour of compute, on this machine.

    bertforge bench quality --minutes 7 --pairs 3        # the four contenders, alternating, 3 rounds
    bertforge bench quality --minutes 1 --pairs 1 --contenders today,new --stock-lr 1e-3   # a quick look

Contenders (each trains the demo corpus on ONE shared tokenizer, the same packed blocks in the same order, for the
same wall-clock budget, evaluations included):
- `stock`: transformers' run_mlm recipe (bench/train_hf.py): HF init, 15 % collator, Trainer defaults, its best
  LR of --stock-lrs (a sweep at the same budget, run first unless --stock-lr names one), annealed at the budget;
- `stock-init`: stock from today's starting point (locality prior, unigram bias), all else stock: the share of
  the gap that is initialisation;
- `same-start`: the same Trainer from bertforge's starting point and optimizer settings (today's recipe): the
  rest of the recipe (against stock-init) and the loop (against today);
- `today`: `bertforge train` with train/configs/demo-bert.toml (BERT as of 2018: post-LN, dropout, 15 %);
- `new`: `bertforge train` with train/configs/demo.toml (the demo's current recipe).
Rounds alternate who goes first. Every contender is scored by bertforge's `evaluate` on the same held-out blocks
masked at 15 % (data.eval_mask_prob), about 14 times per run, and its final model by the whole-word cloze probe
(train/cloze.py, 3,000 items) and the two embedding probes (train/probe.py). Reported per contender: medians
(min-max) of the final held-out loss and perplexity, the cloze and probe figures, and, on the loss-vs-wall-clock
curve, the time and tokens at which it first reaches the target (stock's median final loss; for the new-vs-today
figure, today's). `--reach` adds runs of `new` at a quarter of the budget: the wall clock stock needs (within its
full-budget runs, 4x as long) to reach their loss. JSON and the curves' PNG go to --output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import median

CONTENDERS = ("stock", "stock-init", "same-start", "today", "new")
TODAY_CONFIG = "train/configs/demo-bert.toml"
NEW_CONFIG = "train/configs/demo.toml"
STOCK_LRS = (5e-4, 1e-3, 2e-3)
EVALUATIONS = 14


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget of every run (default 7)")
    parser.add_argument("--pairs", type=int, default=3, help="alternating rounds of all contenders (default 3)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, of {CONTENDERS}")
    parser.add_argument("--stock-lr", type=float, default=None, help="stock's LR (default: the best of --stock-lrs)")
    parser.add_argument("--stock-lrs", default=",".join(f"{lr:g}" for lr in STOCK_LRS),
                        help="stock LRs swept at the budget when --stock-lr is not given")
    parser.add_argument("--reach", action="store_true", help="also train `new` at a quarter of the budget and "
                                                               "report when stock reaches its loss")
    parser.add_argument("--today-config", default=TODAY_CONFIG)
    parser.add_argument("--new-config", default=NEW_CONFIG)
    parser.add_argument("--tokenizer", default="", help="a shared tokenizer folder (default: trained once)")
    parser.add_argument("--workdir", default="runs/quality", help="run folders (replaced)")
    parser.add_argument("--lock", default="", help="a file to hold an exclusive flock on while each run trains: "
                                                 "jobs on a shared machine that honour it pause during measurements")
    parser.add_argument("--output", default="bench/results/train_quality.json")


def run_command(args: argparse.Namespace) -> int:
    from bench.report import arguments_config, provenance, write_results

    contenders = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown or not contenders:
        print(f"bench quality: unknown contenders {unknown}; choose from {list(CONTENDERS)}", file=sys.stderr)
        return 2
    results = provenance(arguments_config(args)) | run_yardstick(args, contenders)
    print_table(results)
    written = write_results(results, Path(args.output), plots=False)
    written.append(plot_curves(results, Path(args.output).with_suffix(".png")))
    for path in written:
        print(f"written: {path}")
    return 0


def run_yardstick(args: argparse.Namespace, contenders: list[str]) -> dict:
    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    tokenizer = args.tokenizer or shared_tokenizer(args.new_config, workdir)
    runner = Runner(args, tokenizer, workdir)

    # stock's LR: the best final held-out loss of a sweep at the same budget (unless given)
    sweep = []
    stock_lr = args.stock_lr
    if any(name.startswith("stock") for name in contenders) and stock_lr is None:
        for lr in (float(value) for value in args.stock_lrs.split(",")):
            sweep.append({"lr": lr, **runner.run("stock", f"stock-lr{lr:g}", lr=lr)})
        stock_lr = min(sweep, key=lambda run: run["final"]["eval_loss"])["lr"]
        print(f"[quality] stock LR: {stock_lr:g} (sweep: " +
              ", ".join(f"{run['lr']:g} -> {run['final']['eval_loss']:.3f}" for run in sweep) + ")")

    # Alternating rounds: every contender once per round, the order rotated
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for round_index in range(args.pairs):
        order = contenders[round_index % len(contenders):] + contenders[:round_index % len(contenders)]
        for name in order:
            runs[name].append(runner.run(name, f"{name}-{round_index}", lr=stock_lr if name.startswith("stock") else None))
    reach = [runner.run("new", f"new-quarter-{index}", minutes=args.minutes / 4) for index in range(args.pairs)] \
        if args.reach else []
    return {"benchmark": "train_quality", "budget_minutes": args.minutes, "tokenizer": str(tokenizer),
            "stock_lr": stock_lr, "stock_lr_sweep": sweep, "runs": runs, "reach_runs": reach,
            "summary": summarize(runs, reach, args.minutes)}


class Runner:
    """Runs one contender in its own process through its real entry point; reads back its curve and probes."""

    def __init__(self, args: argparse.Namespace, tokenizer: str, workdir: Path):
        self.args, self.tokenizer, self.workdir = args, tokenizer, workdir
        self.step_seconds: dict[str, float] = {}  # per config, measured once

    def run(self, contender: str, label: str, lr: float | None = None, minutes: float | None = None) -> dict:
        minutes = minutes or self.args.minutes
        run_dir = self.workdir / label
        if contender in ("stock", "stock-init", "same-start"):
            config = self.args.today_config
            command = [sys.executable, "-m", "bench.train_hf", "--kind", contender, "--config", config,
                       "--tokenizer", self.tokenizer, "--minutes", str(minutes), "--run-dir", str(run_dir)]
            command += ["--lr", str(lr)] if lr else []
        else:
            config = self.args.today_config if contender == "today" else self.args.new_config
            command = [sys.executable, "-m", "bertforge", "train", "--config", config, "--run-dir", str(run_dir),
                       "--set", f"data.tokenizer={self.tokenizer}", "--set", f"train.max_minutes={minutes}",
                       *budget_bound(config), "--set", "log.progress=false",
                       "--set", "log.tensorboard=false", "--set", "log.probe=false",
                       "--set", "checkpoint.every=1000000",
                       "--set", f"train.eval_every={self._eval_every(config, minutes)}"]
        print(f"[quality] {label}: {' '.join(command[1:])}", flush=True)
        with exclusive(self.args.lock):
            done = subprocess.run(command, capture_output=True, text=True)
        (run_dir / "yardstick.log").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "yardstick.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"{label} failed (exit {done.returncode}); see {run_dir / 'yardstick.log'}:\n"
                               f"{done.stderr[-2000:]}")
        curve = evaluation_curve(run_dir / "metrics.jsonl")
        return {"label": label, "run_dir": str(run_dir), "minutes": minutes, "curve": curve, "final": curve[-1],
                "probes": probe_model(run_dir / "model", config, self.tokenizer)}

    def _eval_every(self, config: str, minutes: float) -> int:
        """Steps between evaluations, about EVALUATIONS per run, from a 30-step timing of the config here."""
        if config not in self.step_seconds:
            with exclusive(self.args.lock):
                self._time_steps(config)
        return max(10, int(minutes * 60 / self.step_seconds[config] / EVALUATIONS))

    def _time_steps(self, config: str) -> None:
        """Seconds per step of `config` on this machine, from the tokens/s a 30-step run logs after 10 steps."""
        probe_dir = self.workdir / "timing" / Path(config).stem
        subprocess.run([sys.executable, "-m", "bertforge", "train", "--config", config, "--run-dir", str(probe_dir),
                        "--set", f"data.tokenizer={self.tokenizer}", "--set", "train.max_steps=30",
                        "--set", "train.max_minutes=0", "--set", "log.every=10", "--set", "log.progress=false",
                        "--set", "log.tensorboard=false", "--set", "log.probe=false"],
                       check=True, capture_output=True)
        steps = [json.loads(line) for line in (probe_dir / "metrics.jsonl").read_text().splitlines()]
        timed = [record for record in steps if "tokens_per_s" in record and record["step"] > 10]
        tokens_per_step = timed[-1]["tokens_seen"] / timed[-1]["step"]
        self.step_seconds[config] = tokens_per_step / median(record["tokens_per_s"] for record in timed)


def budget_bound(config: str) -> list[str]:
    """Overrides that leave the wall clock alone to end the schedule on any machine: max_steps out of reach, the
    warm-up the same share of the run as the config's (the budget schedule warms up over that share)."""
    from train.config import load_train_config

    settings = load_train_config(config)
    steps = 1_000_000
    warmup = round(settings.optim.warmup_steps / settings.train.max_steps * steps)
    return ["--set", f"train.max_steps={steps}", "--set", f"optim.warmup_steps={warmup}"]


@contextlib.contextmanager
def exclusive(lock_file: str):
    """An exclusive flock on `lock_file` for the block (nothing when empty)."""
    if not lock_file:
        yield
        return
    import fcntl

    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_tokenizer(config: str, workdir: Path) -> str:
    """Train the run config's tokenizer once (deterministic: train/wordpiece.py) for every contender."""
    from bertforge.run_dir import RunDir
    from train.config import load_train_config
    from train.prepare import prepare_tokenizer
    from train.runtime import start_runtime

    train_config = load_train_config(config)
    prepare_tokenizer(train_config.data, RunDir(workdir), start_runtime(train_config.train))
    return str(RunDir(workdir).tokenizer_dir)


def evaluation_curve(metrics_file: Path) -> list[dict]:
    """The run's held-out evaluations in order: step, tokens, wall clock, loss, accuracy."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return [{key: record[key] for key in ("step", "tokens_seen", "elapsed_s", "eval_loss", "eval_accuracy")}
            for record in records if "eval_loss" in record]


def probe_model(model_dir: Path, config: str, tokenizer: str) -> dict:
    """Cloze and embedding probes of a final model, in their own process (outside the budget)."""
    code = ("import json, sys; from train.config import load_train_config; from train.probe import probe_folder; "
            "config = load_train_config(sys.argv[2], ['data.tokenizer=' + sys.argv[3]]); "
            "print(json.dumps(probe_folder(sys.argv[1], config)))")
    done = subprocess.run([sys.executable, "-c", code, str(model_dir), config, tokenizer], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"probing {model_dir} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_reaching(curve: list[dict], target: float) -> dict | None:
    """The wall clock and tokens at which the curve first reaches `target`, linearly interpolated between
    evaluations (None: never)."""
    previous = None
    for point in curve:
        if point["eval_loss"] <= target:
            if previous is None or previous["eval_loss"] == point["eval_loss"]:
                return {"elapsed_s": point["elapsed_s"], "tokens_seen": point["tokens_seen"]}
            share = (previous["eval_loss"] - target) / (previous["eval_loss"] - point["eval_loss"])
            return {key: previous[key] + share * (point[key] - previous[key]) for key in ("elapsed_s", "tokens_seen")}
        previous = point
    return None


def summarize(runs: dict[str, list[dict]], reach: list[dict], minutes: float) -> dict:
    """Per contender: medians (min-max) of the final figures; time and tokens to the targets; the ratios."""
    def spread(values: list[float]) -> dict:
        return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}

    def to_target(name: str, target: float) -> dict:
        reached = [first_reaching(run["curve"], target) for run in runs[name]]
        times = [r["elapsed_s"] if r else float("inf") for r in reached]
        tokens = [r["tokens_seen"] if r else float("inf") for r in reached]
        return {"target_loss": target, "seconds": spread(times), "tokens": spread(tokens),
                "reached": sum(r is not None for r in reached)}

    final = {name: [run["final"]["eval_loss"] for run in done] for name, done in runs.items() if done}
    targets = {"stock": median(final["stock"])} if "stock" in final else {}
    if "today" in final:
        targets["today"] = median(final["today"])
    summary: dict = {"contenders": {}}
    for name, done in runs.items():
        if not done:
            continue
        probes = {key: spread([run["probes"][key] for run in done if key in run["probes"]])
                  for key in ("cloze_top1", "probe_knn_accuracy", "retrieval_top1") if key in done[0]["probes"]}
        summary["contenders"][name] = {
            "eval_loss": spread(final[name]),
            "eval_perplexity": spread([2.718281828459045 ** loss for loss in final[name]]),
            "eval_accuracy": spread([run["final"]["eval_accuracy"] for run in done]),
            "tokens_seen": spread([run["final"]["tokens_seen"] for run in done]),
            **probes,
            **{f"to_{target_name}_loss": to_target(name, target) for target_name, target in targets.items()},
        }
    contenders = summary["contenders"]
    if "new" in contenders and "today" in contenders:
        new, today = contenders["new"], contenders["today"]
        summary["new_vs_today"] = {
            "time_to_today_loss_speedup": minutes * 60 / new["to_today_loss"]["seconds"]["median"],
            "cloze_ratio": (new["cloze_top1"]["median"] / today["cloze_top1"]["median"]
                            if "cloze_top1" in new else None)}
    if reach and "stock" in runs:
        reach_loss = median(run["final"]["eval_loss"] for run in reach)
        stock_times = [first_reaching(run["curve"], reach_loss) for run in runs["stock"]]
        summary["reach"] = {"new_quarter_budget_minutes": minutes / 4, "new_quarter_loss": reach_loss,
                            "stock_seconds_to_reach": [t["elapsed_s"] if t else None for t in stock_times],
                            "stock_budget_minutes": minutes}
    return summary


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training yardstick: {results['budget_minutes']} min per run, medians (min-max)")
    for column in ("contender", "held-out loss @15%", "perplexity", "cloze top-1", "k-NN sentiment", "retrieval",
                   "time to stock's loss", "time to today's loss"):
        table.add_column(column)

    def cell(figure: dict | None, digits: int = 3) -> str:
        if not figure:
            return "-"
        return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"

    for name, row in results["summary"]["contenders"].items():
        times = [row.get(f"to_{target}_loss") for target in ("stock", "today")]
        table.add_row(name, cell(row["eval_loss"]), cell(row["eval_perplexity"], 1), cell(row.get("cloze_top1")),
                      cell(row.get("probe_knn_accuracy")), cell(row.get("retrieval_top1")),
                      *[f"{t['seconds']['median']:.0f} s ({t['reached']}/{t['seconds']['n']})" if t else "-"
                        for t in times])
    Console().print(table)
    if "new_vs_today" in results["summary"]:
        ratio = results["summary"]["new_vs_today"]
        print(f"new vs today: today's {results['budget_minutes']}-minute loss reached "
              f"{ratio['time_to_today_loss_speedup']:.2f}x sooner; cloze {ratio['cloze_ratio'] or float('nan'):.2f}x")


def plot_curves(results: dict, path: Path) -> Path:
    """Held-out loss (15 % masks) against wall clock, every run, one colour per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    colours = dict(zip(CONTENDERS, ("tab:gray", "tab:purple", "tab:orange", "tab:blue", "tab:green")))
    for name, done in results["runs"].items():
        for index, run in enumerate(done):
            curve = run["curve"]
            axis.plot([p["elapsed_s"] / 60 for p in curve], [p["eval_loss"] for p in curve], color=colours[name],
                      alpha=0.8, label=name if index == 0 else None)
    for index, run in enumerate(results.get("reach_runs", [])):
        curve = run["curve"]
        axis.plot([p["elapsed_s"] / 60 for p in curve], [p["eval_loss"] for p in curve], color="tab:green",
                  linestyle="--", alpha=0.8, label="new, quarter budget" if index == 0 else None)
    axis.set_xlabel("wall clock (minutes, evaluations included)")
    axis.set_ylabel("held-out loss, 15 % masks")
    axis.set_title(f"training yardstick, {results['budget_minutes']}-minute budget")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
