"""WordPiece tokenizer: train one on a corpus, or reuse an existing folder.

The result is always a `transformers.BertTokenizerFast` saved in HF format, so
`AutoTokenizer.from_pretrained(folder)` loads it and every stage sees the same
special tokens (bertforge.contract).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from bertforge.contract import CLS_TOKEN, MASK_TOKEN, PAD_TOKEN, SEP_TOKEN, SPECIAL_TOKENS, UNK_TOKEN


def train_wordpiece_tokenizer(
    texts: Iterable[str],
    output_dir: str | Path,
    vocab_size: int = 16384,
    lowercase: bool = True,
    model_max_length: int = 512,
    min_frequency: int = 2,
):
    """Train a BERT WordPiece tokenizer on `texts` and save it (HF format) to `output_dir`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    # Build BERT's normalizer / pre-tokenizer / post-processor around an empty WordPiece model
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")

    # Learn the vocabulary; special tokens come first so their ids are 0..4
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train_from_iterator(_non_empty(texts), trainer=trainer)
    if tokenizer.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise ValueError("tokenizer training saw no text: the corpus is empty")
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
        raise ValueError(f"{folder}: bertforge needs a fast (Rust) tokenizer with a tokenizer.json")
    missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"{folder}: tokenizer lacks BERT special tokens {missing}")
    return tokenizer


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text and text.strip():
            yield text
