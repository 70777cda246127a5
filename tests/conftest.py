"""Shared fixtures: tiny corpora, tokenizers and BERT models built locally (no hub)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

SUBJECTS = ["the minister", "the committee", "a reporter", "the council", "our government", "the bank", "the team"]
VERBS = ["announced", "rejected", "discussed", "approved", "reviewed", "criticised", "supported"]
OBJECTS = ["the new budget", "a housing plan", "the report", "an energy policy", "the trade deal", "the proposal"]
# int8 searches in tests stop after a count of gated candidates, never on seconds: the int8_kernel set also runs
# under an emulated CPU (scripts/test-int8-emulated.sh), about 50x slower, and must try the same recipes there
COUNTED_SEARCH = {"search_seconds": 1e6, "search_candidates": 40}
TAILS = ["on monday", "after a long debate", "in london", "this week", "despite strong opposition", "for the second time"]


def make_sentences(count: int, seed: int = 0) -> list[str]:
    """Deterministic English-like sentences with a small vocabulary (fast to learn)."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."
        for _ in range(count)
    ]


def make_documents(count: int, sentences_per_document: int = 8, seed: int = 0) -> list[str]:
    sentences = make_sentences(count * sentences_per_document, seed)
    return [" ".join(sentences[i : i + sentences_per_document]) for i in range(0, len(sentences), sentences_per_document)]


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


def build_tiny_bert(folder: Path, tokenizer_dir: Path, seed: int = 0, with_mlm_head: bool = True, **overrides) -> Path:
    """Save a randomly initialised tiny BERT (+ tokenizer) as a standard HF folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    config = BertConfig(**settings)
    model = BertForMaskedLM(config) if with_mlm_head else BertModel(config)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A random tiny BertForMaskedLM folder (2 layers, hidden 32) with its tokenizer."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tiny_tokenizer_dir)
