"""Splitting a merged batch into ONNX runs (serve/batch_plan.py): the cost split is the least-cost one of all
splits, stays within the token budget, and the run costs come from the export's measurement of the graph."""

from __future__ import annotations

import json
import random

import pytest

from bertforge.served_model import RunCost, ServingSettings
from serve.batch_plan import plan_batches, plan_by_cost, plan_by_fill


def _cost_of(runs: list[list[int]], lengths: list[int], cost: RunCost) -> float:
    return sum(cost.of(len(run), max(lengths[index] for index in run)) for run in runs)


def _set_partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _set_partitions(rest):
        for index in range(len(partition)):
            yield partition[:index] + [[first, *partition[index]]] + partition[index + 1:]
        yield [[first], *partition]


@pytest.mark.parametrize("seed", range(40))
def test_cost_split_is_the_cheapest_of_every_split(seed):
    """Against brute force over all set partitions (not only contiguous ones) of up to 7 texts."""
    rng = random.Random(seed)
    lengths = [rng.randint(3, 60) for _ in range(rng.randint(1, 7))]
    cost = RunCost(overhead_ms=rng.choice([0.0, 0.05, 0.3, 2.0, 20.0]), token_us=rng.choice([1.0, 10.0, 50.0]))
    budget = rng.choice([60, 150, 4096])
    runs = plan_by_cost(lengths, budget, cost)
    assert sorted(index for run in runs for index in run) == list(range(len(lengths)))
    for run in runs:
        assert len(run) == 1 or len(run) * max(lengths[index] for index in run) <= budget
    feasible = [partition for partition in _set_partitions(list(range(len(lengths))))
                if all(len(run) == 1 or len(run) * max(lengths[i] for i in run) <= budget for run in partition)]
    cheapest = min(_cost_of(partition, lengths, cost) for partition in feasible)
    assert _cost_of(runs, lengths, cost) == pytest.approx(cheapest, rel=1e-9, abs=1e-9)


def test_cost_split_follows_the_graph_cost():
    lengths = [10, 11, 12, 40, 41, 120]
    # runs that cost mostly their fixed part: one run, padding and all
    assert plan_by_cost(lengths, 4096, RunCost(overhead_ms=50.0, token_us=1.0)) == [list(range(6))]
    # runs that cost only their tokens: no padding at all, each distinct length alone, shortest first
    assert plan_by_cost(lengths, 4096, RunCost(overhead_ms=0.0, token_us=10.0)) == [[0], [1], [2], [3], [4], [5]]
    assert plan_by_cost([7, 7, 7], 4096, RunCost(overhead_ms=0.0, token_us=10.0)) in ([[0, 1, 2]], [[0], [1], [2]])
    # in between (MiniLM int8 on a Zen 4 measured 0.3 ms + 52 us/token): the short ones merge, the long one alone
    assert plan_by_cost(lengths, 4096, RunCost(overhead_ms=0.3, token_us=52.0)) == [[0, 1, 2], [3, 4], [5]]
    # the budget holds whatever the costs say (a text longer than it runs alone)
    assert all(len(run) == 1 or len(run) * max(lengths[i] for i in run) <= 100
               for run in plan_by_cost(lengths, 100, RunCost(overhead_ms=1000.0, token_us=0.001)))


def test_settings_choose_the_rule():
    measured = ServingSettings(task="embed", run_overhead_ms=0.3, padded_token_us=52.0)
    assert measured.run_cost == RunCost(0.3, 52.0)
    assert ServingSettings(task="embed", run_overhead_ms=0.3, padded_token_us=52.0, batch_split="fill").run_cost is None
    assert ServingSettings(task="embed").run_cost is None  # exported before costs were measured
    lengths = [10, 11, 12, 40, 41, 120]
    assert plan_batches(lengths, 4096, 0.7, None) == plan_by_fill(lengths, 4096, 0.7) == [[0, 1, 2], [3, 4], [5]]


def test_export_measures_the_run_cost_and_the_server_splits_by_it(tmp_path, tiny_bert_dir):
    from bertforge.served_model import ServedModelDir
    from bertforge.tasks import EMBED
    from export import export_to_repository
    from export.batch_cost import measure_run_cost
    from serve.runtime import load_runtime

    repo = tmp_path / "repo"
    report = export_to_repository(tiny_bert_dir, repo, precision="fp32", progress=False, tasks=[EMBED])
    model = ServedModelDir(repo / EMBED)
    settings = json.loads(model.serving_file.read_text())["settings"]
    assert settings["padded_token_us"] > 0 and settings["run_overhead_ms"] >= 0
    assert report.tasks[EMBED].serving["padded_token_us"] == settings["padded_token_us"]
    # a second measurement of the same graph lands in the same range (the figures are the graph's, not noise)
    again = measure_run_cost(model.onnx_file, 64)
    assert 0.2 < again.token_us / settings["padded_token_us"] < 5
    runtime = load_runtime(model.version_dir)
    assert runtime.run_cost == RunCost(settings["run_overhead_ms"], settings["padded_token_us"])
    requests = [runtime.parse(text.encode(), {}) for text in ["a b", "the cat sat on the mat " * 5, "c d e"]]
    runtime.tokenize(requests)
    runs = runtime.plan_batches(requests)
    assert runs == plan_by_cost([len(r.ids) for r in requests], runtime.settings.max_batch_tokens, runtime.run_cost)


def test_the_brute_force_enumerates_every_partition():
    """The brute force above enumerates every set partition: Bell numbers 1, 1, 2, 5, 15, 52."""
    assert [sum(1 for _ in _set_partitions(list(range(n)))) for n in range(6)] == [1, 1, 2, 5, 15, 52]
