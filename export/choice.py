"""Which variant of one graph is built and served: a named precision, the int8 recipe search, or auto.

    precision, path, variant, choice = build_precision(target, "auto", progress)

auto: fused fp32 first (a graph bug stops here), then the int8 recipe search; the faster of the two that pass,
timed in alternation. int8: the recipe search, failing when no recipe passes. fp32 / int8-static / fp16: built
and gated as they are. Every variant is gated against its task's reference (the task's exporter: PyTorch fp32 or the
author's library) before it can be served; the same choice for every task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from export.config import AUTO, ExportConfig
from export.report import Choice, VariantReport
from export.task_exporter import TaskExporter


@dataclass
class Target:
    """One graph to build variants of; its task's exporter holds the gate (inputs, reference, figures, verdict)."""

    name: str
    task: str
    kind: str  # "served" (the contract graph) or "plain" (Optimum-loadable, --output mode)
    fused: Path  # what the CPU variants start from (export.layer_norm: the residual LayerNorm in its faster form)
    folder: Path
    exporter: TaskExporter
    calibration_feeds: list
    config: ExportConfig
    timing_feeds: dict
    gpu_fused: Path | None = None  # ONNX Runtime's fused graph as it is, for fp16 (GPU kernels); None = `fused`

    def fused_for(self, precision: str) -> Path:
        return (self.gpu_fused or self.fused) if precision == "fp16" else self.fused

    def evaluate(self, path: Path, precision: str) -> tuple[dict, list[str], float, list[str]]:
        """(metrics, failures, error, providers) of the variant at `path` against the task's reference."""
        from export.variants import gate_session

        session = gate_session(path, precision)
        metrics = self.exporter.compare(session, self.kind)
        failures = self.exporter.failures(metrics, self.name, precision, self.config.gates)
        return metrics, failures, self.exporter.error(metrics), session.get_providers()


def build_precision(target: Target, precision: str, progress) -> tuple[str, Path, VariantReport, Choice | None]:
    """Build and gate `target` for one requested precision: (precision built, its file, its report, auto's choice)."""
    if precision == AUTO:
        return choose_auto(target, progress)
    if precision == "int8":
        path, variant = search_int8(target, progress)
        return "int8", path, variant, None
    path, variant = build_and_gate(target, precision, progress)
    return precision, path, variant, None


def build_and_gate(target: Target, precision: str, progress) -> tuple[Path, VariantReport]:
    from export.variants import build_variant

    progress.step(f"{target.name} {precision}: building")
    path = target.folder / precision / "model.onnx"
    details = build_variant(target.fused_for(precision), precision, path, calibration_feeds=target.calibration_feeds)
    metrics, failures, _, providers = target.evaluate(path, precision)
    verdict = "PASS " if not failures else "FAIL "
    progress.outcome(f"{target.name} {precision}: {verdict}{target.exporter.summary(metrics, precision)}")
    return path, VariantReport.gated(details, metrics, failures, providers=providers)


def search_int8(target: Target, progress) -> tuple[Path, VariantReport]:
    """`--precision int8`: the recipe search; the winner is described like any variant."""
    from export.int8_search import SearchBudget
    from export.int8_search import search_int8 as run_search
    from export.variants import describe, session_providers

    bound = SearchBudget(0.0, target.config.search_candidates).describe(target.config.search_seconds)
    progress.step(f"{target.name} int8: searching recipes (at most {bound})")
    result = run_search(target.fused, target.folder / "int8-search",
                        lambda path: target.evaluate(path, "int8")[:3], target.calibration_feeds,
                        target.timing_feeds, seconds=target.config.search_seconds,
                        candidates=target.config.search_candidates, progress=progress,
                        label=f"{target.name} int8", portable=target.config.int8_portable)
    if result.path is None:
        failures = [f"{target.name} int8: no recipe passed the gate ({len(result.candidates)} tried in "
                    f"{result.seconds:.0f} s); closest: {result.closest_failures()}"]
        progress.outcome(failures[0])
        return target.folder / "int8-search" / "none.onnx", VariantReport.gated(
            {"precision": "int8"}, (result.closest() or {}).get("parity", {}), failures, search=result.summary())
    # the winner was gated in the search already: its figures are the candidate's
    winner = next(c for c in result.candidates if c.get("name") == result.recipe.name and c.get("passed"))
    metrics = winner["parity"]
    variant = VariantReport.gated(describe(result.path, "int8"), metrics, [], recipe=result.recipe.summary(),
                                  providers=session_providers("int8"), search=result.summary())
    progress.outcome(f"{target.name} int8: PASS with recipe {result.recipe.name} " + target.exporter.summary(metrics, "int8"))
    return result.path, variant


def choose_auto(target: Target, progress) -> tuple[str, Path, VariantReport, Choice]:
    """`--precision auto`: the int8 search, then fused fp32; the fastest that passes is served."""
    from export.int8_search import paired_latency

    fp32_path, fp32 = build_and_gate(target, "fp32", progress)
    if not fp32.passed:  # a graph bug, not a precision question: stop here
        return "fp32", fp32_path, fp32, Choice(requested=AUTO, precision="fp32", reason="fp32 itself missed the gate")
    int8_path, int8 = search_int8(target, progress)
    batch = "x".join(str(n) for n in target.timing_feeds["input_ids"].shape)
    if int8.passed:
        # the final choice is timed in alternation, so a change of load on the machine cannot decide it
        times = paired_latency({"fp32": fp32_path, "int8": int8_path}, target.timing_feeds)
        fp32.latency_ms, int8.latency_ms = times["fp32"], times["int8"]
        if int8.latency_ms < fp32.latency_ms:
            reason = (f"int8 recipe {int8.recipe['name']} passed the gate and runs a {batch} batch in "
                      f"{int8.latency_ms:.2f} ms vs fp32 {fp32.latency_ms:.2f} ms")
            progress.outcome(f"{target.name} auto: chose int8 ({reason})")
            return "int8", int8_path, int8, Choice(requested=AUTO, precision="int8", reason=reason)
        reason = (f"int8 passed but is not faster on this CPU ({int8.latency_ms:.2f} ms vs fp32 "
                  f"{fp32.latency_ms:.2f} ms per {batch} batch)")
    else:
        reason = f"no int8 recipe passed the gate ({int8.failures[0]})"
    progress.outcome(f"{target.name} auto: chose fp32 ({reason})")
    return "fp32", fp32_path, dataclasses.replace(fp32, int8_search=int8.search), Choice(requested=AUTO,
                                                                                          precision="fp32", reason=reason)
