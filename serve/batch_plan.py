"""How one merged batch of requests is split into ONNX runs: texts sorted by length, each run padded to its longest.

Two rules, both within `max_batch_tokens` padded tokens per run:
- by cost (`plan_by_cost`): the split with the least estimated time, from the served graph's own cost of one run
  (fixed) and of one padded token, measured at export (export/batch_cost.py). A small model, whose runs cost
  mostly their fixed part, merges more; a larger one splits more to pad less (docs/performance.md);
- by fill (`plan_by_fill`): split further while the real tokens of a run would drop below `min_batch_fill` of
  its padded ones. Used for repositories exported before costs were measured, and on request
  (`serving.batch_split = "fill"`).

Splits are contiguous runs of the length-sorted texts (an optimal split never interleaves: swapping two texts
between runs so each run holds the shorter ones can only lower the padded lengths), so the least-cost split is
a dynamic programme over split points, O(n^2) for a merged batch of n <= max_batch_size texts.
"""

from __future__ import annotations

from bertforge.served_model import RunCost


def plan_batches(lengths: list[int], max_batch_tokens: int, min_batch_fill: float = 0.0,
                 cost: RunCost | None = None) -> list[list[int]]:
    """Indices of `lengths` grouped into runs, shortest texts first: by `cost` when given, else by fill."""
    if cost is not None:
        return plan_by_cost(lengths, max_batch_tokens, cost)
    return plan_by_fill(lengths, max_batch_tokens, min_batch_fill)


def plan_by_cost(lengths: list[int], max_batch_tokens: int, cost: RunCost) -> list[list[int]]:
    """The split of the length-sorted texts with the least total estimated time."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    sorted_lengths = [lengths[index] for index in order]
    count = len(order)
    # best[end]: least time for the first `end` sorted texts; start[end]: where its last run begins
    best = [0.0] + [float("inf")] * count
    start = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = sorted_lengths[end - 1]
        for begin in range(end - 1, -1, -1):
            if begin < end - 1 and (end - begin) * longest > max_batch_tokens:
                break  # longer runs only add texts: they stay over the budget (a lone text always fits)
            total = best[begin] + cost.of(end - begin, longest)
            if total < best[end]:
                best[end], start[end] = total, begin
    runs = []
    end = count
    while end > 0:
        runs.append(order[start[end]:end])
        end = start[end]
    return runs[::-1]


def plan_by_fill(lengths: list[int], max_batch_tokens: int, min_batch_fill: float = 0.0) -> list[list[int]]:
    """Sort by length and pack greedily: batch_size * longest <= max_batch_tokens, and real tokens at least
    `min_batch_fill` of the padded ones (less padding waste on CPU, at the cost of more, smaller runs)."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    batches: list[list[int]] = []
    current: list[int] = []
    real_tokens = 0
    for index in order:
        longest = lengths[index]  # ascending order: the newcomer is the longest
        padded = (len(current) + 1) * longest
        if current and (padded > max_batch_tokens or real_tokens + longest < min_batch_fill * padded):
            batches.append(current)
            current, real_tokens = [], 0
        current.append(index)
        real_tokens += longest
    if current:
        batches.append(current)
    return batches
