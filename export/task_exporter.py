"""What one task's exporter provides: its graph(s), the gate that judges every variant of them, its serving fields.

    exporter = exporter_for(task, context)        # the registry's `Task.exporter`, e.g. export.sparse:SparseExporter
    for name, kind in exporter.targets(plain):    # the served graph (and an Optimum-loadable one in --output mode)
        fp32 = exporter.fp32_graph(kind, folder)  # written under folder
        metrics = exporter.compare(session, kind) # the task's own figures against its reference (PyTorch or the
        failures = exporter.failures(...)         # author's library), then the verdict for one precision

The rest is the same for every task (export.targets: fuse, time the LayerNorm forms, build each precision through
export.choice, gate it; export.writer: write it): the figures are the only difference between tasks.
"""

from __future__ import annotations

from pathlib import Path

from bertforge import tasks
from export.config import ParityGates
from export.context import ExportContext

SERVED, PLAIN = "served", "plain"  # the contract graph, or (--output) the graph optimum.onnxruntime loads


class TaskExporter:
    """Base of the task exporters; a subclass implements the methods that raise NotImplementedError."""

    plain_folder: str | None = None  # --output: the folder of an Optimum-loadable graph beside the served one

    def __init__(self, context: ExportContext, task: str):
        self.context, self.task = context, task

    # --- before any heavy work -------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse early what this folder or config cannot give this task (an ExportError that says what to do)."""

    def serving_fields(self) -> dict:
        """ServingSettings fields the model fixes for this task (pooling, labels, embedding_dim, family, ...)."""
        return {"family": self.context.info.family.model_type}

    def info(self) -> dict:
        """What serving.json's `info` records beside the gate's figures (e.g. the definition the graph follows)."""
        return {}

    def gate_inputs(self) -> dict:
        """What the gate ran on, for the report's `gate_inputs` (after the gate ran)."""
        return {}

    def definition_extras(self) -> dict:
        """What the report's `definition` adds after the gate ran (embed: how far explicit flags took it from the author)."""
        return {}

    # --- the graphs ----------------------------------------------------------------------------------------------
    def targets(self, plain: bool) -> list[tuple[str, str]]:
        """(folder name, graph kind) of every graph to build: the served one, plus the plain one in --output mode."""
        targets = [(self.task, SERVED)]
        if plain and self.plain_folder:
            targets.append((self.plain_folder, PLAIN))
        return targets

    def fp32_graph(self, kind: str, folder: Path) -> Path:
        """Write the fp32 graph of `kind` under `folder`; returns its path."""
        raise NotImplementedError

    def fused_graph(self, kind: str, fp32_path: Path, folder: Path) -> Path:
        """The fused graph every variant starts from (export.context.ExportContext.fuse unless the task appends to it)."""
        return self.context.fuse(fp32_path, folder)

    def calibration_feeds(self, kind: str) -> list[dict]:
        """Inputs for static int8 calibration, SmoothQuant and the search's sensitivities (cut to the graph's inputs)."""
        return self.context.calibration_feeds

    def timing_feeds(self, kind: str) -> dict:
        """One batch to time candidates on (cut to the graph's inputs)."""
        return self.context.timing_feeds()

    # --- the gate ------------------------------------------------------------------------------------------------
    def compare(self, session, kind: str) -> dict:
        """The variant in `session` against the reference, as the task's figures (its `parity` in the report)."""
        raise NotImplementedError

    def failures(self, metrics: dict, name: str, precision: str, gates: ParityGates) -> list[str]:
        """The verdict: one line per missed threshold, none when the variant passes."""
        raise NotImplementedError

    def error(self, metrics: dict) -> float:
        """One number to rank int8 candidates by (lower is closer to the reference)."""
        raise NotImplementedError

    @classmethod
    def summary(cls, metrics: dict, precision: str) -> str:
        """The figures in one line, as progress and the CLI print them."""
        raise NotImplementedError


class ParityGatedExporter(TaskExporter):
    """fill_mask and embed: served with the author's (dense) definition's fields, judged by export.parity (its
    figures, its gate, its ranking error) on `batches` against `references(kind)`."""

    batches: list

    def serving_fields(self) -> dict:
        return self.context.served_fields()

    def info(self) -> dict:
        return self.context.definition_used()

    def references(self, kind: str) -> list:
        raise NotImplementedError

    def compare(self, session, kind: str) -> dict:
        from export.parity import compare

        return compare(session, self.batches, self.references(kind), self.task, graph=kind,
                       tie_margin=self.context.config.gates.tie_margin)

    def failures(self, metrics: dict, name: str, precision: str, gates: ParityGates) -> list[str]:
        from export.parity import gate

        return gate(metrics, name, precision, gates, task=self.task)

    def error(self, metrics: dict) -> float:
        from export.parity import task_error

        return task_error(metrics, self.task)


def exporter_class(task: str) -> type[TaskExporter]:
    """The exporter the registry names for `task` (bertforge.tasks.Task.exporter)."""
    return tasks.resolve(tasks.task(task).exporter)


def exporter_for(task: str, context: ExportContext) -> TaskExporter:
    return exporter_class(task)(context, task)
