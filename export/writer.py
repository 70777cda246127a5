"""Write verified variants atomically: a staging folder beside the destination, then a rename (or an
atomic exchange with the old folder), so a running server or reader never sees half a model."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from bertforge import contract
from export.checkpoint import CheckpointInfo, ExportError

RENAME_EXCHANGE = 2  # linux/fs.h


def prepare_destination(destination: Path, replaces_whole_folder: bool = False) -> None:
    """Fail early (before any export work) when `destination` cannot be written; creates nothing.
    `replaces_whole_folder` (--output mode swaps the whole folder): refuse a non-empty folder that is not an
    earlier export, so `--output .` can never replace someone's files."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise ExportError(f"{destination} exists and is not a folder; choose another destination")
    if (replaces_whole_folder and destination.is_dir() and any(destination.iterdir())
            and not (destination / "export_report.json").is_file()):
        raise ExportError(f"{destination} is a non-empty folder that is not an earlier export (no export_report.json); "
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


def write_repository(repo: Path, built: dict[str, dict[str, Path]], info: CheckpointInfo, config, report: dict) -> None:
    """One Triton model per task: `<repo>/<model>/{config.pbtxt, 1/model.onnx, 1/tokenizer/, 1/model.py, 1/serving.json}`."""
    from serve.repository import ServingSettings, write_triton_model

    repo.mkdir(parents=True, exist_ok=True)
    for task, variants in built.items():
        (precision, onnx_path), = variants.items()
        settings = ServingSettings(**_serving_options(task, precision, config, report))
        staging = Path(tempfile.mkdtemp(dir=repo.parent, prefix=f".{repo.name}.{task}.staging-"))
        try:
            model_dir = staging / settings.model_name
            version = model_dir / "1"
            version.mkdir(parents=True)
            shutil.copyfile(onnx_path, version / "model.onnx")
            _save_tokenizer(info.folder, version / "tokenizer")
            variant = report["tasks"][task]["variants"][precision]
            chosen = report["tasks"][task].get("chosen")
            write_triton_model(model_dir, settings, info={"source": str(info.folder), "precision": precision,
                                                          "recipe": variant.get("recipe"), "chosen": chosen,
                                                          "parity": variant["parity"], "fused_ops": variant["fused_ops"]})
            report["tasks"][task]["model_dir"] = str(repo / settings.model_name)
            report["tasks"][task]["serving"] = {"max_batch_size": settings.max_batch_size,
                                                "max_length": settings.max_length, "max_top_k": settings.max_top_k}
            swap_in(model_dir, repo / settings.model_name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    write_json_atomically(repo / "export_report.json", report)


def write_output_folder(output: Path, built: dict[str, dict[str, Path]], info: CheckpointInfo, report: dict) -> None:
    """`<output>/<task>/model_<precision>.onnx` + config.json + tokenizer per task, and the report."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.staging-"))
    try:
        folder = staging / output.name
        for task, variants in built.items():
            task_dir = folder / task
            task_dir.mkdir(parents=True)
            for precision, onnx_path in variants.items():
                shutil.copyfile(onnx_path, task_dir / _variant_file(precision))
            shutil.copyfile(info.folder / "config.json", task_dir / "config.json")
            _save_tokenizer(info.folder, task_dir)
        write_json_atomically(folder / "export_report.json", report)
        swap_in(folder, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def variant_file(precision: str) -> str:
    return _variant_file(precision)


def _variant_file(precision: str) -> str:
    return "model.onnx" if precision == "fp32" else f"model_{precision.replace('-', '_')}.onnx"


def swap_in(new: Path, target: Path) -> None:
    """Put `new` at `target` atomically; an existing `target` ends up at `new` (the caller deletes it)."""
    if not target.exists():
        os.rename(new, target)
        return
    if _rename_exchange(new, target):
        return
    # No renameat2 (old kernel/filesystem): two renames, the gap is one rename long
    old = new.with_name(new.name + ".old")
    os.rename(target, old)
    os.rename(new, target)
    os.rename(old, new)


def write_json_atomically(path: Path, document: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _rename_exchange(first: Path, second: Path) -> bool:
    """Linux renameat2(RENAME_EXCHANGE): swap two paths in one step. False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _save_tokenizer(model_dir: Path, target: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)


def _serving_options(task: str, precision: str, config, report: dict) -> dict:
    """ServingSettings for one model: limits from the export, scheduling from config.serving."""
    max_length = report["max_length"]
    options = {"task": task, "max_length": max_length, "max_top_k": report["max_top_k"],
               "default_top_k": min(contract.DEFAULT_TOP_K, report["max_top_k"]), "pooling": config.pooling,
               "normalize": config.normalize, "precision": precision}
    max_batch_tokens = int(config.serving.get("max_batch_tokens", 4096))
    # a full batch of maximum-length texts fits one ONNX run of max_batch_tokens
    options["max_batch_size"] = max(1, min(64, max_batch_tokens // max_length))
    options.update(config.serving)
    return options
