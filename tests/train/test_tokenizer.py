"""The WordPiece tokenizer is a pure function of the corpus: same pieces, same ids, in every process."""

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bertforge.contract import SPECIAL_TOKENS
from tests.conftest import make_documents
from train.wordpiece import learn_wordpiece_vocabulary

TRAIN_IN_A_FRESH_PROCESS = """
import sys
from train.tokenizer import train_wordpiece_tokenizer
texts = open(sys.argv[1]).read().splitlines()
train_wordpiece_tokenizer(texts, sys.argv[2], vocab_size=int(sys.argv[3]))
"""


def tie_rich_corpus(path: Path) -> Path:
    """News-like sentences plus made-up words: many pairs of equal count where the size limit cuts."""
    rng = random.Random(5)
    syllables = ["ka", "lo", "mi", "ren", "tos", "ul", "vea", "zor", "ip", "ne", "qua", "sh"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(400)]
    documents = [f"{text} {' '.join(rng.choice(words) for _ in range(30))}" for text in make_documents(120, seed=3)]
    path.write_text("\n".join(documents) + "\n")
    return path


def test_two_processes_train_byte_identical_tokenizers(tmp_path):
    corpus = tie_rich_corpus(tmp_path / "corpus.txt")
    folders = []
    for hash_seed in ("1", "2"):  # Python's and (unseedable) Rust's hash seeds differ per process
        folder = tmp_path / f"tokenizer-{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", TRAIN_IN_A_FRESH_PROCESS, str(corpus), str(folder), "600"],
                                capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        folders.append(folder)
    # tokenizer.json is what every stage loads (transformers 5 writes no vocab.txt beside it)
    first, second = (json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"] for folder in folders)
    assert len(first) == 600  # the limit was reached, so tie-breaking at the cut mattered
    assert sorted(first, key=first.get)[:5] == list(SPECIAL_TOKENS)
    assert first == second
    assert (folders[0] / "tokenizer.json").read_bytes() == (folders[1] / "tokenizer.json").read_bytes()


def test_merges_most_frequent_pair_first_and_breaks_ties_by_pair():
    specials = ("[PAD]", "[UNK]")
    counts = Counter({"cd": 6, "ef": 6, "ab": 2, "xy": 1})
    alphabet = {"a", "b", "c", "d", "e", "f", "x", "y", "##b", "##d", "##f", "##y"}
    # One merge allowed: ("c", "##d") and ("e", "##f") tie at 6; the pair of older symbols wins
    vocab = learn_wordpiece_vocabulary(counts, len(specials) + len(alphabet) + 1, specials)
    assert set(vocab) - alphabet - set(specials) == {"cd"}
    assert [vocab[token] for token in specials] == [0, 1] and list(vocab)[2:] == sorted(list(vocab)[2:])
    # Unlimited: merging stops at pairs seen fewer than min_frequency times ("xy": once)
    vocab = learn_wordpiece_vocabulary(counts, 10_000, specials, min_frequency=2)
    assert {"ab", "cd", "ef"} <= set(vocab) and "xy" not in vocab
    # Chained merges: ("a", "##b") ties with ("##b", "##c"); characters are older than ## pieces
    vocab = learn_wordpiece_vocabulary(Counter({"abc": 5}), 10_000, specials)
    assert set(vocab) - set(specials) == {"a", "b", "c", "##b", "##c", "ab", "abc"}


def test_learns_nearly_the_same_pieces_as_the_rust_trainer(tmp_path):
    """Same procedure as tokenizers' WordPieceTrainer (only the tie-breaking differs)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from train.tokenizer import load_tokenizer, train_wordpiece_tokenizer

    texts = tie_rich_corpus(tmp_path / "corpus.txt").read_text().splitlines()
    ours = train_wordpiece_tokenizer(texts, tmp_path / "ours", vocab_size=600).get_vocab()
    rust = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    rust.normalizer = normalizers.BertNormalizer(lowercase=True)
    rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    rust.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=list(SPECIAL_TOKENS),
                                                              show_progress=False))
    shared = set(ours) & set(rust.get_vocab())
    assert len(shared) >= 0.95 * 600, len(shared)  # two Rust runs share about 585 of 600
    # and the saved folder encodes like BERT's WordPiece: longest known piece first, ## on continuations
    tokenizer = load_tokenizer(tmp_path / "ours")
    for word in ("committee", "kalomiren", "qzx"):
        pieces = tokenizer.tokenize(word)
        assert pieces == ["[UNK]"] or "".join(p.removeprefix("##") for p in pieces) == word, pieces
        assert all(p.startswith("##") for p in pieces[1:])
    assert tokenizer.tokenize("committee") == ["committee"]
