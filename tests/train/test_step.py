"""train/step.py: TrainState is what trainer_state.pt holds (old checkpoints included); train_step normalises over
all micro-batches, steps, and skips a non-finite step without touching the weights."""

import math

import pytest
import torch

from train.config import load_train_config
from train.data import IGNORE_INDEX
from train.model import build_model
from train.runtime import TrainingRuntime
from train.step import TrainingParts, TrainState, train_step

CPU = TrainingRuntime(device=torch.device("cpu"), precision="fp32")


def test_train_state_is_saved_with_the_keys_of_old_checkpoints():
    state = TrainState(step=40, tokens_seen=10240, bad_steps=1, elapsed_s=12.5, precision="bf16")
    state.consecutive_bad_steps = 1
    saved = state.to_checkpoint()
    # trainer_state.pt as written before TrainState (checkpoint.py adds "rng"): resumable both ways
    assert list(saved) == ["step", "tokens_seen", "bad_steps", "elapsed_s", "precision"]
    restored = TrainState.from_checkpoint(saved, precision="fp32")
    assert restored == state and restored.consecutive_bad_steps == 0  # this process's count starts afresh
    # a checkpoint from before the precision was recorded runs in the precision it is given
    older = {key: value for key, value in saved.items() if key != "precision"}
    assert TrainState.from_checkpoint(older, precision="fp32").precision == "fp32"


def test_end_step_counts_skipped_steps_and_resets_the_run_of_bad_ones():
    state = TrainState()
    for finite in (True, False, False, True, False):
        state.end_step(finite, tokens=256)
    assert (state.step, state.tokens_seen, state.bad_steps, state.consecutive_bad_steps) == (5, 1280, 3, 1)


@pytest.fixture
def parts(tiny_config_file):
    config = load_train_config(tiny_config_file, ["model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0",
                                                  "train.precision=fp32", "train.device=cpu"])
    torch.manual_seed(0)
    return TrainingParts.build(config, build_model(config.model, vocab_size=200, pad_token_id=0), CPU)


def masked_batch(seed: int, rows: int = 4):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(5, 200, (rows, 32), generator=generator)  # (B, T)
    labels = torch.full_like(inputs, IGNORE_INDEX)
    chosen = torch.rand(inputs.shape, generator=generator) < 0.15
    labels[chosen] = inputs[chosen]
    return inputs, labels


def test_a_step_sets_the_lr_updates_the_weights_and_clears_the_gradients(parts):
    before = [p.detach().clone() for p in parts.mlm.parameters()]
    metrics = train_step(parts, [masked_batch(0)], lr=1e-3, grad_clip=1.0, runtime=CPU)
    assert metrics.finite and abs(metrics.loss - math.log(200)) < 1.0 and 0 <= metrics.accuracy <= 1
    assert metrics.grad_norm > 0
    assert all(group["lr"] == 1e-3 for group in parts.optimizer.param_groups)
    assert any(not torch.equal(b, p) for b, p in zip(before, parts.mlm.parameters()))
    assert all(p.grad is None for p in parts.mlm.parameters())


def test_micro_batches_are_normalised_over_all_their_masked_tokens(parts):
    """Two micro-batches accumulate to the same loss and gradient norm as one batch of both (no dropout)."""
    first, second = masked_batch(1), masked_batch(2)
    whole = (torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]))
    state = {k: v.clone() for k, v in parts.mlm.state_dict().items()}
    together = train_step(parts, [whole], lr=0.0, grad_clip=0.0, runtime=CPU)
    parts.mlm.load_state_dict(state)
    accumulated = train_step(parts, [first, second], lr=0.0, grad_clip=0.0, runtime=CPU)
    assert accumulated.loss == pytest.approx(together.loss, rel=1e-5)
    assert accumulated.accuracy == pytest.approx(together.accuracy, rel=1e-6)
    assert accumulated.grad_norm == pytest.approx(together.grad_norm, rel=1e-4)


def test_a_non_finite_step_is_skipped_without_touching_the_weights(parts):
    with torch.no_grad():
        parts.mlm.bert.embeddings.word_embeddings.weight[7] = float("nan")
    inputs, labels = masked_batch(3)
    inputs[0, 0] = 7
    before = [p.detach().clone() for p in parts.mlm.parameters()]
    metrics = train_step(parts, [(inputs, labels)], lr=1e-3, grad_clip=1.0, runtime=CPU)
    assert not metrics.finite
    after = list(parts.mlm.parameters())
    assert all(torch.equal(b.isnan(), a.isnan()) and torch.equal(b.nan_to_num(), a.nan_to_num())
               for b, a in zip(before, after))
    assert all(p.grad is None for p in after)
