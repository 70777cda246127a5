"""WordPiece tokenizer: train one on a corpus, or reuse an existing folder.

The result is always a `transformers.BertTokenizerFast` saved in HF format, so
`AutoTokenizer.from_pretrained(folder)` loads it and every stage sees the same
special tokens (bertforge.contract). The vocabulary is learnt by train/wordpiece.py, the same
merge procedure as `tokenizers`' WordPiece trainer but a pure function of the corpus: two runs of
one config train byte-identical tokenizers (the Rust trainer numbers, and near the size limit
picks, pieces in an order that changes with each process's hash seed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertforge.contract import CLS_TOKEN, MASK_TOKEN, PAD_TOKEN, SEP_TOKEN, SPECIAL_TOKENS, UNK_TOKEN
from bertforge.errors import UserError
from train.wordpiece import learn_wordpiece_vocabulary


def train_wordpiece_tokenizer(
    texts: Iterable[str],
    output_dir: str | Path,
    vocab_size: int = 16384,
    lowercase: bool = True,
    model_max_length: int = 512,
    min_frequency: int = 2,
):
    """Train a BERT WordPiece tokenizer on `texts` and save it (HF format) to `output_dir`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    # Build BERT's normalizer / pre-tokenizer / post-processor around an empty WordPiece model
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")

    # Count the corpus's words after BERT's normalisation and pre-tokenization
    word_counts: Counter[str] = Counter()
    for text in _non_empty(texts):
        normalized = tokenizer.normalizer.normalize_str(text)
        word_counts.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized))
    if not word_counts:
        raise UserError("tokenizer training saw no text: the corpus is empty")

    # Learn the vocabulary deterministically; special tokens come first so their ids are 0..4
    vocab = learn_wordpiece_vocabulary(word_counts, vocab_size, SPECIAL_TOKENS, min_frequency=min_frequency)
    tokenizer.model = models.WordPiece(vocab=vocab, unk_token=UNK_TOKEN, continuing_subword_prefix="##",
                                       max_input_chars_per_word=100)
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    cls_id, sep_id = tokenizer.token_to_id(CLS_TOKEN), tokenizer.token_to_id(SEP_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0",
        pair=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0 $B:1 {SEP_TOKEN}:1",
        special_tokens=[(CLS_TOKEN, cls_id), (SEP_TOKEN, sep_id)],
    )

    # Wrap as a transformers fast tokenizer and save
    fast = BertTokenizerFast(
        tokenizer_object=tokenizer,
        do_lower_case=lowercase,
        unk_token=UNK_TOKEN,
        sep_token=SEP_TOKEN,
        pad_token=PAD_TOKEN,
        cls_token=CLS_TOKEN,
        mask_token=MASK_TOKEN,
        model_max_length=model_max_length,
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(output_dir)
    return fast


def load_tokenizer(folder: str | Path):
    """Load a saved tokenizer folder, checking it has every BERT special token."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.is_fast:
        raise UserError(f"{folder}: bertforge needs a fast (Rust) tokenizer with a tokenizer.json")
    missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        raise UserError(f"{folder}: tokenizer lacks BERT special tokens {missing}")
    return tokenizer


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text and text.strip():
            yield text
