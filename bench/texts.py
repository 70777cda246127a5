"""Request texts for the load generator, cut from held-out text with a realistic length mix.

Held-out text = the demo corpus' House of Commons speeches (never seen in training). Each request is
a run of whole sentences whose word count is drawn from a log-normal around `median_words`, clipped to
[min_words, max_words] (a sentence longer than its draw is cut); `length = "fixed"` gives exactly
`fixed_words` words instead. For fill_mask, `masks_per_text` words become the served model's own mask
token ([MASK] for BERT, <mask> for the RoBERTa family), always within the model's maximum length so no
request is rejected for a truncated-away mask.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from bench.config import TextsConfig
from bertforge.errors import UserError
from bertforge.tasks import FILL_MASK

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")
MASKABLE = re.compile(r"^([A-Za-z]{2,})([.,;:!?]*)$")


@dataclass(frozen=True)
class RequestTexts:
    texts: list[str]
    tokens: list[int]  # tokens per text as the server sees them ([CLS] ... [SEP], truncated at max_length)
    source: str

    def summary(self) -> dict:
        words = sorted(len(text.split()) for text in self.texts)
        tokens = sorted(self.tokens)
        middle = len(words) // 2
        return {"count": len(self.texts), "source": self.source, "words_min": words[0], "words_median": words[middle],
                "words_max": words[-1], "tokens_median": tokens[middle], "tokens_max": tokens[-1],
                "tokens_mean": sum(tokens) / len(tokens)}


def build_request_texts(config: TextsConfig, task: str, tokenizer_file: Path, max_length: int) -> RequestTexts:
    """`config.count` texts for `task` plus their token counts as the server tokenizes them."""
    from bertforge.served_model import load_served_tokenizer

    source, documents = load_documents(config.source)
    rng = random.Random(config.seed)
    sentences = [sentence for document in documents for sentence in split_sentences(document)]
    if not sentences:
        raise UserError(f"{source} holds no text; point texts.source at a .jsonl or .txt file with prose")
    # the server's own tokenizer setup: sentence-transformers folders ship tokenizer.json with fixed padding
    # to 128, which made every text "128 tokens" with a bare Tokenizer.from_file (issue 12)
    tokenizer = load_served_tokenizer(tokenizer_file, max_length)
    mask_token = served_mask_token(tokenizer_file) if task == FILL_MASK else None
    mask_id = tokenizer.token_to_id(mask_token) if mask_token else None
    if mask_token and mask_id is None:
        raise UserError(f"{tokenizer_file} has no id for the mask token {mask_token!r} that the files beside it "
                        "name; fill_mask texts need it: re-export the model, which copies its whole tokenizer folder")
    texts: list[str] = []
    tokens: list[int] = []
    start = 0
    # Walk the sentence stream; each text starts where the previous one ended (wrapping around)
    for _ in range(config.count * 20):
        if len(texts) == config.count:
            break
        words, start = _take_words(sentences, start, _draw_length(config, rng))
        if task == FILL_MASK:
            words = mask_words(words, config.masks_per_text, rng, max_position=max_length // 2, mask_token=mask_token)
            if words is None:
                continue
        text = " ".join(words)
        encoding = tokenizer.encode(text)
        if task == FILL_MASK and mask_id not in encoding.ids:
            continue  # the mask was truncated away (very long words); draw another text
        texts.append(text)
        tokens.append(len(encoding.ids))
    if len(texts) < config.count:
        raise UserError(f"could only cut {len(texts)} of {config.count} texts from {source}; lower texts.count")
    return RequestTexts(texts, tokens, source)


def load_documents(source: str) -> tuple[str, list[str]]:
    """("where from", documents): the demo held-out file, or a user .jsonl/.txt file."""
    if source == "demo":
        from train.corpus import build_demo_corpus

        path = build_demo_corpus().eval
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"texts.source {source} not found; use 'demo' or a .jsonl/.txt file")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        return str(path), [json.loads(line)["text"] for line in lines if line.strip()]
    return str(path), [line for line in lines if line.strip()]


def served_mask_token(tokenizer_file: Path) -> str:
    """The mask token of the served tokenizer whose `tokenizer.json` is `tokenizer_file`, as the server reads it
    from the files beside it ([MASK], <mask>, ...)."""
    from bertforge.served_model import special_tokens

    return special_tokens(Path(tokenizer_file).parent)["mask_token"]


def split_sentences(document: str) -> list[str]:
    return [sentence.strip() for sentence in SENTENCE_END.split(document) if sentence.strip()]


def mask_words(words: list[str], count: int, rng: random.Random, max_position: int, mask_token: str) -> list[str] | None:
    """Replace `count` alphabetic words (keeping their punctuation) by `mask_token`; None if there are too few."""
    candidates = [index for index, word in enumerate(words[:max_position]) if MASKABLE.match(word)]
    if len(candidates) < count:
        return None
    masked = list(words)
    for index in rng.sample(candidates, count):
        masked[index] = MASKABLE.sub(lambda match: mask_token + match.group(2), words[index])
    return masked


def _draw_length(config: TextsConfig, rng: random.Random) -> int:
    if config.length == "fixed":
        return config.fixed_words
    # log-normal around the median (sigma 0.8: most texts are a sentence or two, a tail of paragraphs)
    words = round(math.exp(rng.gauss(math.log(config.median_words), 0.8)))
    return min(max(words, config.min_words), config.max_words)


def _take_words(sentences: list[str], start: int, target: int) -> tuple[list[str], int]:
    """Whole sentences from `start` until `target` words; cut the last one to hit the target exactly."""
    words: list[str] = []
    index = start
    while len(words) < target:
        words += sentences[index % len(sentences)].split()
        index += 1
    return words[:target], index % len(sentences)
