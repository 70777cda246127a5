"""export stage of bertforge: any HF BERT folder -> verified ONNX variants and a Triton model repository.

Public API (heavy imports happen only when called):
    export_to_repository(model_dir, repo_dir, precision="auto", **options) -> report dict
    export_onnx(model_dir, output_dir, precision="all", **options) -> report dict
    run_export(ExportConfig) -> report dict;  load_export_config(toml, overrides) -> ExportConfig
See docs/export.md.
"""

from export.config import DEFAULT_PRECISION, PRECISIONS, ExportConfig, ParityGates, load_export_config


def export_to_repository(model_dir, repo_dir, precision: str = DEFAULT_PRECISION, **options) -> dict:
    from export.exporter import export_to_repository as run

    return run(model_dir, repo_dir, precision=precision, **options)


def export_onnx(model_dir, output_dir, precision: str = "all", **options) -> dict:
    from export.exporter import export_onnx as run

    return run(model_dir, output_dir, precision=precision, **options)


def run_export(config: ExportConfig, progress=None) -> dict:
    """`progress`: an `export.progress.ExportProgress` (default: print every event unless config.progress is off)."""
    from export.exporter import run_export as run

    return run(config, progress)


__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "ExportConfig", "ParityGates", "export_onnx", "export_to_repository", "load_export_config",
           "run_export"]
