"""What one ONNX run of a served graph costs on the exporting CPU: a fixed part and a part per padded token.

    cost = measure_run_cost(onnx_path)   # -> serve.batch_plan.RunCost, written to serving.json

The server splits each merged batch into the runs of least estimated time from these two figures
(serve/batch_plan.py). They are a property of the graph and the CPU, so they are measured, not assumed: the
fastest of repeated runs of a small and a large padded batch, alternating (other processes only ever add time),
and the line through the two points. Measured with the session settings the server uses (ONNX Runtime's default
threads); serving on another CPU keeps working, with a split chosen for the exporting one.
"""

from __future__ import annotations

import time
from pathlib import Path

from bertforge import contract
from bertforge.served_model import RunCost

SMALL = (1, 16)  # texts x tokens: mostly the fixed part
LARGE = (16, 64)  # 1,024 padded tokens: mostly the per-token part


def measure_run_cost(onnx_path: Path, max_length: int, seconds: float = 2.0, min_rounds: int = 8) -> RunCost:
    """The fixed milliseconds and the microseconds per padded token of one run of `onnx_path`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = {node.name for node in session.get_inputs()}
    shapes = [SMALL, (LARGE[0], min(LARGE[1], max_length))]
    feeds = [_feeds(names, texts, tokens) for texts, tokens in shapes]
    for feed in feeds:  # warm-up: first runs allocate
        session.run(None, feed)
    fastest = [float("inf")] * len(feeds)
    rounds, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end or rounds < min_rounds:
        for index, feed in enumerate(feeds):
            start = time.perf_counter()
            session.run(None, feed)
            fastest[index] = min(fastest[index], time.perf_counter() - start)
        rounds += 1
    (small_texts, small_tokens), (large_texts, large_tokens) = shapes
    per_token = (fastest[1] - fastest[0]) / (large_texts * large_tokens - small_texts * small_tokens)
    per_token = max(per_token, 1e-9)  # a noisy machine can invert the two; the split then merges everything
    overhead = max(fastest[0] - per_token * small_texts * small_tokens, 0.0)
    return RunCost(overhead_ms=round(1000 * overhead, 4), token_us=round(1e6 * per_token, 4))


def cost_fields(cost: RunCost) -> dict[str, float]:
    """The ServingSettings fields that hold `cost` (serving.json)."""
    return {"run_overhead_ms": cost.overhead_ms, "padded_token_us": cost.token_us}


def _feeds(names: set[str], texts: int, tokens: int) -> dict:
    """A padding-free batch the graph accepts (ids of ordinary tokens; one mask per text for fill_mask graphs)."""
    import numpy as np

    ids = np.full((texts, tokens), 5, dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
             contract.ONNX_MASK_POSITIONS: np.arange(texts, dtype=np.int64) * tokens + 1}
    return {name: value for name, value in feeds.items() if name in names}
