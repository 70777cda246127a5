"""bertforge/pooling.py: one pooling and one near-tie rule for NumPy and PyTorch alike."""

import numpy as np
import pytest

from bertforge.pooling import TIE_MARGIN, is_near_tie, pool, tie_gap

# two texts of 3 and 2 real tokens, hidden size 2, padded to 4 tokens (padding rows hold junk)
HIDDEN = np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [100.0, 100.0]],
                   [[-1.0, 0.0], [1.0, 2.0], [50.0, -50.0], [7.0, 7.0]]], dtype=np.float32)  # (B, T, H)
MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=np.int64)  # (B, T)
BY_HAND = {"mean": [[(1 + 3 + 5) / 3, (2 + 4 + 6) / 3], [(-1 + 1) / 2, (0 + 2) / 2]],
           "cls": [[1.0, 2.0], [-1.0, 0.0]]}


@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_pool_on_numpy_and_pytorch_equals_the_hand_computation(mode):
    import torch

    by_numpy = pool(HIDDEN, MASK, mode)
    by_torch = pool(torch.from_numpy(HIDDEN), torch.from_numpy(MASK), mode)
    assert isinstance(by_numpy, np.ndarray) and isinstance(by_torch, torch.Tensor)
    assert by_numpy.shape == by_torch.shape == (2, 2)
    np.testing.assert_allclose(by_numpy, BY_HAND[mode], rtol=1e-6)
    np.testing.assert_allclose(by_torch.numpy(), BY_HAND[mode], rtol=1e-6)
    assert by_torch.dtype == torch.float32 and by_numpy.dtype == np.float32  # the mask does not promote the dtype


def test_mean_pooling_of_an_all_padding_row_is_zero_not_nan():
    import torch

    empty = np.zeros_like(MASK)
    assert not np.isnan(pool(HIDDEN, empty)).any()
    assert not torch.isnan(pool(torch.from_numpy(HIDDEN), torch.from_numpy(empty))).any()


def test_pool_refuses_a_mode_it_does_not_compute():
    with pytest.raises(ValueError, match="'mean' or 'cls'"):
        pool(HIDDEN, MASK, "max")


# PyTorch's probabilities over 4 tokens for two masks; its top-1 is token 0 in both
PROBS = np.array([[0.50, 0.46, 0.04, 0.00],    # token 1 is 8% below the top-1: a near-tie
                  [0.50, 0.44, 0.06, 0.00]])   # token 1 is 12% below: not one


def test_tie_gap_is_relative_to_the_reference_top1_on_numpy_and_pytorch():
    import torch

    top1, chosen = np.array([0, 0]), np.array([1, 1])
    expected = [0.04 / 0.5, 0.06 / 0.5]
    np.testing.assert_allclose(tie_gap(PROBS, top1, chosen), expected)
    np.testing.assert_allclose(tie_gap(torch.from_numpy(PROBS), torch.from_numpy(top1), torch.from_numpy(chosen)).numpy(),
                               expected)
    assert tie_gap(PROBS[0], 0, 0) == 0.0  # the top-1 itself: a perfect tie
    assert tie_gap(PROBS[0], 0, 1) == pytest.approx(0.08)  # one mask (V,) with scalar ids
    assert float(tie_gap(torch.from_numpy(PROBS[1]), 0, 1)) == pytest.approx(0.12)


def test_the_near_tie_rule_flips_at_the_margin():
    gaps = tie_gap(PROBS, np.array([0, 0]), np.array([1, 1]))
    assert TIE_MARGIN == 0.1
    assert is_near_tie(gaps).tolist() == [True, False]  # 8% agrees, 12% does not
    assert is_near_tie(TIE_MARGIN) and not is_near_tie(TIE_MARGIN + 1e-9)  # the margin itself still agrees
    assert is_near_tie(0.12, margin=0.15) and not is_near_tie(0.08, margin=0.05)  # another gate's margin
    assert not is_near_tie(tie_gap(PROBS[0], 0, 3))  # a token PyTorch rates at zero never ties


def test_a_zero_top1_probability_does_not_divide_by_zero():
    assert tie_gap(np.zeros(4), 0, 1) == 0.0


def test_serve_verify_judges_fill_mask_answers_by_the_one_near_tie_rule(tiny_bert_dir):
    """serve/verify.py passes a served token exactly when PyTorch rates it within TIE_MARGIN of its top-1."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from serve.verify import check_fill_mask

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    text = f"the house sat late on the {tokenizer.mask_token} of the bill"
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        probs = model(**encoded).logits[0].softmax(-1)  # (T, V)
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero())
    reference = probs[position]
    ranked = reference.argsort(descending=True).tolist()
    chosen = ranked[::5]  # from PyTorch's top-1 down to tokens it rates far below
    answers = [{"text": text, "masks": [[{"token_id": token, "token": tokenizer.convert_ids_to_tokens(token),
                                          "score": float(reference[token])}]]} for token in chosen]
    passed = [line.startswith("PASS") for line in check_fill_mask(tiny_bert_dir, answers)]
    by_hand = [float(reference[token]) >= (1 - TIE_MARGIN) * float(reference[ranked[0]]) for token in chosen]
    assert passed == by_hand
    assert True in passed and False in passed  # both sides of the margin were checked


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_serve_verify_pools_a_plain_folder_as_asked(tiny_bert_dir, pooling):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from serve.verify import check_embed

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    texts = ["the house sat late", "members asked the minister about the bill"]
    with torch.no_grad():
        hidden = [model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0] for text in texts]  # (T, H)
    vectors = {"mean": [state.mean(0) for state in hidden], "cls": [state[0] for state in hidden]}  # by hand
    other = "cls" if pooling == "mean" else "mean"

    def verdicts(kind: str) -> list[bool]:
        answers = [{"text": text, "embedding": vector.tolist()} for text, vector in zip(texts, vectors[kind])]
        return [line.startswith("PASS") for line in check_embed(tiny_bert_dir, answers, pooling)]

    assert verdicts(pooling) == [True, True]
    assert verdicts(other) == [False, False]
