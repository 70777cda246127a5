"""placeholder, being written"""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="(being written)")
    parser.set_defaults(run=lambda args: 1)
