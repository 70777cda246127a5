"""`bertforge client` (not built yet: see issue 4)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("client", help="query a running server (not built yet)")
    parser.add_argument("task", choices=["fill-mask", "embed"])
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    parser.set_defaults(run=_not_built)


def _not_built(args: argparse.Namespace) -> int:
    from bertforge.cli import UserError

    raise UserError("client is not built yet")
