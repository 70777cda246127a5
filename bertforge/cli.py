"""The `bertforge` console script: a thin dispatcher over the stages' own CLI modules.

Each stage module exposes `register(subparsers)`, which adds its subcommand and sets
`run=callable(args) -> int`. Stage CLI modules import nothing heavy at module level,
so `bertforge --help` and `bertforge client ...` never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bertforge import __version__
from bertforge.errors import BertforgeError, UserError
from bertforge.versions import installed_version

__all__ = ["UserError", "build_parser", "main"]  # UserError's home is bertforge.errors; re-exported for stage CLIs

# subcommand -> module that registers it (in the order shown by --help)
COMMAND_MODULES = {
    "data": "train.cli_data",
    "train": "train.cli",
    "export": "export.cli",
    "serve": "serve.cli",
    "client": "serve.cli_client",
    "bench": "bench.cli",
    "pipeline": "pipeline.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertforge",
        description="Pretrain BERT, export and quantize it, serve it from Triton, benchmark it.",
    )
    parser.add_argument("--version", action=_PrintVersion, nargs=0, help="show the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES.values():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (BertforgeError, FileNotFoundError, NotADirectoryError) as error:  # a bug keeps its traceback
        print(f"bertforge {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bertforge {args.command}: interrupted", file=sys.stderr)
        return 130


class _PrintVersion(argparse.Action):
    """`--version`: the installed distribution's version (the package's own in a checkout that is not installed),
    looked up only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"bertforge {installed_version('bertforge') or __version__}")
        parser.exit()


if __name__ == "__main__":
    sys.exit(main())
