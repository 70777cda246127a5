"""bench serve counts the tokens the server really runs, and reads the graph's shape for the FLOP count."""

import json

from tokenizers import Tokenizer, models, pre_tokenizers

from bertforge.served_model import load_served_tokenizer


def _padded_tokenizer(path):
    # a sentence-transformers style tokenizer.json: fixed padding to 128 (all-MiniLM-L6-v2 ships this)
    vocab = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
    tokenizer.save(str(path))
    assert json.loads(path.read_text())["padding"]["strategy"] == {"Fixed": 128}
    return path


def test_served_tokenizer_ignores_the_files_fixed_padding(tmp_path):
    path = _padded_tokenizer(tmp_path / "tokenizer.json")
    assert len(Tokenizer.from_file(str(path)).encode("hello world").ids) == 128  # the bug: every text "128 tokens"
    served = load_served_tokenizer(path, max_length=64)
    assert len(served.encode("hello world").ids) == 2
    assert len(served.encode("hello " * 100).ids) == 64  # truncation at the served max_length still holds
