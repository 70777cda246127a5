"""A tiny sentence-transformers SparseEncoder folder, built locally as SPLADE-v3 and OpenSearch's sparse encoders
ship: `modules.json` naming `MLMTransformer` and `SpladePooling`, the masked-LM's weights and tokenizer at the root."""

from __future__ import annotations

from pathlib import Path


def build_sparse_encoder(folder: Path, mlm_dir: Path, pooling_strategy: str = "max", activation: str = "relu",
                         max_seq_length: int | None = None) -> Path:
    """Save `mlm_dir` (a *ForMaskedLM folder) wrapped as SparseEncoder([MLMTransformer, SpladePooling]) in `folder`."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    transformer = MLMTransformer(str(mlm_dir), max_seq_length=max_seq_length)  # logs its deprecation: as shipped
    pooling = SpladePooling(pooling_strategy=pooling_strategy, activation_function=activation)
    SparseEncoder(modules=[transformer, pooling], device="cpu").save(str(folder))
    return Path(folder)
