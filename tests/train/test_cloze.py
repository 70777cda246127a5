"""The whole-word cloze probe (train/cloze.py): items mask every piece of one word of letters; an oracle scores
1.0, a model that always answers one token scores the share of items that token answers."""

from types import SimpleNamespace

import pytest
import torch

from tests.train.test_probe import review_wheel  # noqa: F401  (the stand-in review wheel fixture)
from train.cloze import cloze_items, cloze_probe
from train.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def test_items_mask_every_piece_of_one_word_of_letters(tokenizer):
    texts = ["The committee reviewed the proposal, 42 times!", "approved", "?! 12"]
    items = cloze_items(tokenizer, texts)
    assert len(items) == 2  # "?! 12" has no word of letters
    for (ids, answers), text in zip(items, texts):
        original = tokenizer(text)["input_ids"]
        assert [position for position, token in enumerate(ids) if token == tokenizer.mask_token_id] == sorted(answers)
        assert all(original[position] == piece for position, piece in answers.items())
        word = tokenizer.decode([answers[position] for position in sorted(answers)]).replace(" ", "")
        assert word.isalpha() and word.lower() in text.lower()
    assert cloze_items(tokenizer, texts) == items  # the same questions every time


class Oracle(torch.nn.Module):
    """Answers each item with its own hidden pieces (or always `token`)."""

    def __init__(self, items, vocab_size: int, token: int | None = None):
        super().__init__()
        self.answers = {tuple(ids): answers for ids, answers in items}
        self.vocab_size, self.token = vocab_size, token
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for row, ids in enumerate(input_ids.tolist()):
            answers = self.answers[tuple(ids[: int(attention_mask[row].sum())])]
            for position, piece in answers.items():
                logits[row, position, piece if self.token is None else self.token] = 1.0
        return SimpleNamespace(logits=logits)


def test_an_oracle_scores_one_and_a_constant_answer_its_share(tokenizer, review_wheel):  # noqa: F811
    from train.cloze import CLOZE_SEED
    from train.reviews import sentiment_reviews

    items = cloze_items(tokenizer, [row["text"] for row in sentiment_reviews(40, seed=CLOZE_SEED)])
    figures = cloze_probe(Oracle(items, len(tokenizer)), tokenizer, torch.device("cpu"), count=40, batch_size=7)
    assert figures["cloze_top1"] == 1.0 and figures["cloze_items"] == len(items) == 40
    the = tokenizer.convert_tokens_to_ids("film")
    share = sum(list(answers.values()) == [the] for _, answers in items) / len(items)
    constant = cloze_probe(Oracle(items, len(tokenizer), token=the), tokenizer, torch.device("cpu"), count=40)
    assert constant["cloze_top1"] == pytest.approx(share) and share < 0.5
    assert constant["cloze_stderr"] == pytest.approx((share * (1 - share) / 40) ** 0.5)
