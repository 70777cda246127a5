"""`bertforge pipeline` (not built yet: train then export, see issue 3)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pipeline", help="train then export in one command (not built yet)")
    parser.add_argument("--config", required=True)
    parser.set_defaults(run=_not_built)


def _not_built(args: argparse.Namespace) -> int:
    from bertforge.cli import UserError

    raise UserError("pipeline is not built yet")
