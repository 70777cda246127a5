"""The sparse MLM head equals the dense reference; LAMB and the LR schedule behave."""

import math

import pytest
import torch

from train.config import ModelConfig, OptimConfig
from train.data import IGNORE_INDEX
from train.model import MaskedLMObjective, build_model, flops_per_token
from train.optim import Lamb, build_optimizer, lr_at


def random_batch(vocab: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(5, vocab, (4, 24), generator=generator)
    labels = torch.full_like(inputs, IGNORE_INDEX)
    chosen = torch.rand(inputs.shape, generator=generator) < 0.15
    labels[chosen] = torch.randint(5, vocab, (int(chosen.sum()),), generator=generator)
    return inputs, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_head_matches_dense_head_loss_and_gradients(seed):
    config = ModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = build_model(config, vocab_size=300, pad_token_id=0)
    inputs, labels = random_batch(300, seed)
    results = []
    for sparse in (True, False):
        model.zero_grad()
        loss, count, correct = MaskedLMObjective(model, sparse_head=sparse)(inputs, labels)
        loss.backward()
        results.append((loss.detach(), count, correct, [p.grad.clone() for p in model.parameters()]))
    (sparse_loss, sparse_count, sparse_correct, sparse_grads), (dense_loss, dense_count, dense_correct, dense_grads) = results
    assert sparse_count == dense_count == (labels != IGNORE_INDEX).sum()
    assert sparse_correct == dense_correct
    torch.testing.assert_close(sparse_loss, dense_loss, rtol=1e-5, atol=1e-5)
    for sparse_grad, dense_grad in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-4, atol=1e-6)
    # and the dense loss is what transformers computes itself
    reference = model(input_ids=inputs, labels=labels).loss
    torch.testing.assert_close(dense_loss / dense_count, reference, rtol=1e-5, atol=1e-6)


def test_objective_state_dict_is_plain_bert_for_masked_lm():
    model = build_model(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=64), 100, 0)
    keys = set(MaskedLMObjective(model).mlm.state_dict())
    assert keys == set(model.state_dict())


def test_weight_decay_groups_exclude_bias_and_layernorm():
    model = build_model(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=64), 100, 0)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])


def test_lamb_reduces_a_quadratic():
    weight = torch.nn.Parameter(torch.full((4, 4), 3.0))
    optimizer = Lamb([weight], lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        (weight**2).sum().backward()
        optimizer.step()
    assert weight.abs().max() < 0.5


def test_lr_schedule_warmup_then_decay():
    config = OptimConfig(lr=1.0, warmup_steps=10, schedule="linear")
    assert lr_at(0, 100, config) == pytest.approx(0.1)
    assert lr_at(9, 100, config) == pytest.approx(1.0)
    assert lr_at(55, 100, config) == pytest.approx(0.5)
    assert lr_at(100, 100, config) == pytest.approx(0.0)
    cosine = OptimConfig(lr=1.0, warmup_steps=0, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(50, 100, cosine) == pytest.approx(0.1 + 0.9 * 0.5)


def test_flops_per_token_counts_the_sparse_head_share():
    model = build_model(ModelConfig(), vocab_size=16384, pad_token_id=0)
    dense = flops_per_token(model, 128, 0.15, sparse_head=False)
    sparse = flops_per_token(model, 128, 0.15, sparse_head=True)
    head = 6 * (256 * 256 + 256 * 16384)
    assert math.isclose(dense - sparse, 0.85 * head, rel_tol=1e-9)
