"""The parity gate: every exported variant against the PyTorch fp32 model, on fresh inputs.

Inputs are random token ids (several batch sizes and lengths, ragged rows so padding is exercised)
and real held-out text (tokenized, ~15% of tokens replaced by [MASK]). The reference is computed
by PyTorch from the checkpoint, pooled/softmaxed by independent PyTorch code, never by the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertforge import contract

RANDOM_SHAPES = ((1, 8), (3, 17), (8, 48))  # (batch, longest length); other rows are shorter (padding)
MASK_RATE = 0.15


@dataclass
class ParityBatch:
    source: str  # "random" or "text"
    feeds: dict[str, np.ndarray]  # encoder inputs + mask_positions


def make_parity_batches(tokenizer, texts: list[str], max_length: int, seed: int, batch_size: int = 8) -> list[ParityBatch]:
    """Random-id batches of several shapes plus batches of real text, all with padding and [MASK]s."""
    rng = np.random.default_rng(seed)
    special = {tokenizer.convert_tokens_to_ids(token) for token in contract.SPECIAL_TOKENS}
    ordinary = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
    cls_id, sep_id, pad_id = (tokenizer.convert_tokens_to_ids(t) for t in (contract.CLS_TOKEN, contract.SEP_TOKEN,
                                                                           contract.PAD_TOKEN))
    batches = []
    # Random ids: [CLS] random... [SEP] [PAD]..., ragged lengths
    for batch, longest in RANDOM_SHAPES:
        longest = min(longest, max_length)
        lengths = [longest] + list(rng.integers(3, longest + 1, size=batch - 1))
        rows = [[cls_id, *rng.choice(ordinary, size=length - 2), sep_id] for length in lengths]
        batches.append(ParityBatch("random", _pad_and_mask(rows, pad_id, tokenizer.mask_token_id, rng)))
    # Real held-out text, batched as the server would (pad to the longest of the batch)
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length)["input_ids"]
        batches.append(ParityBatch("text", _pad_and_mask(encoded, pad_id, tokenizer.mask_token_id, rng)))
    return batches


def reference_outputs(torch_model, batches: list[ParityBatch], task: str, pooling: str, normalize: bool,
                      top_k: int) -> list[dict[str, np.ndarray]]:
    """PyTorch fp32 outputs for each batch: top-k probabilities/ids at the masks, or pooled embeddings."""
    import torch

    results = []
    with torch.no_grad():
        for batch in batches:
            inputs = {name: torch.from_numpy(batch.feeds[name]) for name in contract.ONNX_ENCODER_INPUTS}
            if task == "fill_mask":
                logits = torch_model(**inputs).logits  # (B, T, V)
                picked = logits.reshape(-1, logits.shape[-1])[torch.from_numpy(batch.feeds[contract.ONNX_MASK_POSITIONS])]
                probs, ids = torch.softmax(picked, dim=-1).topk(top_k, dim=-1)  # (M, K)
                results.append({contract.ONNX_TOP_IDS: ids.numpy(), contract.ONNX_TOP_PROBS: probs.numpy()})
            else:
                encoder = getattr(torch_model, "bert", torch_model)
                hidden = encoder(**inputs).last_hidden_state  # (B, T, H)
                if pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    weights = inputs["attention_mask"].unsqueeze(-1).float()
                    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                results.append({contract.ONNX_SENTENCE_EMBEDDING: pooled.numpy()})
    return results


def compare(session, batches: list[ParityBatch], references: list[dict], task: str, graph: str = "served") -> dict:
    """Run the variant on every batch and summarise how far it is from the reference.

    graph="served": the contract graphs (top_ids/top_probs, sentence_embedding); graph="plain": Optimum-style
    graphs (`logits` [B, T, V] or `last_hidden_state`), reduced here to the same top-k / mean-pooled form."""
    top1_hits, masks, max_abs, cosines = 0, 0, 0.0, []
    by_source: dict[str, list[float]] = {}
    input_names = {i.name for i in session.get_inputs()}
    for batch, reference in zip(batches, references):
        feeds = {name: value for name, value in batch.feeds.items() if name in input_names}
        if task == "fill_mask":
            if graph == "plain":
                top_ids, top_probs = _top_k_from_logits(session.run(["logits"], feeds)[0], batch.feeds,
                                                        reference[contract.ONNX_TOP_IDS].shape[1])
            else:
                top_ids, top_probs = session.run([contract.ONNX_TOP_IDS, contract.ONNX_TOP_PROBS], feeds)
            hits = top_ids[:, 0] == reference[contract.ONNX_TOP_IDS][:, 0]
            top1_hits += int(hits.sum())
            masks += len(hits)
            by_source.setdefault(batch.source, []).extend(hits.astype(float).tolist())
            max_abs = max(max_abs, float(np.abs(top_probs - reference[contract.ONNX_TOP_PROBS]).max(initial=0.0)))
        else:
            if graph == "plain":
                hidden = session.run(["last_hidden_state"], feeds)[0]  # (B, T, H)
                weights = batch.feeds["attention_mask"][..., None].astype(np.float32)
                embedding = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
            else:
                (embedding,) = session.run([contract.ONNX_SENTENCE_EMBEDDING], feeds)
            expected = reference[contract.ONNX_SENTENCE_EMBEDDING]
            max_abs = max(max_abs, float(np.abs(embedding - expected).max()))
            cosine = (embedding * expected).sum(-1) / (np.linalg.norm(embedding, axis=-1) * np.linalg.norm(expected, axis=-1) + 1e-12)
            cosines.extend(cosine.tolist())
            by_source.setdefault(batch.source, []).extend(cosine.tolist())
    metrics: dict = {"max_abs_diff": max_abs, "batches": len(batches)}
    if task == "fill_mask":
        metrics.update(top1_agreement=top1_hits / max(masks, 1), masked_tokens=masks,
                       top1_by_source={source: float(np.mean(v)) for source, v in by_source.items()})
    else:
        metrics.update(min_cosine=float(min(cosines)), mean_cosine=float(np.mean(cosines)), texts=len(cosines),
                       min_cosine_by_source={source: float(min(v)) for source, v in by_source.items()})
    return metrics


def gate(metrics: dict, name: str, precision: str, gates, task: str | None = None) -> list[str]:
    """The gate's verdict: an empty list when the variant passes, else one line per missed threshold."""
    task = task or name
    checks: list[tuple[str, float, float, bool]] = []  # (name, value, threshold, higher_is_better)
    if precision == "fp32":
        checks.append(("max_abs_diff", metrics["max_abs_diff"], gates.fp32_max_abs_diff, False))
        if task == "fill_mask":
            checks.append(("top1_agreement", metrics["top1_agreement"], 1.0, True))
    else:
        family = "int8" if precision.startswith("int8") else "fp16"
        if task == "fill_mask":
            checks.append(("top1_agreement", metrics["top1_agreement"], getattr(gates, f"{family}_top1"), True))
        else:
            checks.append(("min_cosine", metrics["min_cosine"], getattr(gates, f"{family}_cosine"), True))
    failures = []
    label = name
    for metric, value, threshold, higher_is_better in checks:
        passed = value >= threshold if higher_is_better else value <= threshold
        if not passed:
            relation = ">=" if higher_is_better else "<="
            failures.append(f"{label} {precision}: {metric} = {value:.6g}, needs {relation} {threshold:g} "
                            f"(missed by {abs(value - threshold):.3g})")
    return failures


def _top_k_from_logits(logits: np.ndarray, feeds: dict, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    picked = logits.reshape(-1, logits.shape[-1])[feeds[contract.ONNX_MASK_POSITIONS]].astype(np.float64)  # (M, V)
    probs = np.exp(picked - picked.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    return ids, np.take_along_axis(probs, ids, -1).astype(np.float32)


def _pad_and_mask(rows: list[list[int]], pad_id: int, mask_id: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Pad rows to the longest, replace ~15% of the inner tokens of every row by [MASK] (at least one)."""
    longest = max(len(row) for row in rows)
    input_ids = np.full((len(rows), longest), pad_id, dtype=np.int64)  # (B, T)
    attention_mask = np.zeros_like(input_ids)
    for index, row in enumerate(rows):
        row = list(row)
        inner = np.arange(1, len(row) - 1)
        if len(inner):
            count = max(1, int(round(MASK_RATE * len(inner))))
            for position in rng.choice(inner, size=count, replace=False):
                row[position] = mask_id
        input_ids[index, : len(row)] = row
        attention_mask[index, : len(row)] = 1
    positions = np.flatnonzero(input_ids == mask_id).astype(np.int64)  # (M,) flat b*T+t
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids),
            contract.ONNX_MASK_POSITIONS: positions}
