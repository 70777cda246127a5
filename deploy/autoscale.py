"""The shipped HorizontalPodAutoscaler rule, simulated: N replicas, a stepping arrival rate, p99 over time.

    python -m deploy.autoscale --out docs/img/autoscale.png            # the shipped rule, the default profile
    python -m deploy.autoscale --metrics avg_time_queue_us --out q.png  # queue time alone, for comparison

No cluster runs here, so the rule in deploy/k8s/base/hpa.yaml is checked by a discrete-event model:
- each replica is one FIFO server whose service time per request is the one measured on this machine
  (`bertforge bench serve`, embed, saturated: 1 / 1,222 req/s = 0.82 ms; `--service-ms`), gamma-distributed
  around it (`--service-cv`); requests arrive as a Poisson process whose rate steps up and down, and the
  Service sends each to a uniformly random ready replica;
- every `sync` seconds (15) the HPA computes each metric as prometheus-adapter serves it (queue time
  per request and requests per second of each pod over the last 30 s), proposes replicas with Kubernetes'
  formula (ceil(ready x value / target), tolerance 0.1, missing pods 0 when scaling up and at target when
  scaling down), takes the largest proposal, stabilizes it over the scale-up / scale-down windows and
  limits it by the behavior policies of the manifest, then clamps it to min/max replicas;
- a new replica takes `--start-s` (30) to become ready; a removed one stops receiving requests at once
  and finishes its queue.
Outputs: a PNG of p99 latency and replicas over time, and the highest peak rate (the profile scaled) at
which the whole run's p99 stays under `--bound-ms`, found by bisection. Entry point: `main(argv)`.

It lives beside the manifests it reads and is run from a checkout (`python -m deploy.autoscale`): it measures
nothing, so it is no `bertforge bench` subcommand; its one measured input is `--service-ms`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported inside the functions that compute: `bertforge --help` builds this parser
    import numpy as np


HPA_MANIFEST = Path(__file__).resolve().parent / "k8s" / "base" / "hpa.yaml"
QUEUE_METRIC = "avg_time_queue_us"
RATE_METRIC = "inference_requests_per_second"
KNOWN_METRICS = (QUEUE_METRIC, RATE_METRIC)
# measured: `bertforge bench serve --model <demo-shaped BERT> --task embed --precision fp32 --no-baselines
# --concurrency 1,16 --rounds 3 --seconds 5` -> c=16: 1,302 / 1,222 / 1,198 req/s (median 1,222), docs/deploy.md
MEASURED_SERVICE_MS = 1000.0 / 1222.0
METRIC_WINDOW_S = 30  # the adapter rules' [30s]
# the default profile, (seconds, fraction of the peak rate): 90 s steps of x1.3 from 10% of the peak up to it,
# 5 minutes there, the same steps down, 5 minutes at 10%. A x1.3 step fits the headroom the rate target
# leaves (850 of 1,222 req/s: x1.44); a larger sudden step overloads the replicas until new pods are ready.
_UP = tuple(round(min(1.0, 0.1 * 1.3**step), 4) for step in range(10))
DEFAULT_PROFILE = tuple((90, level) for level in _UP) + ((300, 1.0),) + tuple((90, level) for level in _UP[-2::-1]) \
    + ((300, 0.1),)


class AutoscaleError(ValueError):
    """A bad manifest or argument; the message says which."""


@dataclass(frozen=True)
class ScalingPolicy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_s: int


@dataclass(frozen=True)
class ScalingRules:
    stabilization_s: int
    select: str  # "Max", "Min" or "Disabled"
    policies: tuple[ScalingPolicy, ...]


@dataclass(frozen=True)
class HpaRule:
    min_replicas: int
    max_replicas: int
    targets: dict[str, float]  # metric name -> target average value per pod
    scale_up: ScalingRules
    scale_down: ScalingRules
    tolerance: float = 0.1  # kube-controller-manager's --horizontal-pod-autoscaler-tolerance
    sync_s: int = 15  # --horizontal-pod-autoscaler-sync-period


@dataclass
class SimulationResult:
    times_s: np.ndarray  # window starts
    p99_ms: np.ndarray  # p99 latency of the requests arriving in each window (nan: none)
    replicas: np.ndarray  # desired replicas at each second
    ready: np.ndarray  # ready replicas at each second
    rate: np.ndarray  # arrival rate at each second
    overall_p99_ms: float
    requests: int
    scale_events: list[tuple[int, int, int]] = field(default_factory=list)  # (second, from, to)


def load_hpa_rule(path: Path = HPA_MANIFEST) -> HpaRule:
    """The HPA manifest's rule (autoscaling/v2, Pods metrics with AverageValue targets)."""
    import yaml

    document = yaml.safe_load(Path(path).read_text())
    if document.get("kind") != "HorizontalPodAutoscaler":
        raise AutoscaleError(f"{path} is a {document.get('kind')}, not a HorizontalPodAutoscaler")
    spec = document["spec"]
    targets = {}
    for metric in spec.get("metrics", []):
        if metric.get("type") != "Pods" or metric["pods"]["target"].get("type") != "AverageValue":
            raise AutoscaleError(f"{path}: only Pods metrics with AverageValue targets are simulated, got {metric}")
        targets[metric["pods"]["metric"]["name"]] = parse_quantity(metric["pods"]["target"]["averageValue"])
    unknown = set(targets) - set(KNOWN_METRICS)
    if unknown or not targets:
        raise AutoscaleError(f"{path}: the simulator models {', '.join(KNOWN_METRICS)}; got {sorted(targets)}")
    behavior = spec.get("behavior", {})
    return HpaRule(min_replicas=int(spec.get("minReplicas", 1)), max_replicas=int(spec["maxReplicas"]),
                   targets=targets, scale_up=_rules(behavior.get("scaleUp"), up=True),
                   scale_down=_rules(behavior.get("scaleDown"), up=False))


def simulate(rule: HpaRule, profile: list[tuple[float, float]], service_ms: float = MEASURED_SERVICE_MS,
             service_cv: float = 0.5, start_s: float = 30.0, window_s: int = 10, seed: int = 0,
             initial_replicas: int | None = None) -> SimulationResult:
    """Run the profile [(seconds, requests/s), ...] through replicas scaled by `rule`."""
    import numpy as np
    rng = np.random.default_rng(seed)
    rates = np.concatenate([np.full(int(seconds), float(rate)) for seconds, rate in profile])
    total_s = len(rates)
    service_s = service_ms / 1000.0
    shape = 1.0 / service_cv**2 if service_cv > 0 else None
    horizon = total_s + 3600  # queue records may land after the profile ends
    # the initial replicas have run long enough to report metrics at the first sync
    pods: list[_Pod] = [_Pod(ready_at=-METRIC_WINDOW_S, horizon=horizon)
                        for _ in range(initial_replicas or rule.min_replicas)]
    history: list[tuple[int, int]] = []  # (second, raw recommendation)
    events: list[tuple[int, int, int]] = []
    desired_log, ready_log, latencies_by_window = np.zeros(total_s, int), np.zeros(total_s, int), {}
    for second in range(total_s):
        ready_pods = [pod for pod in pods if pod.ready_at <= second and not pod.removed]
        count = rng.poisson(rates[second])
        if count and ready_pods:
            arrivals = np.sort(second + rng.random(count))
            if shape is None:
                services = np.full(count, service_s)
            else:
                services = rng.gamma(shape, service_s / shape, count)
            targets = rng.integers(0, len(ready_pods), count)
            for index, pod in enumerate(ready_pods):
                chosen = targets == index
                if chosen.any():
                    latencies = pod.serve(arrivals[chosen], services[chosen])
                    latencies_by_window.setdefault(second // window_s, []).append(latencies)
        desired_log[second] = sum(not pod.removed for pod in pods)
        ready_log[second] = len(ready_pods)
        if second > 0 and second % rule.sync_s == 0:
            current = desired_log[second]
            desired = _hpa_step(rule, pods, second, current, history, events)
            if desired != current:
                events.append((second, current, desired))
                _resize(pods, desired, second + start_s, horizon)
    windows = math.ceil(total_s / window_s)
    p99 = np.full(windows, np.nan)
    for window, chunks in latencies_by_window.items():
        p99[window] = np.percentile(np.concatenate(chunks), 99) * 1000.0
    everything = np.concatenate([c for chunks in latencies_by_window.values() for c in chunks]) \
        if latencies_by_window else np.zeros(0)
    overall = float(np.percentile(everything, 99) * 1000.0) if everything.size else float("nan")
    return SimulationResult(times_s=np.arange(windows) * window_s, p99_ms=p99, replicas=desired_log,
                            ready=ready_log, rate=rates, overall_p99_ms=overall, requests=int(everything.size),
                            scale_events=events)


def highest_rate_under_bound(rule: HpaRule, bound_ms: float, shape: tuple = DEFAULT_PROFILE,
                             iterations: int = 9, **simulation) -> tuple[float, SimulationResult]:
    """The largest peak rate (the profile scaled) whose whole-run p99 stays under bound_ms, by bisection."""
    capacity = rule.max_replicas * 1000.0 / simulation.get("service_ms", MEASURED_SERVICE_MS)
    low, high, best = 0.0, capacity, None
    for _ in range(iterations):
        peak = (low + high) / 2
        result = simulate(rule, scaled_profile(shape, peak), **simulation)
        if result.overall_p99_ms <= bound_ms:
            low, best = peak, result
        else:
            high = peak
    if best is None:
        raise AutoscaleError(f"no peak rate down to {high:.0f} req/s keeps p99 under {bound_ms} ms")
    return low, best


def scaled_profile(shape: tuple = DEFAULT_PROFILE, peak: float = 1.0) -> list[tuple[float, float]]:
    return [(seconds, fraction * peak) for seconds, fraction in shape]


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number: "850", "500m", "2k", 5000."""
    text = str(value).strip()
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    try:
        if text and text[-1] in suffixes:
            return float(text[:-1]) * suffixes[text[-1]]
        return float(text)
    except ValueError:
        raise AutoscaleError(f"not a Kubernetes quantity: {value!r}") from None


class _Pod:
    """One replica: a FIFO server, with its queue time and completions counted per second of start."""

    def __init__(self, ready_at: float, horizon: int):
        import numpy as np
        self.ready_at, self.removed, self.free_at = ready_at, False, 0.0
        self.queue_s = np.zeros(horizon)  # summed queue wait of requests starting in each second
        self.started = np.zeros(horizon)  # requests starting service in each second

    def serve(self, arrivals: np.ndarray, services: np.ndarray) -> np.ndarray:
        """Lindley's recursion, vectorized: finish_n = C_n + max(free, max_k<=n (a_k - C_(k-1)))."""
        import numpy as np
        cumulative = np.cumsum(services)
        finish = cumulative + np.maximum(self.free_at, np.maximum.accumulate(arrivals - (cumulative - services)))
        start = finish - services
        self.free_at = float(finish[-1])
        seconds = np.minimum(start.astype(int), len(self.started) - 1)
        np.add.at(self.queue_s, seconds, start - arrivals)
        np.add.at(self.started, seconds, 1)
        return finish - arrivals

    def metrics(self, now: int) -> dict[str, float]:
        """What prometheus-adapter serves for this pod at `now` (rules over the last 30 s)."""
        window = slice(max(0, now - METRIC_WINDOW_S), now)
        queued, served = self.queue_s[window].sum(), self.started[window].sum()
        return {QUEUE_METRIC: queued * 1e6 / (1.0 + served), RATE_METRIC: served / METRIC_WINDOW_S}


def _hpa_step(rule: HpaRule, pods: list[_Pod], now: int, current: int, history: list[tuple[int, int]],
              events: list[tuple[int, int, int]]) -> int:
    """One HPA sync: the largest metric proposal, stabilized, rate-limited, clamped (Kubernetes' order)."""
    live = [pod for pod in pods if not pod.removed]
    # a pod without a full metric window yet (starting, or ready for less than 30 s) has no series
    reporting = [pod.metrics(now) for pod in live if pod.ready_at + METRIC_WINDOW_S <= now]
    missing = len(live) - len(reporting)
    proposal = max(_replicas_for_metric([m[name] for m in reporting], missing, target, current, rule.tolerance)
                   for name, target in rule.targets.items())
    history.append((now, proposal))
    # stabilization: scale up to the lowest recommendation of the up window, down to the highest of the down one
    up = min([value for time, value in history if time > now - rule.scale_up.stabilization_s] + [proposal])
    down = max([value for time, value in history if time > now - rule.scale_down.stabilization_s] + [proposal])
    desired = up if current < up else down if current > down else current
    if desired > current:
        desired = min(desired, max(current, _limit(rule.scale_up, current, now, events, up=True)), rule.max_replicas)
    elif desired < current:
        desired = max(desired, min(current, _limit(rule.scale_down, current, now, events, up=False)),
                      rule.min_replicas)
    return max(rule.min_replicas, min(rule.max_replicas, desired))


def _replicas_for_metric(values: list[float], missing: int, target: float, current: int, tolerance: float) -> int:
    """Kubernetes' calcPlainMetricReplicas for an AverageValue Pods metric."""
    if not values:
        return current
    ratio = sum(values) / len(values) / target
    if missing == 0:
        return current if abs(ratio - 1.0) <= tolerance else math.ceil(ratio * len(values))
    filled = values + [0.0 if ratio > 1.0 else target] * missing
    new_ratio = sum(filled) / len(filled) / target
    if abs(new_ratio - 1.0) <= tolerance or (ratio < 1.0 < new_ratio) or (new_ratio < 1.0 < ratio):
        return current
    replicas = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return current
    return replicas


def _limit(rules: ScalingRules, current: int, now: int, events: list[tuple[int, int, int]], up: bool) -> int:
    """The most (up) or fewest (down) replicas the behavior policies allow now."""
    if rules.select == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        recent = [(before, after) for time, before, after in events if time > now - policy.period_s]
        added = sum(after - before for before, after in recent if after > before)
        deleted = sum(before - after for before, after in recent if after < before)
        if up:
            start = current - added + deleted
            proposals.append(start + policy.value if policy.kind == "Pods"
                             else math.ceil(start * (1 + policy.value / 100)))
        else:
            start = current + deleted - added
            proposals.append(start - policy.value if policy.kind == "Pods" else int(start * (1 - policy.value / 100)))
    # "Max" selects the policy allowing the largest change
    if up:
        return max(proposals) if rules.select == "Max" else min(proposals)
    return min(proposals) if rules.select == "Max" else max(proposals)


def _resize(pods: list[_Pod], desired: int, ready_at: float, horizon: int) -> None:
    live = [pod for pod in pods if not pod.removed]
    for _ in range(desired - len(live)):
        pods.append(_Pod(ready_at=ready_at, horizon=horizon))
    # scale down removes the youngest pods first (unready ones before ready ones, as the ReplicaSet does)
    for pod in sorted(live, key=lambda pod: -pod.ready_at)[: max(0, len(live) - desired)]:
        pod.removed = True


def _rules(section: dict | None, up: bool) -> ScalingRules:
    """Kubernetes' defaults where the manifest says nothing."""
    if section is None:
        section = ({"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                                 {"type": "Pods", "value": 4, "periodSeconds": 15}]} if up else
                   {"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]})
    policies = tuple(ScalingPolicy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in section["policies"])
    window = section.get("stabilizationWindowSeconds", 0 if up else 300)
    return ScalingRules(stabilization_s=int(window), select=section.get("selectPolicy", "Max"), policies=policies)


def plot(results: dict[str, SimulationResult], bound_ms: float, out: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, replicas) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for label, result in results.items():
        minutes = result.times_s / 60
        latency.plot(minutes, result.p99_ms, label=f"{label}: p99 per 10 s (run p99 {result.overall_p99_ms:.1f} ms)")
        seconds = np.arange(len(result.replicas)) / 60
        replicas.step(seconds, result.ready, where="post", label=f"{label}: ready replicas")
    latency.axhline(bound_ms, color="black", linestyle="--", linewidth=1, label=f"bound {bound_ms:g} ms")
    latency.set_yscale("log")
    latency.set_ylabel("p99 latency (ms)")
    latency.legend(fontsize=8)
    rate_axis = replicas.twinx()
    first = next(iter(results.values()))
    rate_axis.plot(np.arange(len(first.rate)) / 60, first.rate, color="grey", alpha=0.5, label="arrival rate")
    rate_axis.set_ylabel("arrivals (req/s)")
    replicas.set_ylabel("replicas")
    replicas.set_xlabel("minutes")
    replicas.legend(fontsize=8, loc="upper left")
    figure.suptitle("Simulated HPA (deploy/k8s/base/hpa.yaml) on the measured service time")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """`python -m deploy.autoscale`: parse the flags, simulate, plot; 0, or 2 on bad input."""
    from bertforge.cli_options import module_main

    return module_main("python -m deploy.autoscale", __doc__, add_arguments, run_command, argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulation's flags."""
    parser.add_argument("--hpa", type=Path, default=HPA_MANIFEST, help="HPA manifest (default: the shipped one)")
    parser.add_argument("--metrics", help="comma-separated subset of the manifest's metrics (e.g. avg_time_queue_us)")
    parser.add_argument("--service-ms", type=float, default=MEASURED_SERVICE_MS,
                        help=f"service time per request of one replica (default {MEASURED_SERVICE_MS:.3f}, measured)")
    parser.add_argument("--service-cv", type=float, default=0.5, help="coefficient of variation of it (0.5)")
    parser.add_argument("--start-s", type=float, default=30.0, help="seconds from scale-up to a ready pod (30)")
    parser.add_argument("--peak", type=float,
                        help="peak rate for the plotted run (default: the highest under the bound); skips the search")
    parser.add_argument("--search", action="store_true", help="with --peak: still search the highest rate")
    parser.add_argument("--bound-ms", type=float, default=50.0, help="p99 bound (50 ms)")
    parser.add_argument("--compare-queue-only", action="store_true",
                        help="also plot the rule with queue time as its only metric, at the same peak")
    parser.add_argument("--out", type=Path, default=Path("bench/results/autoscale.png"), help="PNG to write")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON (with provenance, bench/report.py)")


def run_command(args: argparse.Namespace) -> int:
    """Simulate the rule (and the queue-only rule), plot, print the figures; exit 2 on bad input."""
    import numpy as np
    try:
        rule = load_hpa_rule(args.hpa)
        if args.metrics:
            chosen = [name.strip() for name in args.metrics.split(",")]
            if not set(chosen) <= set(rule.targets):
                raise AutoscaleError(f"--metrics {args.metrics}: the manifest has {', '.join(rule.targets)}")
            rule = replace(rule, targets={name: rule.targets[name] for name in chosen})
        if args.service_ms <= 0 or args.start_s < 0 or args.bound_ms <= 0 or (args.peak is not None and args.peak <= 0):
            raise AutoscaleError("--service-ms, --bound-ms and --peak must be > 0, --start-s >= 0")
    except (AutoscaleError, OSError) as error:
        print(f"deploy.autoscale: error: {error}", file=sys.stderr)
        return 2
    options = dict(service_ms=args.service_ms, service_cv=args.service_cv, start_s=args.start_s)
    highest = None
    if args.peak is None or args.search:
        highest, best = highest_rate_under_bound(rule, args.bound_ms, **options)
    peak = args.peak or highest
    shipped = best if args.peak is None else simulate(rule, scaled_profile(peak=peak), **options)
    results = {"shipped rule": shipped}
    if args.compare_queue_only and QUEUE_METRIC in rule.targets and len(rule.targets) > 1:
        queue_only = replace(rule, targets={QUEUE_METRIC: rule.targets[QUEUE_METRIC]})
        results["queue time only"] = simulate(queue_only, scaled_profile(peak=peak), **options)
    plot(results, args.bound_ms, args.out)
    capacity = 1000.0 / args.service_ms
    summary = {"rule": {"min": rule.min_replicas, "max": rule.max_replicas, "targets": rule.targets},
               "service_ms": args.service_ms, "replica_capacity_rps": capacity, "bound_ms": args.bound_ms,
               "highest_peak_rps_under_bound": highest and round(highest, 1), "plotted_peak_rps": round(peak, 1),
               "runs": {label: {"p99_ms": round(r.overall_p99_ms, 2), "max_window_p99_ms": round(float(np.nanmax(r.p99_ms)), 2),
                                "max_replicas": int(r.replicas.max()), "scale_events": len(r.scale_events),
                                "requests": r.requests} for label, r in results.items()}}
    print(json.dumps(summary, indent=2))
    if args.json:
        from bench.report import arguments_config, provenance, write_results

        write_results(provenance(arguments_config(args)) | summary, args.json, plots=False)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
