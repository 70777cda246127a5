"""`bertforge pipeline`: train (or resume) then export, in one command.

    bertforge pipeline --config train/configs/demo.toml [--run-dir DIR] [--set k=v] [--repo DIR] [--precision P]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bertforge.cli_options import add_config_options, build_config
from bertforge.run_dir import RunDir, RunStatus
from train.cli import add_start_options, start_flags

if TYPE_CHECKING:
    from export.report import ExportReport


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline", help="train (resuming an existing run) then export to a Triton repository",
        description="Train a BERT masked-LM from --config (resuming if the run folder exists), then export "
                    "runs/<name>/model to ONNX and write the Triton model repository.")
    add_config_options(parser, config_help="training config TOML, e.g. train/configs/demo.toml", config_required=True,
                       set_example="train.max_steps=500")
    parser.add_argument("--run-dir", default=None, help="run folder (default: runs/<name>)")
    parser.add_argument("--repo", default="model_repository", help="Triton model repository to write")
    parser.add_argument("--precision", default=None,
                        help="export precision (default: auto, the fastest variant that passes the parity gate: "
                             "the int8 recipe search, else fp32)")
    parser.add_argument("--skip-export", action="store_true", help="train only")
    add_start_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from train.config import load_train_config

    config = build_config(load_train_config, args, flags=start_flags(args))
    config, run_dir = train_stage(config, args.config, args.run_dir)
    if not args.skip_export:
        export_stage(run_dir.model_dir, Path(args.repo), args.precision)
    return 0


def train_stage(config, config_file: str, run_dir: str | None) -> tuple[object, RunDir]:
    """Train `config` (a TrainConfig read from config_file), resume an interrupted run, or reuse a finished one."""
    from bertforge.config import ConfigError
    from train.trainer import run_training

    run = RunDir.for_run(config.name, run_dir)
    # A finished run is reused as is, unless it is a different model than the config asks for
    if run.status is RunStatus.FINISHED:
        verdict = run.resumability(config)
        if not verdict.resumable:
            raise ConfigError(f"{run} holds a finished run of a different setup ({'; '.join(verdict.differences)}); "
                              f"pass --run-dir for a new run, or remove {run} to retrain it")
        print(f"[pipeline] {run} is already trained; reusing {run.model_dir} "
              f"(train further with: bertforge train --config {config_file} --run-dir {run} --resume)")
        return config, run
    started = run.status is RunStatus.STARTED
    print(f"[pipeline] {'resuming' if started else 'training'} {run}")
    run_training(config, run.path, resume=started)
    return config, run


def export_stage(model_dir: Path, repo: Path, precision: str | None) -> ExportReport:
    from export import export_to_repository

    print(f"[pipeline] exporting {model_dir} -> {repo}")
    options = {} if precision is None else {"precision": precision}
    report = export_to_repository(model_dir, repo, **options)
    for name, target in report.tasks.items():
        served, variant = target.served
        why = target.chosen.reason if target.chosen else f"--precision {served}"
        recipe = f" ({variant.recipe['name']})" if variant.recipe else ""
        print(f"[pipeline] {name}: serving {served}{recipe}: {why}")
    return report
