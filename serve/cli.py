"""`bertforge serve` (not built yet: see issue 4)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run tritonserver on a model repository (not built yet)")
    parser.add_argument("--repo", default="model_repository")
    parser.set_defaults(run=_not_built)


def _not_built(args: argparse.Namespace) -> int:
    from bertforge.cli import UserError

    raise UserError("serve is not built yet")
