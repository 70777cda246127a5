"""Numbers from measurements: latency percentiles, best rounds, regressions between runs, the tuner's pick.

Pure functions on plain dicts (the JSON schema of docs/bench.md), so each is unit-tested on synthetic data.
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 99)


def latency_summary(latencies_s: list[float]) -> dict:
    """p50/p90/p99/max/mean in milliseconds (linear interpolation between samples, numpy's default)."""
    if not latencies_s:
        return {f"p{q}_ms": None for q in PERCENTILES} | {"max_ms": None, "mean_ms": None}
    milliseconds = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    summary = {f"p{q}_ms": float(np.percentile(milliseconds, q)) for q in PERCENTILES}
    return summary | {"max_ms": float(milliseconds.max()), "mean_ms": float(milliseconds.mean())}


def point_figures(latencies_s: list[float], tokens: int, errors: int, elapsed_s: float, flops: float = 0.0) -> dict:
    """One measured point: throughput (successful requests, their tokens and their model FLOPs per second),
    latency, errors."""
    completed = len(latencies_s)
    rate = (lambda amount: amount / elapsed_s) if elapsed_s > 0 else (lambda amount: 0.0)
    return {"requests": completed, "errors": errors, "elapsed_s": elapsed_s, "requests_per_s": rate(completed),
            "tokens_per_s": rate(tokens), "gflops_per_s": rate(flops) / 1e9} | latency_summary(latencies_s)


def encoder_flops(tokens: int, layers: int, hidden: int, intermediate: int, masks: int = 0, vocab: int = 0) -> float:
    """Multiply-add FLOPs (2 per MAC) of one BERT forward over one text of `tokens` real tokens (no padding):
    per layer the Q/K/V/output projections (4 H^2) and the FFN (2 H I) per token, plus attention scores and
    their weighted sum (2 T H per token); the fill-mask head (H^2 + H V) runs on the `masks` positions only.
    Embedding lookups, LayerNorm, softmax and GELU are not counted (memory-bound, a few % at these sizes)."""
    if min(tokens, layers, hidden, intermediate) < 1 or masks < 0 or vocab < 0:
        raise ValueError(f"encoder_flops needs tokens, layers, hidden, intermediate >= 1 and masks, vocab >= 0; "
                         f"got {tokens}, {layers}, {hidden}, {intermediate}, {masks}, {vocab}")
    per_token = layers * (4 * hidden * hidden + 2 * hidden * intermediate + 2 * tokens * hidden)
    return 2.0 * (tokens * per_token + masks * (hidden * hidden + hidden * vocab))


def best_round(rounds: list[dict]) -> dict:
    """The round with the highest throughput: on a shared machine noise only ever slows a run down, so the
    fastest round is the least disturbed one (a real measurement, not a mix of rounds)."""
    return max(rounds, key=lambda point: point["requests_per_s"])


def median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def compare_results(baseline: dict, candidate: dict, max_throughput_drop: float = 0.10,
                    max_latency_rise: float = 0.20) -> list[dict]:
    """Match points by (contender, concurrency); flag throughput drops and p99 rises beyond the thresholds."""
    rows = []
    base_points = {_key(point): point for point in baseline.get("points", [])}
    for point in candidate.get("points", []):
        before = base_points.get(_key(point))
        if before is None:
            continue
        throughput_ratio = _ratio(point["requests_per_s"], before["requests_per_s"])
        p99_ratio = _ratio(point.get("p99_ms"), before.get("p99_ms"))
        reasons = []
        if throughput_ratio is not None and throughput_ratio < 1.0 - max_throughput_drop:
            reasons.append(f"throughput {100 * (throughput_ratio - 1):+.0f}%")
        if p99_ratio is not None and p99_ratio > 1.0 + max_latency_rise:
            reasons.append(f"p99 {100 * (p99_ratio - 1):+.0f}%")
        if point.get("errors", 0) > before.get("errors", 0):
            reasons.append(f"errors {before.get('errors', 0)} -> {point['errors']}")
        rows.append({"contender": point["contender"], "concurrency": point.get("concurrency"),
                     "requests_per_s": (before["requests_per_s"], point["requests_per_s"]),
                     "p99_ms": (before.get("p99_ms"), point.get("p99_ms")),
                     "throughput_ratio": throughput_ratio, "p99_ratio": p99_ratio,
                     "regression": bool(reasons), "reasons": reasons})
    return rows


def pick_best(trials: list[dict], p99_bound_ms: float) -> dict | None:
    """Highest throughput among error-free trials whose p99 stays within the bound (model_analyzer's rule)."""
    eligible = [trial for trial in trials if trial.get("errors", 0) == 0 and trial.get("p99_ms") is not None
                and trial["p99_ms"] <= p99_bound_ms]
    return max(eligible, key=lambda trial: trial["requests_per_s"]) if eligible else None


def _key(point: dict) -> tuple:
    return point["contender"], point.get("concurrency"), point.get("request_rate")


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return new / old
