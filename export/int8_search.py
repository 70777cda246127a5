"""Accuracy-driven int8: try a small, ordered set of recipes and keep the fastest that passes the gate.

    result = search_int8(fused, workdir, evaluate, calibration_feeds, timing_feeds, seconds=180, candidates=0)

1. Every recipe of `export.quantize.search_recipes(cpu)` is built, gated and, when it passes, timed (on a CPU whose
   int8 GEMMs can saturate, bertforge.cpu, the saturation-free recipes come first).
2. If none passes: sensitivity. Each quantizable node's output error under int8 is measured on calibration
   activations (`quantize.local_quantization_error`); the most sensitive nodes are kept fp32, the rest int8 by
   each recipe of `quantize.SENSITIVITY_BASES` in turn (strong SmoothQuant, then plain per-channel with fewer
   kept), the smallest count that passes found by doubling and bisection, within the time. Then the same
   nodes int8 again with one activation scale per token (`quantize.scale_rows`), gated like the rest.
3. The fastest passing candidate wins. Every candidate's figures, speed and kept-fp32 nodes go to the report.

Needs nothing from the user: the gate's own text and the reference model are the evaluation (Intel Neural
Compressor's accuracy-aware tuning needs a user-written eval function).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bertforge.cpu import CpuInfo, detect_cpu
from export import quantize
from export.progress import ExportProgress
from export.quantize import Recipe

# evaluate(path) -> (metrics, failures, error): the full gate on the variant at `path`
Evaluate = Callable[[Path], tuple[dict, list[str], float]]
MAX_KEPT_FRACTION = 0.5  # never keep more than half of the quantizable nodes in fp32: it would not pay


@dataclass
class SearchResult:
    path: Path | None  # the winning graph, None when no recipe passed
    recipe: Recipe | None
    candidates: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    latency_ms: float | None = None  # the winner's
    cpu: dict = field(default_factory=dict)  # the CPU the gate ran on (bertforge.cpu.CpuInfo.summary)
    recipe_set: str = ""  # which recipes were tried on it, and why

    def closest(self) -> dict | None:
        """The gated recipe nearest to passing (smallest error), for the report when none passed."""
        tried = [candidate for candidate in self.candidates if "error" in candidate]
        return min(tried, key=lambda candidate: candidate["error"]) if tried else None

    def closest_failures(self) -> str:
        """`<recipe>: <what it missed>` of `closest()`, or "none tried"."""
        best = self.closest()
        if best is None:
            return "none tried"
        return f"{best['name']}: " + "; ".join(line.split(": ", 1)[-1] for line in best["failures"])

    def summary(self) -> dict:
        return {"winner": self.recipe.name if self.recipe else None, "winner_latency_ms": self.latency_ms,
                "seconds": round(self.seconds, 1), "cpu": self.cpu, "recipe_set": self.recipe_set,
                "candidates": self.candidates}


def recipe_set_reason(cpu: CpuInfo, portable: bool = False) -> str:
    """One sentence for the report: the CPU's int8 kernel and the recipes that fit it."""
    names = ", ".join(recipe.name for recipe in quantize.search_recipes(cpu, portable))
    if portable:
        return (f"int8_portable: only saturation-free recipes (7-bit or u8 weights), exact on every int8 kernel, so "
                f"the gate run here (kernel {cpu.int8_kernel}) holds on any CPU: {names}")
    if cpu.int8_saturates:
        return (f"int8 kernel {cpu.int8_kernel} (no VNNI/AMX) sums u8 x s8 pairs in 16-bit lanes, which can "
                f"saturate: saturation-free recipes (7-bit or u8 weights) first, the s8-weight ones only if none "
                f"of those passes: {names}")
    return f"int8 kernel {cpu.int8_kernel} accumulates u8 x s8 exactly: {names}"


def search_int8(fused: Path, workdir: Path, evaluate: Evaluate, calibration_feeds: list[dict], timing_feeds: dict,
                seconds: float = 0.0, progress: ExportProgress | None = None, label: str = "int8",
                cpu: CpuInfo | None = None, portable: bool = False, candidates: int = 40) -> SearchResult:
    """Build and gate int8 recipes of `fused` for the CPU the gate runs on (`cpu`, detected when None: its int8
    kernel decides which recipes can be exact, see bertforge.cpu); return the fastest passing one (or none, with
    every attempt). `portable`: saturation-free recipes only, so the graph answers the same on every CPU. The
    search stops after `candidates` gated graphs, or after `seconds` when > 0 (0: no time limit; 0 candidates: no
    count limit): a count holds on a machine of any speed (an emulated CPU runs about 50x slower), seconds do not."""
    progress = progress or ExportProgress()
    cpu = cpu or detect_cpu()
    tiers, bases = quantize.search_tiers(cpu, portable), quantize.sensitivity_bases(cpu, portable)
    started = time.perf_counter()
    budget = SearchBudget(deadline=started + seconds if seconds > 0 else float("inf"), candidates=candidates)
    workdir.mkdir(parents=True, exist_ok=True)
    passed: list[tuple[float, Path, Recipe]] = []

    def attempt(recipe: Recipe) -> tuple[list[str], float]:
        budget.gated += 1
        target = workdir / f"{recipe.name}.onnx"
        quantize.quantize(fused, target, recipe, calibration_feeds)
        metrics, failures, error = evaluate(target)
        entry = {**recipe.summary(), "passed": not failures, "failures": failures, "error": error, "parity": metrics}
        if not failures:
            entry["latency_ms"] = measure_latency(target, timing_feeds)
            passed.append((entry["latency_ms"], target, recipe))
        result.candidates.append(entry)
        speed = f", {entry['latency_ms']:.2f} ms/batch" if "latency_ms" in entry else ""
        progress.outcome(f"{label} recipe {recipe.name}: {'PASS' if not failures else 'FAIL'} (error {error:.2e}{speed})")
        return failures, error

    result = SearchResult(path=None, recipe=None, cpu=cpu.summary(), recipe_set=recipe_set_reason(cpu, portable))
    progress.step(f"{label}: {result.recipe_set}")
    # 1. the fixed recipes, expected fastest first, tier by tier (saturation-free ones first where the CPU's
    #    kernel saturates; the next tier only if none of a tier passed)
    for recipe in (recipe for tier in tiers for recipe in tier):
        if budget.spent():
            progress.outcome(f"{label}: search budget ({budget.describe(seconds)}) is spent before {recipe.name}")
            break
        if passed and not any(recipe in tier and entry[2] in tier for tier in tiers for entry in passed):
            break  # an earlier tier passed: its recipes are exact on every CPU, the next tier's are not
        attempt(recipe)
    # 2. none passed: keep the nodes whose quantization hurts most in fp32, from each sensitivity base; per base
    #    the smallest count that passes, found by doubling, then bisection (the error falls as more stay fp32)
    if not passed and not budget.spent():
        progress.step(f"{label}: no recipe passed; keeping the most sensitive nodes in fp32")
        limit = None
        fewest: list[tuple[float, Path, Recipe]] = []
        for base in bases:
            # the ranking under this base's own quantization (smoothing moves the error between nodes)
            errors = quantize.local_errors_under(base, fused, workdir, calibration_feeds[:4])
            ranked = sorted(errors, key=errors.get, reverse=True)
            result.candidates.append({"name": "sensitivity", "base": base.name,
                                      "local_error": {node: errors[node] for node in ranked}})
            limit = max(1, int(len(ranked) * MAX_KEPT_FRACTION)) if limit is None else limit
            count = fewest_passing(base, ranked, limit, budget, attempt)
            if count is not None:  # the next base only pays with fewer fp32 nodes than this one needed
                # that count kept fp32, and the same nodes int8 with one activation scale per token (faster
                # when it passes the gate too)
                kept, row_scaled = base.keeping(ranked[:count]), base.row_scaling(ranked[:count])
                if not budget.spent():
                    attempt(row_scaled)
                fewest += [entry for entry in passed if entry[2] in (kept, row_scaled)]
                limit = count - 1
            if limit < 1 or budget.spent():
                break
        if budget.spent():
            progress.outcome(f"{label}: search budget ({budget.describe(seconds)}) is spent")
        # per base only its smallest passing count (fewer fp32 nodes is faster by construction; timings are noisy)
        passed = fewest
    # 3. the fastest that passed
    if passed:
        result.latency_ms, result.path, result.recipe = min(passed, key=lambda item: item[0])
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class SearchBudget:
    """When the search stops: at a deadline (perf_counter seconds) or after `candidates` gated graphs (0: no
    count limit)."""

    deadline: float
    candidates: int = 0
    gated: int = 0

    def spent(self) -> bool:
        return time.perf_counter() > self.deadline or 0 < self.candidates <= self.gated

    def describe(self, seconds: float) -> str:
        bounds = ([f"{self.candidates} candidates"] if self.candidates else []) + ([f"{seconds:.0f} s"] if seconds > 0 else [])
        return " or ".join(bounds)


def fewest_passing(base: Recipe, ranked: list[str], limit: int, budget: SearchBudget,
                   attempt: Callable[[Recipe], tuple[list[str], float]]) -> int | None:
    """The smallest n <= limit for which `base` with the n top-ranked nodes kept fp32 passes (None: none did
    before the budget was spent): doubling from 1, then bisection between the last failing and first passing
    count."""
    failing, passing, count = 0, None, 1
    while not budget.spent():
        failures, _ = attempt(base.keeping(ranked[:count]))
        if failures:
            failing = count
        else:
            passing = count
        if passing is None:
            if count >= limit:
                break
            count = min(limit, count * 2)
        elif passing - failing <= 1:
            break
        else:
            count = (failing + passing) // 2
    return passing


def paired_latency(paths: dict[str, Path], feeds: dict, seconds: float = 2.0, warmup: int = 3,
                   max_rounds: int = 200) -> dict[str, float]:
    """Milliseconds per run of each graph, measured in alternation (one run each per round, fastest run kept),
    so a change of load on a shared machine hits every contestant alike: for the final fp32-vs-int8 choice."""
    import onnxruntime as ort

    sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for name, path in paths.items()}
    inputs = {name: {i.name for i in session.get_inputs()} for name, session in sessions.items()}
    fastest = {name: float("inf") for name in sessions}
    end, rounds = time.perf_counter() + seconds, 0
    while (time.perf_counter() < end and rounds < max_rounds) or rounds < warmup + 5:
        for name, session in sessions.items():
            run_feeds = {key: value for key, value in feeds.items() if key in inputs[name]}
            start = time.perf_counter()
            session.run(None, run_feeds)
            if rounds >= warmup:
                fastest[name] = min(fastest[name], time.perf_counter() - start)
        rounds += 1
    return {name: 1000 * value for name, value in fastest.items()}


def measure_latency(path: Path, feeds: dict, seconds: float = 1.0, warmup: int = 3, max_runs: int = 100) -> float:
    """Milliseconds of one run of `feeds` on a fresh CPU session (ONNX Runtime's default threads): the fastest of
    the runs made in `seconds` or `max_runs` runs (at least 5). The minimum, not the median: on a shared machine
    other processes only ever add time, so the fastest run is the best estimate of the graph's own cost."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    feeds = {name: value for name, value in feeds.items() if name in inputs}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    end = time.perf_counter() + seconds
    while (time.perf_counter() < end and len(times) < max_runs) or len(times) < 5:
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)
