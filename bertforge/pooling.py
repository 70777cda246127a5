"""Sentence pooling and the near-tie rule: the references every stage compares served answers with.

The served graphs pool inside ONNX (export/graphs.py); this is the PyTorch/NumPy side that export's
gate, `serve.verify` and bench's baselines compute, written once so they cannot drift apart.
"""

from __future__ import annotations

from typing import Any

# sentence-transformers' pooling modes (its Pooling module); a model may combine several, concatenated in its order
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# fill-mask: a served top-1 that differs from PyTorch's still agrees when PyTorch rates it within this fraction
# (relative) of its own top-1 probability. The export gate, `serve.verify` and bench all use it.
TIE_MARGIN = 0.1


def pool(hidden: Any, attention_mask: Any, mode: str = "mean") -> Any:
    """bertforge's pooling of a plain folder's last hidden state (B, T, H) into (B, H): `cls` or `mean`.

    Works on PyTorch tensors and NumPy arrays alike; a sentence-transformers folder is compared with its
    own `encode` instead (export/author_reference.py), which applies whatever modes it declares."""
    if mode == "cls":
        return hidden[:, 0]
    if mode != "mean":
        raise ValueError(f"bertforge pools plain folders with 'mean' or 'cls', not {mode!r}")
    weights = attention_mask[..., None]
    weights = weights.astype(hidden.dtype) if hasattr(weights, "astype") else weights.to(hidden.dtype)
    counts = weights.sum(1)
    counts = counts.clip(min=1e-9) if hasattr(counts, "clip") else counts
    return (hidden * weights).sum(1) / counts


def tie_gap(reference_probs: Any, reference_top1: Any, chosen: Any) -> Any:
    """How much less likely, relative to its own top-1, PyTorch rates `chosen`: 0 = a perfect tie.

    `reference_probs` (M, V) or (V,), the top-1 and chosen ids (M,) or scalars; NumPy or PyTorch."""
    best = reference_probs[..., reference_top1] if reference_probs.ndim == 1 else \
        reference_probs[range(len(reference_top1)), reference_top1]
    picked = reference_probs[..., chosen] if reference_probs.ndim == 1 else \
        reference_probs[range(len(chosen)), chosen]
    return (best - picked) / (best.clip(min=1e-12) if hasattr(best, "clip") else max(float(best), 1e-12))


def is_near_tie(gap: Any, margin: float = TIE_MARGIN) -> Any:
    """The near-tie rule: a different top-1 agrees when PyTorch rates it within `margin` of its own top-1."""
    return gap <= margin
