"""Write verified variants atomically: a staging folder beside the destination, then a rename (or an
atomic exchange with the old folder), so a running server or reader never sees half a model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bertforge.config import ConfigError
from bertforge.files import staged_folder
from bertforge.served_model import REPORT_FILE, ServedModelDir, ServingSettings
from export.config import ExportConfig
from export.errors import ExportError
from export.model_folder import ModelFolderInfo
from export.report import ExportReport, report_file, write_report


def prepare_destination(destination: Path, replaces_whole_folder: bool = False) -> None:
    """Fail early (before any export work) when `destination` cannot be written; creates nothing.
    `replaces_whole_folder` (--output mode swaps the whole folder): refuse a non-empty folder that is not an
    earlier export, so `--output .` can never replace someone's files."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise ExportError(f"{destination} exists and is not a folder; choose another destination")
    if (replaces_whole_folder and destination.is_dir() and any(destination.iterdir())
            and not (destination / REPORT_FILE).is_file()):
        raise ExportError(f"{destination} is a non-empty folder that is not an earlier export (no {REPORT_FILE}); "
                          "--output replaces the whole folder, so give a new or empty folder")
    existing = destination
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(f"cannot create {destination}: {existing} is a file, not a folder")
    try:
        probe = tempfile.NamedTemporaryFile(dir=existing, prefix=".bertforge-write-check-")
        probe.close()
    except OSError as error:
        raise ExportError(f"cannot write to {destination} ({error.strerror or error}); choose a writable folder "
                          "or fix its permissions") from error


def serving_settings(task: str, precision: str, config: ExportConfig, max_length: int, max_top_k: int,
                     model_fields: dict) -> ServingSettings:
    """How one exported model is served: the user's `serving.*` options plus what the export fixed, and what the
    task's exporter says the model fixes (export.task_exporter.TaskExporter.serving_fields: pooling, labels, ...)."""
    return ServingSettings.for_export(config.serving, task=task, precision=precision, max_length=max_length,
                                      max_top_k=max_top_k, name=config.name or "", **model_fields)


def check_serving(config: ExportConfig, task: str, max_length: int, max_top_k: int, model_fields: dict) -> None:
    """The serving settings must hold for this model (e.g. one max-length text within the token budget), and a
    named model must not replace another task's, before the export spends minutes; the writer builds the same."""
    try:
        settings = serving_settings(task, "fp32", config, max_length, max_top_k, model_fields)
    except ConfigError as error:
        raise ExportError(f"serving settings do not fit this model: {error}") from None
    if config.output is not None:
        return
    existing = ServedModelDir(Path(config.repo) / settings.model_name)
    if existing.serving_file.is_file() and existing.settings().task != settings.task:
        raise ExportError(f"{existing.path} serves {existing.settings().task}; adding a {settings.task} model there "
                          "would replace it: choose another --name")


def write_repository(repo: Path, built: dict[str, dict[str, Path]], tokenizer_dir: Path, info: ModelFolderInfo,
                     config: ExportConfig, report: ExportReport, exporters: dict) -> None:
    """One Triton model per task (see `bertforge.served_model.ServedModelDir`), each swapped in whole, then the report
    (`export_report.json`, or a model added beside others: `export_report.<model>.json`, the others' left alone)."""
    repo.mkdir(parents=True, exist_ok=True)
    for task, variants in built.items():
        (precision, onnx_path), = variants.items()
        exporter = exporters[task]
        settings = serving_settings(task, precision, config, report.max_length, report.max_top_k,
                                    exporter.serving_fields())
        target = report.tasks[task]
        with staged_folder(repo / settings.model_name, stage_above_parent=True) as staged:
            model = ServedModelDir(staged)
            model.version_dir.mkdir()
            shutil.copyfile(onnx_path, model.onnx_file)
            shutil.copytree(tokenizer_dir, model.tokenizer_dir)
            variant = target.variants[precision]
            model.write(settings, info={"source": str(info.folder), "precision": precision, "recipe": variant.recipe,
                                        "chosen": target.chosen and target.chosen.to_dict(),
                                        "parity": variant.parity, "fused_ops": variant.fused_ops,
                                        "gate_cpu": report.cpu,  # the CPU every gate ran on
                                        **exporter.info()})  # e.g. what the graph computes and where that came from
            target.model_dir = str(repo / settings.model_name)
            target.serving = {"max_batch_size": settings.max_batch_size, "max_batch_tokens": settings.max_batch_tokens,
                              "max_length": settings.max_length, "max_top_k": settings.max_top_k,
                              "pooling": settings.pooling, "normalize": settings.normalize,
                              "family": settings.family, "embedding_dim": settings.embedding_dim,
                              "default_prompt_name": settings.default_prompt_name}
    write_report(repo / report_file(report), report)


def write_output_folder(output: Path, built: dict[str, dict[str, Path]], tokenizer_dir: Path, info: ModelFolderInfo,
                        report: ExportReport) -> None:
    """`<output>/<task>/model_<precision>.onnx` + config.json + tokenizer per task, and the report."""
    with staged_folder(output) as folder:
        for task, variants in built.items():
            task_dir = folder / task
            task_dir.mkdir(parents=True)
            for precision, onnx_path in variants.items():
                shutil.copyfile(onnx_path, task_dir / _variant_file(precision))
            shutil.copyfile(info.folder / "config.json", task_dir / "config.json")
            shutil.copytree(tokenizer_dir, task_dir, dirs_exist_ok=True)
        write_report(folder / REPORT_FILE, report)


def _variant_file(precision: str) -> str:
    return "model.onnx" if precision == "fp32" else f"model_{precision.replace('-', '_')}.onnx"
