"""Where bertforge keeps things on disk."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Cache for the demo corpus and downloaded wheels (BERTFORGE_CACHE overrides)."""
    default = PROJECT_ROOT / "data_cache"
    return Path(os.environ.get("BERTFORGE_CACHE", default)).expanduser()


def demo_corpus_dir() -> Path:
    """The demo corpus cache (`bertforge data demo`): train.jsonl, eval.jsonl."""
    from bertforge.contract import DEMO_CORPUS_FOLDER

    return cache_dir() / DEMO_CORPUS_FOLDER
