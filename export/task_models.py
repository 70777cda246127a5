"""The exporter's tasks beyond fill_mask and embed: which module exports what, and the writer they share.

    export_if_task_model(config, progress)   # the hook in export.exporter.run_export: a report, or None
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from bertforge import contract
from bertforge.files import staged_folder
from bertforge.tasks import EMBED_SPARSE, PAIR_TASKS
from export.config import ExportConfig
from export.errors import ExportError
from export.progress import ExportProgress
from export.report import ExportReport, task_report_file, write_report


def export_if_task_model(config: ExportConfig, progress: ExportProgress) -> ExportReport | None:
    """A classification-head folder: rerank/classify (export/cross_encoder.py); `embed_sparse` among the tasks:
    export/sparse.py, then the other tasks by the encoder exporter. None: only fill_mask/embed, the exporter's own."""
    from export.cross_encoder import export_sequence_classifier, sequence_classification_task

    if config.name and not (sequence_classification_task(config.model) or config.tasks == (EMBED_SPARSE,)):
        raise ExportError(f"--name {config.name} names one rerank, classify or embed_sparse model; fill_mask and "
                          "embed keep their names (export embed_sparse alone: --tasks embed_sparse --name NAME)")
    if sequence_classification_task(config.model) is not None:
        return export_sequence_classifier(config, progress)
    asked = sorted(set(config.tasks) & set(PAIR_TASKS))
    if asked:
        raise ExportError(f"tasks {asked} need a *ForSequenceClassification folder (config.json architectures); "
                          f"{config.model} has none: export fill_mask/embed from it, or a fine-tuned classifier")
    if EMBED_SPARSE not in config.tasks:
        return None
    from export.exporter import run_export
    from export.sparse import export_sparse

    sparse = export_sparse(config, progress)
    rest = tuple(task for task in config.tasks if task != EMBED_SPARSE)
    if not rest:
        return sparse
    report = run_export(dataclasses.replace(config, tasks=rest), progress)
    report.embed_sparse = sparse
    return report


def model_max_length(info, tokenizer, config: ExportConfig) -> int:
    """Tokens per input: the model's positions, the tokenizer's limit and the config's max_length, the least."""
    return min(int(info.config.get("max_position_embeddings", contract.DEFAULT_MAX_LENGTH)),
               getattr(tokenizer, "model_max_length", None) or contract.DEFAULT_MAX_LENGTH,
               config.max_length or 1 << 30)


def task_settings(config: ExportConfig, **fixed):
    """ServingSettings of one exported task model; an option that does not fit fails before the export's work."""
    from bertforge.config import ConfigError
    from bertforge.served_model import ServedModelDir, ServingSettings

    try:
        settings = ServingSettings.for_export(config.serving, name=config.name or "", **fixed)
    except ConfigError as error:
        raise ExportError(f"serving settings do not fit this model: {error}") from None
    existing = ServedModelDir(Path(config.repo) / settings.model_name)
    if existing.serving_file.is_file() and existing.settings().task != settings.task:
        raise ExportError(f"{existing.path} serves {existing.settings().task}; adding a {settings.task} model there "
                          "would replace it: choose another --name")
    return settings


def write_task_model(repo: Path, settings, onnx_path: Path, source: Path, report: ExportReport) -> None:
    """`<repo>/<model>` swapped in whole (a running server never sees half a model), then its own report
    `<repo>/export_report.<model>.json` (the fill_mask/embed report is left alone)."""
    from transformers import AutoTokenizer

    from bertforge.served_model import ServedModelDir

    target = report.target
    variant = target.variants[settings.precision]
    with staged_folder(repo / settings.model_name, stage_above_parent=True) as staged:
        model = ServedModelDir(staged)
        model.version_dir.mkdir()
        shutil.copyfile(onnx_path, model.onnx_file)
        AutoTokenizer.from_pretrained(source).save_pretrained(model.tokenizer_dir)
        model.write(settings, info={"source": str(source), "precision": settings.precision,
                                    "chosen": target.chosen.to_dict(), "parity": variant.parity,
                                    "fused_ops": variant.fused_ops})
    write_report(repo / task_report_file(settings.model_name), report)
