"""deploy/autoscale.py: the simulated HPA follows Kubernetes' rule as the shipped manifest sets it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from deploy import autoscale
from deploy.autoscale import (
    QUEUE_METRIC,
    RATE_METRIC,
    AutoscaleError,
    HpaRule,
    ScalingPolicy,
    ScalingRules,
    load_hpa_rule,
    simulate,
)

# a slow replica (10 ms per request: 100 req/s) keeps the simulated request counts small
SERVICE_MS = 10.0


def small_rule(**changes) -> HpaRule:
    """The shipped behavior, with targets scaled to a 100 req/s replica."""
    shipped = load_hpa_rule()
    rule = replace(shipped, targets={QUEUE_METRIC: 50_000.0, RATE_METRIC: 70.0})
    return replace(rule, **changes)


def test_shipped_manifest_is_the_simulated_rule():
    rule = load_hpa_rule()
    assert (rule.min_replicas, rule.max_replicas) == (1, 10)
    assert rule.targets == {QUEUE_METRIC: 5000.0, RATE_METRIC: 850.0}
    assert rule.scale_up.stabilization_s == 0 and rule.scale_down.stabilization_s == 300
    assert ScalingPolicy("Pods", 1, 60) in rule.scale_down.policies
    assert rule.tolerance == 0.1 and rule.sync_s == 15


def test_steady_rate_below_one_replica_never_scales_up():
    result = simulate(small_rule(), [(600, 40.0)], service_ms=SERVICE_MS)
    assert result.scale_events == []
    assert set(result.replicas) == {1}
    assert result.overall_p99_ms < 100


def test_step_up_scales_up_within_two_syncs_and_reaches_the_rate_target():
    rule = small_rule()
    result = simulate(rule, [(120, 40.0), (300, 300.0)], service_ms=SERVICE_MS, start_s=30)
    first_up = next(second for second, before, after in result.scale_events if after > before)
    assert 120 < first_up <= 120 + 2 * rule.sync_s
    # 300 req/s at 70 req/s per pod: ceil(300 / 70) = 5 replicas at least, ready within 3 minutes of the step
    assert result.ready[120 + 180:].min() >= 5


def test_scale_down_waits_for_the_stabilization_window_and_removes_one_pod_per_minute():
    rule = small_rule()
    result = simulate(rule, [(300, 400.0), (600, 20.0)], service_ms=SERVICE_MS)
    downs = [(second, before, after) for second, before, after in result.scale_events if after < before]
    assert downs, "the load dropped 20x and nothing scaled down"
    assert downs[0][0] >= 300 + rule.scale_down.stabilization_s - rule.sync_s
    assert all(before - after == 1 for _, before, after in downs)
    assert all(b[0] - a[0] >= 60 for a, b in zip(downs, downs[1:]))


def test_replicas_stay_within_min_and_max():
    rule = small_rule(min_replicas=2, max_replicas=4)
    busy = simulate(rule, [(400, 2000.0)], service_ms=SERVICE_MS)  # 5x what 4 replicas serve
    assert busy.replicas.max() == 4 and busy.replicas.min() >= 2
    idle = simulate(rule, [(400, 0.0)], service_ms=SERVICE_MS, initial_replicas=3)
    assert idle.replicas.min() == 2 and idle.replicas[-1] == 2


def test_scale_up_is_limited_by_the_policies():
    # 100% or 4 pods per 15 s, whichever is more: from 1 replica at most 5 at the first step
    rule = small_rule(max_replicas=50)
    result = simulate(rule, [(120, 3000.0)], service_ms=SERVICE_MS)
    first = result.scale_events[0]
    assert first[1:] == (1, 5)
    slow = replace(rule, scale_up=ScalingRules(0, "Max", (ScalingPolicy("Pods", 1, 60),)))
    events = simulate(slow, [(240, 3000.0)], service_ms=SERVICE_MS).scale_events
    assert [after - before for _, before, after in events] == [1] * len(events)
    assert all(b[0] - a[0] >= 60 for a, b in zip(events, events[1:]))


def test_kubernetes_formula_tolerance_and_missing_pods():
    assert autoscale._replicas_for_metric([105.0, 105.0], 0, 100.0, 2, 0.1) == 2  # within tolerance
    assert autoscale._replicas_for_metric([150.0, 150.0], 0, 100.0, 2, 0.1) == 3  # ceil(2 x 1.5)
    assert autoscale._replicas_for_metric([20.0, 20.0], 0, 100.0, 2, 0.1) == 1
    # scaling up, a starting pod counts as 0: ratio (150+150+0)/3/100 = 1.0 -> no change
    assert autoscale._replicas_for_metric([150.0, 150.0], 1, 100.0, 3, 0.1) == 3
    # scaling down, a starting pod counts as at target: (20+20+100)/3 = 0.47 -> ceil(1.4) = 2
    assert autoscale._replicas_for_metric([20.0, 20.0], 1, 100.0, 3, 0.1) == 2


def test_queue_time_alone_scales_late_and_the_shipped_rule_keeps_the_bound():
    shape = autoscale.DEFAULT_PROFILE
    rule = small_rule(max_replicas=10)
    shipped = simulate(rule, autoscale.scaled_profile(shape, 600.0), service_ms=SERVICE_MS)
    queue_only = simulate(replace(rule, targets={QUEUE_METRIC: rule.targets[QUEUE_METRIC]}),
                          autoscale.scaled_profile(shape, 600.0), service_ms=SERVICE_MS)
    assert shipped.overall_p99_ms < 500 < queue_only.overall_p99_ms


def test_bad_manifest_is_a_clear_error(tmp_path):
    manifest = tmp_path / "hpa.yaml"
    manifest.write_text("kind: HorizontalPodAutoscaler\nspec:\n  maxReplicas: 3\n  metrics:\n"
                        "    - type: Resource\n      resource: {name: cpu, target: {type: Utilization}}\n")
    with pytest.raises(AutoscaleError, match="only Pods metrics"):
        load_hpa_rule(manifest)
    assert autoscale.main(["--hpa", str(manifest), "--out", str(tmp_path / "x.png")]) == 2
    with pytest.raises(AutoscaleError, match="quantity"):
        autoscale.parse_quantity("lots")
    assert autoscale.parse_quantity("500m") == 0.5 and autoscale.parse_quantity("2k") == 2000


def test_cli_writes_the_png_and_figures(tmp_path, capsys):
    out, figures = tmp_path / "autoscale.png", tmp_path / "autoscale.json"
    code = autoscale.main(["--peak", "60", "--service-ms", "10", "--out", str(out), "--json", str(figures),
                           "--compare-queue-only"])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(figures.read_text())
    assert summary["plotted_peak_rps"] == 60 and set(summary["runs"]) == {"shipped rule", "queue time only"}
    assert summary["runs"]["shipped rule"]["requests"] > 10_000
    # written through bench.report: provenance beside the figures, the flags as its config
    assert {"machine", "versions", "git", "command"} <= set(summary)
    assert summary["config"]["peak"] == 60 and summary["config"]["out"] == str(out)


def test_module_runs_from_the_checkout_with_help():
    """`python -m deploy.autoscale --help`, the command docs/deploy.md gives, lists the simulation's flags."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "deploy.autoscale", "--help"], cwd=root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m deploy.autoscale")
    assert [flag for flag in ("--hpa", "--service-ms", "--peak", "--compare-queue-only", "--out", "--json")
            if flag not in result.stdout] == []
