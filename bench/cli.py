"""`bertforge bench` (not built yet: see issue 5)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (not built yet)")
    parser.set_defaults(run=_not_built)


def _not_built(args: argparse.Namespace) -> int:
    from bertforge.cli import UserError

    raise UserError("bench is not built yet")
