"""`bertforge train`: pretrain a BERT masked-LM from a TOML config.

Multi-process: `torchrun --nproc_per_node=N -m train --config FILE ...` (same flags).
"""

from __future__ import annotations

import argparse
import sys

from bertforge.cli_options import add_config_options, build_config, given


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pretrain a BERT masked-LM",
        description="Pretrain a BERT masked-LM. Presets: train/configs/*.toml; model sizes: train/configs/models/.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, config_help="run config TOML, e.g. train/configs/demo.toml", config_required=True,
                       set_example="train.max_steps=500")
    parser.add_argument("--run-dir", default=None, help="run folder (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    add_start_options(parser)


def add_start_options(parser: argparse.ArgumentParser) -> None:
    """--init-from and --objective (train and pipeline)."""
    parser.add_argument("--objective", default=None, choices=["mlm", "simcse"],
                        help="mlm: masked-LM pretraining (default); simcse: fine-tune --init-from into a sentence "
                             "embedder, saved as a sentence-transformers folder (sets train.objective)")
    parser.add_argument("--init-from", default=None, metavar="DIR",
                        help="continued pretraining: start from this BERT masked-LM folder (runs/<name>/model or a "
                             "Hugging Face one), its tokenizer and architecture (sets model.init_from)")


def run(args: argparse.Namespace) -> int:
    from train.config import load_train_config

    config = build_config(load_train_config, args, flags=start_flags(args))  # before torch
    from train.trainer import run_training

    run_training(config, args.run_dir, resume=args.resume)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m train` (what torchrun launches)."""
    from bertforge.cli import main as bertforge_main

    return bertforge_main(["train", *(sys.argv[1:] if argv is None else argv)])


def start_flags(args: argparse.Namespace) -> list:
    return given({"model.init_from": args.init_from, "train.objective": args.objective})
