"""Export an encoder folder (BERT, RoBERTa, ... ; export.families), served as its author defines it
(export.model_definition): Optimum ONNX export -> served graphs -> fused/quantized variants -> parity gate -> write.

    export_to_repository(model_dir, repo_dir)                      # Triton model repository (precision "auto")
    export_onnx(model_dir, output_dir, precision="all")            # plain ONNX variants + report
    run_export(config)                                             # either, as an ExportConfig says

Who does what: export.options (keyword options -> ExportConfig), export.targets (which tasks; every graph's gated
variants), export.context (what the tasks share), the task exporters the registry names (bertforge.tasks:
export.fill_mask, export.embed, export.sparse, export.cross_encoder: graph, gate figures, serving fields),
export.choice (which variant: auto, the int8 search), export.writer (atomic writes), export.report (the typed
report and its one file format).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bertforge.config import save_config, to_dict
from bertforge.cpu import detect_cpu
from bertforge.served_model import REPORT_FILE
from bertforge.tasks import DEFAULT_TASKS
from export.config import DEFAULT_PRECISION, ExportConfig, Precision
from export.context import ExportContext
from export.errors import ExportError, ParityError
from export.model_folder import inspect_model_folder
from export.options import config_from_options
from export.progress import ExportProgress, PrintProgress
from export.report import ExportReport, report_file, write_report
from export.targets import build_and_check, export_tasks
from export.task_exporter import exporter_for

FAILED_REPORT_FILE = "export_report.failed.json"  # when an earlier, good export is still in place
CONFIG_FILE = "export_config.toml"  # the resolved config, saved next to what it produced


def export_to_repository(model_dir: str | Path, repo_dir: str | Path, precision: str | Precision = DEFAULT_PRECISION,
                         **options: Any) -> ExportReport:
    """Export `model_dir` into the Triton repository `repo_dir` (the tasks its kind exports, or `tasks=`)."""
    return run_export(config_from_options(model=Path(model_dir), repo=Path(repo_dir), output=None, precision=precision,
                                          **options))


def export_onnx(model_dir: str | Path, output_dir: str | Path, precision: str | Precision = "all",
                **options: Any) -> ExportReport:
    """Write only the verified ONNX variants (+ tokenizer, config.json, report) into `output_dir`."""
    return run_export(config_from_options(model=Path(model_dir), output=Path(output_dir), repo=None,
                                          precision=precision, **options))


def run_export(config: ExportConfig, progress: ExportProgress | None = None) -> ExportReport:
    """Run one export as configured; raises ExportError (ParityError for a failed gate) with a clear message."""
    from export.writer import prepare_destination

    if config.model is None:
        raise ExportError("no model folder given; pass --model DIR (a Hugging Face or sentence-transformers folder)")
    started = time.perf_counter()
    progress = progress or (PrintProgress() if config.progress else ExportProgress())
    # Check the checkpoint, the tasks it gives and the destination before any heavy work
    info = inspect_model_folder(config.model)
    tasks, notes = export_tasks(config, info)
    destination = Path(config.output or config.repo)
    prepare_destination(destination, replaces_whole_folder=config.output is not None)
    single = tasks[0] if len(tasks) == 1 and tasks[0] not in DEFAULT_TASKS else None  # a model added beside others
    report = ExportReport(model=str(config.model), destination=str(destination), config=to_dict(config),
                          mode="output" if config.output else "repository", task=single,
                          labels=list(info.labels) or None, cpu=detect_cpu().summary())  # the CPU every gate ran on
    with tempfile.TemporaryDirectory(prefix="bertforge-export-") as scratch:
        scratch = Path(scratch)
        context, exporters = _open(config, info, tasks, scratch, progress, report)
        report.notes = notes + context.notes
        for note in report.notes:
            progress.outcome(note)
        built = build_and_check(context, exporters, report)
        failures = report.failures
        report.passed = not failures
        report.seconds = round(time.perf_counter() - started, 1)
        if failures:
            report.written = False
            _write_failed_report(destination, report)
            raise ParityError(failures, report)
        # Write atomically: a running server never sees half a model
        report.written = True
        if config.output:
            from export.writer import write_output_folder

            write_output_folder(destination, built, context.tokenizer_dir, info, report)
        else:
            from export.writer import write_repository

            write_repository(destination, built, context.tokenizer_dir, info, config, report, exporters)
        save_config(config, destination / config_file(report))
    progress.outcome(f"wrote {destination} in {report.seconds} s")
    return report


def build_checked_variants(config: ExportConfig, scratch: Path, progress: ExportProgress | None = None,
                           plain: bool = False) -> tuple[dict, ExportReport]:
    """For benchmarks: build and parity-check every variant in `scratch`, keeping those that miss the gate too
    (their numbers are in the report). Returns ({target: {precision: path}}, report). Writes nothing else."""
    progress = progress or ExportProgress()
    info = inspect_model_folder(config.model)
    tasks, notes = export_tasks(config, info)
    report = ExportReport(model=str(config.model))
    context, exporters = _open(config, info, tasks, Path(scratch), progress, report)
    report.notes = notes + context.notes
    built = build_and_check(context, exporters, report, keep_failed=True, plain=plain)
    return built, report


def _open(config: ExportConfig, info, tasks: list[str], scratch: Path, progress: ExportProgress,
          report: ExportReport) -> tuple[ExportContext, dict]:
    """The export's shared context and each task's exporter, checked: a task the folder cannot give, or serving
    settings that do not fit the model, fail here, before Optimum and the gates run."""
    from export.writer import check_serving

    context = ExportContext.open(config, info, scratch, progress)
    report.max_length, report.max_top_k = context.max_length, context.top_k
    report.definition = context.definition_report()
    exporters = {task: exporter_for(task, context) for task in tasks}
    for task, exporter in exporters.items():
        exporter.check()
        check_serving(config, task, context.max_length, context.top_k, exporter.serving_fields())
    return context, exporters


def config_file(report: ExportReport) -> str:
    """The resolved config beside its report: `export_config.toml`, or `export_config.<model>.toml` beside a model's
    own `export_report.<model>.json` (export.report.report_file)."""
    name = report_file(report)
    if name == REPORT_FILE:
        return CONFIG_FILE
    return name.removesuffix(".json").replace("export_report", "export_config") + ".toml"


def _write_failed_report(destination: Path, report: ExportReport) -> None:
    """A failed export's report; it does not clobber the report of the export that is still in place."""
    destination.mkdir(parents=True, exist_ok=True)
    path = destination / report_file(report)
    if path.exists():
        path = destination / FAILED_REPORT_FILE
    write_report(path, report)
