"""placeholder, being written"""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="(being written)")
    parser.set_defaults(run=lambda args: 1)
