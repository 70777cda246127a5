"""Data pipeline: packing, masking rules, deterministic sharding, and bad-data errors."""

import json

import numpy as np
import pytest

from bertforge.errors import UserError
from tests.conftest import make_documents
from train.corpus import load_text_dataset
from train.data import IGNORE_INDEX, BlockBatches, MaskingSpec, build_blocks, mask_tokens, masking_spec
from train.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def test_tokenizer_is_a_bert_wordpiece_tokenizer(tiny_tokenizer_dir, tokenizer):
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert [loaded.convert_ids_to_tokens(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    encoded = loaded("The Minister Announced")["input_ids"]
    assert encoded[0] == loaded.cls_token_id and encoded[-1] == loaded.sep_token_id
    assert loaded.decode(encoded[1:-1]) == "the minister announced"  # uncased by default


def test_blocks_are_full_cls_body_sep_without_padding(tiny_corpus_dir, tokenizer, tmp_path):
    dataset = load_text_dataset(str(tiny_corpus_dir / "train.txt"))
    blocks = build_blocks(dataset, tokenizer, 32, tmp_path)
    assert blocks.shape[1] == 32 and len(blocks) > 50
    assert (blocks[:, 0] == tokenizer.cls_token_id).all() and (blocks[:, -1] == tokenizer.sep_token_id).all()
    assert not (np.asarray(blocks) == tokenizer.pad_token_id).any()
    # second call hits the memory-mapped cache
    again = build_blocks(dataset, tokenizer, 32, tmp_path)
    assert isinstance(again, np.memmap) and np.array_equal(again, blocks)


def test_masking_follows_bert_rules():
    rng = np.random.default_rng(0)
    special = (0, 1, 2, 3, 4)
    spec = MaskingSpec(mask_prob=0.15, mask_token_id=4, vocab_size=1000, special_ids=special)
    block = np.concatenate([[2], rng.integers(5, 1000, 4094), [3]])
    chosen = masked = random_or_kept = 0
    for seed in range(20):
        inputs, labels = mask_tokens(block, spec, np.random.default_rng(seed))
        picked = labels != IGNORE_INDEX
        assert not picked[0] and not picked[-1]  # special tokens are never masked
        assert (labels[picked] == block[picked]).all() and (inputs[~picked] == block[~picked]).all()
        chosen += picked.sum()
        masked += (inputs[picked] == 4).sum()
        random_or_kept += (inputs[picked] != 4).sum()
    rate = chosen / (20 * 4094)
    assert 0.14 < rate < 0.16
    assert 0.77 < masked / chosen < 0.83 and 0.17 < random_or_kept / chosen < 0.23


def test_masking_is_deterministic_per_seed():
    spec = MaskingSpec(mask_prob=0.3, mask_token_id=4, vocab_size=50, special_ids=(0, 1, 2, 3, 4))
    block = np.arange(5, 45)
    first = mask_tokens(block, spec, np.random.default_rng([7, 1, 3]))
    second = mask_tokens(block, spec, np.random.default_rng([7, 1, 3]))
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_whole_word_masking_masks_all_pieces_of_a_word(tokenizer):
    spec = masking_spec(tokenizer, 0.3, whole_word_mask=True)
    vocab = tokenizer.get_vocab()
    pieces = [t for t in vocab if t.startswith("##")]
    assert pieces, "the tiny tokenizer has word pieces"
    words = [t for t in vocab if t.isalpha() and not t.startswith("##")][:4]
    # [CLS] w p w p w p ... [SEP] where each p continues the preceding word
    ids = [tokenizer.cls_token_id]
    for i in range(60):
        ids += [vocab[words[i % len(words)]], vocab[pieces[i % len(pieces)]]]
    block = np.array(ids + [tokenizer.sep_token_id])
    for seed in range(10):
        _, labels = mask_tokens(block, spec, np.random.default_rng(seed))
        picked = labels != IGNORE_INDEX
        word_heads, word_tails = picked[1:-1:2], picked[2:-1:2]
        assert np.array_equal(word_heads, word_tails)


def test_rank_shards_together_equal_the_single_process_batch():
    single = BlockBatches(100, batch_size=8, world_size=1, rank=0, seed=3)
    ranks = [BlockBatches(100, batch_size=4, world_size=2, rank=r, seed=3) for r in (0, 1)]
    for micro_batch in (0, 5, 11, 12, 30):  # crosses epochs (12 batches per epoch)
        epoch, whole = single.indices(micro_batch)
        parts = np.concatenate([rank.indices(micro_batch)[1] for rank in ranks])
        assert np.array_equal(whole, parts)
    assert single.indices(12)[0] == 1 and not np.array_equal(single.indices(0)[1], single.indices(12)[1])


def test_bad_data_errors(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        load_text_dataset(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    with pytest.raises(UserError, match="empty"):
        load_text_dataset(str(empty))
    table = tmp_path / "docs.jsonl"
    table.write_text("\n".join(json.dumps({"body": d}) for d in make_documents(3)))
    with pytest.raises(UserError, match="text column 'text' not found.*body"):
        load_text_dataset(str(table))
    assert len(load_text_dataset(str(table), text_column="body")) == 3
    small = tmp_path / "small.txt"
    small.write_text("just a few words\n")
    with pytest.raises(UserError, match="smaller than one block"):
        build_blocks(load_text_dataset(str(small)), tokenizer, 128, tmp_path)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_table_corpora(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"id": [1, 2], "text": make_documents(2)})
    path = tmp_path / f"corpus.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    dataset = load_text_dataset(str(path))
    assert dataset.column_names == ["text"] and len(dataset) == 2


def test_held_out_blocks_are_masked_at_the_eval_rate_whatever_training_masks(tiny_config_file, tiny_tokenizer_dir):
    """Recipes that train at 15 % and at 40 % are scored on the same questions (data.eval_mask_prob, 15 %)."""
    import torch

    from train.config import load_train_config
    from train.prepare import prepare_data
    from train.runtime import start_runtime

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    body = 30 / 32  # [CLS] and [SEP] of a 32-token block are never masked
    labels = {}
    for rate in (0.15, 0.4):
        config = load_train_config(tiny_config_file, [f"data.mask_prob={rate}"])
        runtime = start_runtime(config.train)
        data = prepare_data(config, tokenizer, runtime)
        labels[rate] = torch.cat([batch_labels for _, batch_labels in data.eval_batches()])
        trained = torch.cat([batch_labels for _, batch_labels in data.loader(start=0, end=8, runtime=runtime)])
        # 2,048 positions: a standard error of at most 0.011, so 0.05 is over 4 of them
        assert abs((trained != IGNORE_INDEX).float().mean().item() - rate * body) < 0.05
    assert torch.equal(labels[0.15], labels[0.4])
    masked = (labels[0.15] != IGNORE_INDEX).float().mean().item()
    assert abs(masked - 0.15 * body) < 0.04, masked  # ~2,000 positions: a standard error of about 0.008
