"""Which tasks one export builds, and every variant of each task's graphs, gated: the same steps for every task.

    tasks, notes = export_tasks(config, info)                      # the folder's kind and --tasks, by the registry
    built = build_and_check(context, exporters, report)            # {graph folder: {precision: path}}

Per graph of each task's exporter (export.task_exporter): its fp32 graph -> fused -> the residual LayerNorm in the
form that is faster on this CPU -> each precision (export.choice: a named one, the int8 search, or auto) -> its
verdict against the task's reference in `report.tasks[name]`. Nothing is written outside the context's scratch
folder; export.exporter decides what gets written.
"""

from __future__ import annotations

from pathlib import Path

from bertforge import tasks as registry
from bertforge.tasks import DEFAULT_TASKS
from export.config import ExportConfig
from export.context import ExportContext
from export.errors import ExportError
from export.model_folder import ModelFolderInfo
from export.report import ExportReport, TargetReport
from export.task_exporter import TaskExporter

FOLDER_WORDS = {  # how a note and an error name each kind of folder
    registry.MASKED_LM: "a masked-LM folder", registry.ENCODER: "an encoder with no MLM head",
    registry.CROSS_ENCODER: "a sequence-classification head with 1 label(s)",
    registry.CLASSIFIER: "a sequence-classification head with several labels",
    registry.SPARSE_ENCODER: "a sentence-transformers SparseEncoder (MLM transformer + SpladePooling)",
}


def build_and_check(context: ExportContext, exporters: dict[str, TaskExporter], report: ExportReport,
                    keep_failed: bool = False, plain: bool | None = None) -> dict[str, dict[str, Path]]:
    """Build every (graph, precision) variant in the context's scratch folder and gate it; returns
    {graph folder: {precision: path}} of those that passed (and, with keep_failed, those that did not)."""
    import onnx

    from export.choice import Target, build_precision
    from export.layer_norm import choose_layer_norm_form

    config, progress = context.config, context.progress
    plain = config.output is not None if plain is None else plain
    built: dict[str, dict[str, Path]] = {}
    for task, exporter in exporters.items():
        for name, kind in exporter.targets(plain):
            # 1. the fp32 graph, then ONNX Runtime's fusions
            folder = context.scratch / name
            folder.mkdir(parents=True)
            fp32_path = exporter.fp32_graph(kind, folder)
            fused = exporter.fused_graph(kind, fp32_path, folder)
            inputs = {node.name for node in onnx.load(str(fused), load_external_data=False).graph.input}
            timing_feeds = _only(exporter.timing_feeds(kind), inputs)
            # 2. the residual LayerNorm in the form that is faster on this CPU (fp16 keeps ONNX Runtime's fusion)
            report.tasks[name] = TargetReport(task=task, graph=kind)
            cpu_fused = fused
            if any(precision != "fp16" for precision in config.precisions):
                progress.step(f"{name}: timing SkipLayerNormalization against Add + LayerNormalization")
                cpu_fused, report.tasks[name].layer_norm = choose_layer_norm_form(fused, timing_feeds)
            target = Target(name=name, task=task, kind=kind, fused=cpu_fused, folder=folder, exporter=exporter,
                            calibration_feeds=[_only(feeds, inputs) for feeds in exporter.calibration_feeds(kind)],
                            config=config, timing_feeds=timing_feeds, gpu_fused=fused)
            # 3. each precision: build (auto and int8 search recipes), run on fresh inputs, gate
            for requested in config.precisions:
                precision, path, variant, choice = build_precision(target, requested, progress)
                if choice is not None:
                    report.tasks[name].chosen = choice
                report.tasks[name].variants[precision] = variant
                if variant.passed or (keep_failed and path.exists()):
                    built.setdefault(name, {})[precision] = path
        report.gate_inputs = {**(report.gate_inputs or {}), **exporter.gate_inputs()}
        report.definition = {**(report.definition or {}), **exporter.definition_extras()}
    return built


def export_tasks(config: ExportConfig, info: ModelFolderInfo) -> tuple[list[str], list[str]]:
    """The tasks to export from this folder (bertforge.tasks: each task's `folders`, `defaults_for`) and notes on
    the choice. The default tasks mean "what the folder is exported as"; a task it cannot give is an error."""
    kind = info.kind
    asked = list(config.tasks)
    if set(asked) == set(DEFAULT_TASKS):  # nothing asked: what this kind of folder exports
        chosen = [name for name, task in registry.TASKS.items() if kind in task.defaults_for]
        notes = [] if kind == registry.MASKED_LM else [_default_note(info, chosen)]
    else:
        chosen, notes = asked, []
    refused = [name for name in chosen if kind not in registry.task(name).folders]
    if refused:
        raise ExportError(_refusal(info, refused))
    if config.name and (len(chosen) != 1 or chosen[0] in DEFAULT_TASKS):
        raise ExportError(f"--name {config.name} names the model of one task other than {' and '.join(DEFAULT_TASKS)}; "
                          f"{' and '.join(DEFAULT_TASKS)} keep their names (export one task alone: --tasks TASK --name NAME)")
    return chosen, notes


def _default_note(info: ModelFolderInfo, chosen: list[str]) -> str:
    return f"{info.folder} has {FOLDER_WORDS[info.kind]}: exporting task {', '.join(chosen)}"


def _refusal(info: ModelFolderInfo, refused: list[str]) -> str:
    """What the folder is, what it exports, and what the asked tasks need."""
    exports = [name for name, task in registry.TASKS.items() if info.kind in task.folders]
    needs = "; ".join(f"{name} needs {' or '.join(FOLDER_WORDS[kind] for kind in registry.task(name).folders)}"
                      for name in refused)
    return (f"{info.folder} holds {FOLDER_WORDS[info.kind]}, which exports task(s) {exports} only, not {refused} "
            f"({needs}); pass --tasks {','.join(exports)}, or a folder of the kind the task needs")


def _only(feeds: dict, names: set[str]) -> dict:
    """The feeds the graph takes (no token_type_ids for RoBERTa, DistilBERT, ModernBERT; mask_positions for fill_mask)."""
    return {name: value for name, value in feeds.items() if name in names}
