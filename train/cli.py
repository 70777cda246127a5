"""`bertforge train`: pretrain a BERT masked-LM from a TOML config.

Multi-process: `torchrun --nproc_per_node=N -m train --config FILE ...` (same flags).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pretrain a BERT masked-LM",
        description="Pretrain a BERT masked-LM. Presets: train/configs/*.toml; model sizes: train/configs/models/.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config TOML, e.g. train/configs/demo.toml")
    parser.add_argument("--run-dir", default=None, help="run folder (default: runs/<name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.max_steps=500 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")


def run(args: argparse.Namespace) -> int:
    from train.config import load_train_config
    from train.trainer import run_training

    config = load_train_config(args.config, args.overrides)
    run_training(config, args.run_dir, resume=args.resume)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m train` (what torchrun launches)."""
    from bertforge.cli import main as bertforge_main

    return bertforge_main(["train", *(sys.argv[1:] if argv is None else argv)])
