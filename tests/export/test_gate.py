"""The parity gate's statistics: tie-aware agreement, which inputs judge which precision, enough masks."""

from __future__ import annotations

import numpy as np
import pytest

from bertforge import contract
from export.config import ParityGates
from export.parity import (
    GATE_PROBS_OUTPUT,
    PROBS_OUTPUT,
    ParityBatch,
    compare,
    gate,
    make_parity_inputs,
    wilson_interval,
)

VOCAB = 50


class FakeSession:
    """An ONNX Runtime-like session answering the fill-mask graph's outputs from fixed distributions."""

    def __init__(self, probs_by_batch: list[np.ndarray]):
        self._probs = iter(probs_by_batch)

    def get_inputs(self):
        return [type("Input", (), {"name": contract.ONNX_MASK_POSITIONS})()]

    def get_outputs(self):
        return [type("Output", (), {"name": name})() for name in (contract.ONNX_TOP_IDS, contract.ONNX_TOP_PROBS,
                                                                   GATE_PROBS_OUTPUT)]

    def run(self, names, feeds):
        probs = next(self._probs).astype(np.float32)
        ids = np.argsort(-probs, axis=-1, kind="stable")[:, :10]
        return [ids, np.take_along_axis(probs, ids, -1), probs]


def _reference(probs: np.ndarray) -> dict:
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :10]
    return {contract.ONNX_TOP_IDS: ids, contract.ONNX_TOP_PROBS: np.take_along_axis(probs, ids, -1).astype(np.float32),
            PROBS_OUTPUT: probs.astype(np.float16)}


def _distributions(masks: int, rng, top: float = 0.6) -> np.ndarray:
    """Confident distributions: token 0 gets `top`, the rest share the remainder."""
    probs = rng.dirichlet(np.ones(VOCAB), size=masks) * (1 - top)
    probs[:, 0] += top
    return probs


def _batch(source: str, masks: int) -> ParityBatch:
    return ParityBatch(source, {contract.ONNX_MASK_POSITIONS: np.arange(masks)})


def test_a_near_tie_does_not_count_but_a_clear_disagreement_does():
    rng = np.random.default_rng(0)
    reference = _distributions(2000, rng)
    reference[0, :2] = [0.40, 0.39]  # mask 0: a near-tie between tokens 0 and 1
    variant = reference.copy()
    variant[0, :2] = [0.39, 0.40]  # the variant swaps the near-tie...
    variant[1, :2] = [0.10, 0.60]  # ...and clearly disagrees on mask 1
    metrics = compare(FakeSession([variant]), [_batch("text", 2000)], [_reference(reference)], "fill_mask")
    text = metrics["by_source"]["text"]
    assert text["top1_agreement"] == pytest.approx(1 - 2 / 2000)
    assert text["tie_aware_agreement"] == pytest.approx(1 - 1 / 2000)  # only the clear disagreement counts
    assert text["disagreement_gaps"]["count"] == 2 and text["disagreement_gaps"]["max"] > 0.5
    assert text["top5_containment"] == 1.0 and text["mean_total_variation"] < 0.001
    low, high = text["tie_aware_interval"]
    assert low < text["tie_aware_agreement"] < high and high - low < 0.005  # 2,000 masks pin it down


def test_one_mask_cannot_flip_the_verdict_but_a_broken_variant_fails():
    rng = np.random.default_rng(1)
    gates = ParityGates()
    reference = _distributions(gates.min_masks, rng)
    near_threshold = reference.copy()
    wrong = int(round((1 - gates.int8_tie_aware) * gates.min_masks)) - 1  # just inside the threshold
    near_threshold[:wrong, :2] = near_threshold[:wrong, 1::-1]  # clear swaps (0.6 vs <0.4)
    for extra in (0, 1):  # one more clear disagreement moves agreement by 1/min_masks only
        variant = near_threshold.copy()
        variant[wrong:wrong + extra, :2] = variant[wrong:wrong + extra, 1::-1]
        metrics = compare(FakeSession([variant]), [_batch("text", gates.min_masks)], [_reference(reference)], "fill_mask")
        verdict = gate(metrics, "fill_mask", "int8", gates)
        assert not [line for line in verdict if "tie_aware" in line], verdict
    broken = rng.dirichlet(np.ones(VOCAB), size=gates.min_masks)  # unrelated distributions
    metrics = compare(FakeSession([broken]), [_batch("text", gates.min_masks)], [_reference(reference)], "fill_mask")
    failures = gate(metrics, "fill_mask", "int8", gates)
    assert len(failures) == 3 and all("missed by" in line and "2000 masks" in line for line in failures)


def test_lossy_variants_are_judged_on_text_and_fp32_on_everything():
    rng = np.random.default_rng(2)
    reference_text, reference_random = _distributions(2000, rng), _distributions(100, rng)
    garbage = rng.dirichlet(np.ones(VOCAB), size=100)  # the variant is far off on random ids only
    batches = [_batch("random", 100), _batch("text", 2000)]
    references = [_reference(reference_random), _reference(reference_text)]
    metrics = compare(FakeSession([garbage, reference_text]), batches, references, "fill_mask")
    assert metrics["by_source"]["random"]["top5_containment"] < 0.5  # reported...
    assert gate(metrics, "fill_mask", "int8", ParityGates()) == []  # ...not judged for int8
    fp32 = gate(metrics, "fill_mask", "fp32", ParityGates())
    assert fp32 and all("all inputs" in line for line in fp32)


def test_text_is_masked_in_rounds_until_the_gate_has_enough_masks(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from export.texts import built_in_texts

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    inputs = make_parity_inputs(tokenizer, built_in_texts(), max_length=64, seed=0, min_masks=2000)
    text = [batch for batch in inputs.fill_mask if batch.source == "text"]
    masks = sum(len(batch.feeds[contract.ONNX_MASK_POSITIONS]) for batch in text)
    assert masks >= 2000
    assert all(batch.feeds["input_ids"].shape[1] <= 64 for batch in inputs.fill_mask + inputs.embed)
    # the embedding batches are the same windows without [MASK]s, every window once
    assert not any((batch.feeds["input_ids"] == tokenizer.mask_token_id).any() for batch in inputs.embed
                   if batch.source == "text")
    assert {batch.source for batch in inputs.embed} == {"random", "text"}


def test_wilson_interval_is_sane():
    low, high = wilson_interval(1990, 2000)
    assert 0.98 < low < 0.995 < high < 1.0
    assert wilson_interval(2000, 2000)[1] == pytest.approx(1.0)
