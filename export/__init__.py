"""export stage of bertforge: any HF BERT folder -> verified ONNX variants and a Triton model repository.

Public API (heavy imports happen only when called):
    export_to_repository(model_dir, repo_dir, precision="auto", **options) -> ExportReport
    export_onnx(model_dir, output_dir, precision="all", **options) -> ExportReport
    run_export(ExportConfig) -> ExportReport;  load_export_config(toml, overrides) -> ExportConfig
    read_report(path) -> ExportReport          # <repo>/export_report.json, old files included (export/report.py)
    Precision.parse("fp32,int8")               # what --precision asks for (export/precision.py)
See docs/export.md.
"""

from export.config import DEFAULT_PRECISION, PRECISIONS, ExportConfig, ParityGates, load_export_config
from export.precision import Precision
from export.report import ExportReport, read_report


def export_to_repository(model_dir, repo_dir, precision: str | Precision = DEFAULT_PRECISION, **options) -> ExportReport:
    from export.exporter import export_to_repository as run

    return run(model_dir, repo_dir, precision=precision, **options)


def export_onnx(model_dir, output_dir, precision: str | Precision = "all", **options) -> ExportReport:
    from export.exporter import export_onnx as run

    return run(model_dir, output_dir, precision=precision, **options)


def run_export(config: ExportConfig, progress=None) -> ExportReport:
    """`progress`: an `export.progress.ExportProgress` (default: print every event unless config.progress is off)."""
    from export.exporter import run_export as run

    return run(config, progress)


__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "ExportConfig", "ExportReport", "ParityGates", "Precision", "export_onnx",
           "export_to_repository", "load_export_config", "read_report", "run_export"]
