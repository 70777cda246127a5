"""Request texts (length mix, fixed length, masks) and BenchConfig presets/validation."""

import json

import pytest

from bench.config import BenchConfig, TextsConfig, preset_path
from bertforge import contract
from bertforge.config import ConfigError, load_config
from bertforge.tasks import EMBED, FILL_MASK
from bertforge.testing import make_documents


@pytest.fixture(scope="module")
def source_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "held_out.jsonl"
    path.write_text("".join(json.dumps({"text": document}) + "\n" for document in make_documents(30, seed=5)))
    return path


def _build(source_file, tokenizer_dir, task=FILL_MASK, max_length=64, **options):
    from bench.texts import build_request_texts

    config = TextsConfig(source=str(source_file), count=60, **options)
    return build_request_texts(config, task, tokenizer_dir / "tokenizer.json", max_length)


def test_length_mix_stays_within_bounds_and_varies(source_file, tiny_tokenizer_dir):
    texts = _build(source_file, tiny_tokenizer_dir, task=EMBED, min_words=5, median_words=12, max_words=30)
    words = [len(text.split()) for text in texts.texts]
    assert len(words) == 60 and min(words) >= 5 and max(words) <= 30
    assert len(set(words)) > 5  # a mix, not one length
    assert all(0 < tokens <= 64 for tokens in texts.tokens)


def test_fixed_length_mode(source_file, tiny_tokenizer_dir):
    texts = _build(source_file, tiny_tokenizer_dir, task=EMBED, length="fixed", fixed_words=9)
    assert {len(text.split()) for text in texts.texts} == {9}


def test_fill_mask_texts_have_masks_within_the_model_length(source_file, tiny_tokenizer_dir):
    from tokenizers import Tokenizer

    texts = _build(source_file, tiny_tokenizer_dir, masks_per_text=2, max_words=80, median_words=40)
    tokenizer = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=64)
    mask_id = tokenizer.token_to_id(contract.MASK_TOKEN)
    for text in texts.texts:
        assert text.count(contract.MASK_TOKEN) == 2
        assert mask_id in tokenizer.encode(text).ids


def test_texts_are_deterministic_for_a_seed(source_file, tiny_tokenizer_dir):
    assert _build(source_file, tiny_tokenizer_dir).texts == _build(source_file, tiny_tokenizer_dir).texts
    assert _build(source_file, tiny_tokenizer_dir).texts != _build(source_file, tiny_tokenizer_dir, seed=1).texts


def test_missing_source_file_says_what_to_do(tiny_tokenizer_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="use 'demo' or a .jsonl"):
        _build(tmp_path / "none.jsonl", tiny_tokenizer_dir)


@pytest.mark.parametrize("name", ["quick", "full"])
def test_presets_load(name):
    config = load_config(BenchConfig, preset_path(name))
    assert config.load.concurrency and config.rounds >= 1


def test_overrides_and_validation_errors():
    config = load_config(BenchConfig, None, ["load.concurrency=[2, 8]", f'task="{EMBED}"', "tune.preferred_batch_sizes=[[], [4, 8]]"])
    assert config.load.concurrency == (2, 8) and config.task == EMBED
    assert config.tune.preferred_batch_sizes == ((), (4, 8))
    with pytest.raises(ConfigError, match="load.concurrency"):
        load_config(BenchConfig, None, ["load.concurrency=[0]"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(BenchConfig, None, ["load.users=4"])
    with pytest.raises(ConfigError, match="must end in .json"):
        load_config(BenchConfig, None, ['output="results.txt"'])
    with pytest.raises(ConfigError, match="available"):
        preset_path("nope")


def test_compare_url_needs_an_http_url_and_the_embed_task():
    from bench.config import BenchConfig
    from bertforge.config import ConfigError

    assert BenchConfig(task=EMBED, compare_url="http://127.0.0.1:7997/embeddings").compare_url
    for bad in ({"task": FILL_MASK, "compare_url": "http://127.0.0.1:7997/embeddings"},
                {"task": EMBED, "compare_url": "127.0.0.1:7997"}):
        with pytest.raises(ConfigError, match="compare_url"):
            BenchConfig(**bad)


def test_tune_grid_limits_are_checked():
    from bench.config import TuneConfig

    assert TuneConfig(max_batch_sizes=(32, 64), min_batch_fills=(0.75, 0.9)).max_batch_sizes == (32, 64)
    for bad in ({"max_batch_sizes": (0,)}, {"min_batch_fills": (1.5,)}):
        with pytest.raises(ConfigError, match="max_batch_sizes"):
            TuneConfig(**bad)


def test_fill_mask_texts_carry_the_models_own_mask_token(source_file, tmp_path):
    """A RoBERTa-style byte-level BPE tokenizer masks with <mask>: a hard-coded [MASK] is no token there (it
    would be split into pieces, no text would hold a mask, and no text could be cut)."""
    from bertforge.testing import byte_level_bpe, make_sentences

    tokenizer = byte_level_bpe(tmp_path / "roberta", make_sentences(400, seed=3))
    assert tokenizer.mask_token == "<mask>" and tokenizer.convert_tokens_to_ids(contract.MASK_TOKEN) == tokenizer.unk_token_id
    texts = _build(source_file, tmp_path / "roberta", max_length=128, masks_per_text=2, min_words=5, median_words=8,
                   max_words=16)
    for text in texts.texts:
        assert text.count("<mask>") == 2 and contract.MASK_TOKEN not in text
        assert tokenizer(text)["input_ids"].count(tokenizer.mask_token_id) == 2
