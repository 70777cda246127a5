"""`bertforge export` (not built yet: see issue 3)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a BERT checkpoint to ONNX and a Triton repository (not built yet)")
    parser.add_argument("--model", required=True, help="HF BERT folder")
    parser.add_argument("--repo", default="model_repository", help="Triton model repository to write")
    parser.set_defaults(run=_not_built)


def _not_built(args: argparse.Namespace) -> int:
    from bertforge.cli import UserError

    raise UserError("export is not built yet")
