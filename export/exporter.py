"""Export an encoder folder (BERT, RoBERTa, ... ; export.families), served as its author defines it
(export.model_definition): Optimum ONNX export -> served graphs -> fused/quantized variants -> parity gate -> write.

    export_to_repository(model_dir, repo_dir)                      # Triton model repository (precision "auto")
    export_onnx(model_dir, output_dir, precision="all")            # plain ONNX variants + report
    run_export(config)                                             # either, as an ExportConfig says

Who does what: export.options (keyword options -> ExportConfig), export.task_models (rerank, classify,
embed_sparse), export.targets (the graphs and their gated variants), export.choice (which variant: auto, the
int8 search), export.writer (atomic writes), export.report (the typed report and its one file format).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bertforge.config import save_config, to_dict
from bertforge.cpu import detect_cpu
from bertforge.served_model import REPORT_FILE, TOKENIZER_DIR
from export.author_reference import read_author
from export.config import DEFAULT_PRECISION, ExportConfig, Precision
from export.errors import ExportError, ParityError
from export.model_folder import inspect_model_folder
from export.options import config_from_options
from export.progress import ExportProgress, PrintProgress
from export.report import ExportReport, write_report
from export.targets import build_and_check, served_tasks

FAILED_REPORT_FILE = "export_report.failed.json"  # when an earlier, good export is still in place
CONFIG_FILE = "export_config.toml"  # the resolved config, saved next to what it produced


def export_to_repository(model_dir: str | Path, repo_dir: str | Path, precision: str | Precision = DEFAULT_PRECISION,
                         **options: Any) -> ExportReport:
    """Export `model_dir` into the Triton repository `repo_dir` (fill_mask + embed); returns the report."""
    return run_export(config_from_options(model=Path(model_dir), repo=Path(repo_dir), output=None, precision=precision,
                                          **options))


def export_onnx(model_dir: str | Path, output_dir: str | Path, precision: str | Precision = "all",
                **options: Any) -> ExportReport:
    """Write only the verified ONNX variants (+ tokenizer, config.json, report) into `output_dir`."""
    return run_export(config_from_options(model=Path(model_dir), output=Path(output_dir), repo=None,
                                          precision=precision, **options))


def run_export(config: ExportConfig, progress: ExportProgress | None = None) -> ExportReport:
    """Run one export as configured; raises ExportError (ParityError for a failed gate) with a clear message."""
    from export.task_models import export_if_task_model
    from export.writer import prepare_destination

    if config.model is None:
        raise ExportError("no model folder given; pass --model DIR (a Hugging Face or sentence-transformers folder)")
    started = time.perf_counter()
    progress = progress or (PrintProgress() if config.progress else ExportProgress())
    # rerank / classify heads, embed_sparse (export/task_models.py): their own graphs and gates
    if (task_report := export_if_task_model(config, progress)) is not None:
        return task_report
    # Check the checkpoint and the destination before any heavy work
    info = inspect_model_folder(config.model)
    destination = Path(config.output or config.repo)
    prepare_destination(destination, replaces_whole_folder=config.output is not None)
    tasks, notes = served_tasks(config, info)
    definition, plan, definition_notes = read_author(config, info)
    notes += definition_notes
    for note in notes:
        progress.outcome(note)
    report = ExportReport(model=str(config.model), destination=str(destination), config=to_dict(config),
                          mode="output" if config.output else "repository", notes=notes,
                          cpu=detect_cpu().summary())  # the CPU every gate ran on
    with tempfile.TemporaryDirectory(prefix="bertforge-export-") as scratch:
        scratch = Path(scratch)
        built = build_and_check(config, info, (definition, plan), tasks, scratch, report, progress)
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

            write_output_folder(destination, built, scratch / TOKENIZER_DIR, info, report)
        else:
            from export.writer import write_repository

            write_repository(destination, built, scratch / TOKENIZER_DIR, info, config, report)
        save_config(config, destination / CONFIG_FILE)
    progress.outcome(f"wrote {destination} in {report.seconds} s")
    return report


def build_checked_variants(config: ExportConfig, scratch: Path, progress: ExportProgress | None = None,
                           plain: bool = False) -> tuple[dict, ExportReport]:
    """For benchmarks: build and parity-check every variant in `scratch`, keeping those that miss the gate too
    (their numbers are in the report). Returns ({target: {precision: path}}, report). Writes nothing else."""
    progress = progress or ExportProgress()
    info = inspect_model_folder(config.model)
    tasks, notes = served_tasks(config, info)
    definition, plan, definition_notes = read_author(config, info)
    report = ExportReport(model=str(config.model), notes=notes + definition_notes)
    built = build_and_check(config, info, (definition, plan), tasks, Path(scratch), report, progress, keep_failed=True,
                            plain=plain)
    return built, report


def _write_failed_report(destination: Path, report: ExportReport) -> None:
    """A failed export's report; it does not clobber the report of the export that is still in place."""
    destination.mkdir(parents=True, exist_ok=True)
    path = destination / REPORT_FILE
    if path.exists():
        path = destination / FAILED_REPORT_FILE
    write_report(path, report)
