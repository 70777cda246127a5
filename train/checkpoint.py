"""Checkpoints: one folder per step, written in a staging folder, verified by checksums, swapped in atomically.

Where they go (checkpoints/step-N/ in the run folder) is bertforge/run_dir.py's; what is in one is this module's:

checkpoints/step-N/
  model.safetensors     weights (safetensors: no code can hide in them)
  optimizer.pt          optimizer and grad-scaler state (loaded with weights_only=True)
  trainer_state.pt      step, data position, counters, RNG states (python, numpy, torch, CUDA)
  config.toml           the resolved run config
  manifest.json         sha256 of every file above; written last, so its presence marks completeness
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertforge.config import save_config
from bertforge.errors import BertforgeError
from bertforge.files import remove_leftover_staging, staged_folder
from bertforge.run_dir import CHECKPOINT_PREFIX, CONFIG_FILE, checkpoint_folder, checkpoint_folders

MANIFEST = "manifest.json"


class CheckpointError(BertforgeError):
    """A checkpoint is incomplete, corrupted or cannot be written; the message names the file."""


def save_checkpoint(
    folder: Path, step: int, model: torch.nn.Module, optimizer, scaler, trainer_state: dict[str, Any], config, keep: int
) -> Path:
    """Write checkpoints/step-<step>/ atomically and prune all but the newest `keep`."""
    from safetensors.torch import save_model

    target = checkpoint_folder(folder, step)
    try:
        # Write every piece into a staging folder beside the checkpoints (hidden: never taken for one)
        with staged_folder(target) as staged:
            save_model(model, str(staged / "model.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None},
                       staged / "optimizer.pt")
            torch.save({**trainer_state, "rng": capture_rng_state()}, staged / "trainer_state.pt")
            save_config(config, staged / CONFIG_FILE)
            # Checksums last, flushed to disk; leaving the block swaps the folder in with one rename
            files = {p.name: _sha256(p) for p in sorted(staged.iterdir())}
            (staged / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
            _fsync_folder(staged)
    except OSError as error:
        previous = latest_complete_checkpoint(folder, quiet=True)
        raise CheckpointError(
            f"could not write checkpoint {target}: {error}. "
            f"Previous checkpoint {'kept intact: ' + str(previous) if previous else 'none'}"
        ) from error
    # Prune old checkpoints and the staging folders of killed runs
    for old in checkpoint_folders(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    remove_leftover_staging(folder / f"{CHECKPOINT_PREFIX}*")
    for stale in folder.glob(f".tmp-{CHECKPOINT_PREFIX}*"):  # named so by bertforge before staged_folder
        shutil.rmtree(stale, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scaler) -> dict[str, Any]:
    """Verify, then restore weights, optimizer, scaler and RNG states; returns the trainer state."""
    from safetensors.torch import load_model

    verify_checkpoint(path)
    load_model(model, str(path / "model.safetensors"))
    optimizer_state = _load_plain(path / "optimizer.pt")
    optimizer.load_state_dict(optimizer_state["optimizer"])
    if scaler is not None and optimizer_state["scaler"]:
        scaler.load_state_dict(optimizer_state["scaler"])
    trainer_state = _load_plain(path / "trainer_state.pt")
    restore_rng_state(trainer_state.pop("rng"))
    return trainer_state


def _load_plain(file: Path) -> dict:
    """torch.load restricted to tensors and plain containers: a pickle that would run code is refused."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{file}: refused to load: it holds objects other than tensors and plain data "
            f"(torch.load weights_only=True). Do not resume from checkpoints you did not write. ({error})"
        ) from error


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming the first missing or corrupted file."""
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise CheckpointError(f"{manifest_file}: missing, so checkpoint {path.name} is incomplete")
    try:
        files = json.loads(manifest_file.read_text())["files"]
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{manifest_file}: unreadable ({error})") from error
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from checkpoint {path.name}")
        if _sha256(file) != digest:
            raise CheckpointError(f"{file}: checksum mismatch (truncated or corrupted)")


def latest_complete_checkpoint(folder: Path, quiet: bool = False) -> Path | None:
    """The newest checkpoint that verifies; broken ones are reported and skipped."""
    for path in reversed(checkpoint_folders(folder)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as error:
            if not quiet:
                warnings.warn(f"skipping checkpoint: {error}", stacklevel=2)
    return None


def capture_rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state[0], np.asarray(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    for file in folder.iterdir():
        with file.open("rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
