"""Shared fixtures: tiny corpora, tokenizers and BERT models built locally (no hub).

The builders and texts live in bertforge/testing.py (benchmarks use them too); they are re-exported here so a test
module may import them from either place."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertforge.testing import build_tiny_bert, make_documents, make_sentences

__all__ = ["COUNTED_SEARCH", "build_tiny_bert", "make_documents", "make_sentences"]

# int8 searches in tests stop after a count of gated candidates, never on seconds: the int8_kernel set also runs
# under an emulated CPU (scripts/test-int8-emulated.sh), about 50x slower, and must try the same recipes there
COUNTED_SEARCH = {"search_seconds": 1e6, "search_candidates": 40}


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    """A folder with train.txt and eval.txt (one document per line)."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text("\n".join(make_documents(300, seed=1)) + "\n")
    (folder / "eval.txt").write_text("\n".join(make_documents(40, seed=2)) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, tiny_corpus_dir) -> Path:
    from train.tokenizer import train_wordpiece_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    texts = (tiny_corpus_dir / "train.txt").read_text().splitlines()
    train_wordpiece_tokenizer(texts, folder, vocab_size=200, model_max_length=64)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A random tiny BertForMaskedLM folder (2 layers, hidden 32) with its tokenizer."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tiny_tokenizer_dir)
