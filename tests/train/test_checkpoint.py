"""Checkpoint folders are staged: a save killed midway leaves only a hidden staging folder, which resume never
takes for a checkpoint and the next save removes; re-saving a step swaps the new folder in whole."""

import signal
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from train.checkpoint import (
    checkpoint_folders,
    latest_complete_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from train.config import load_train_config

REPO = Path(__file__).resolve().parents[2]

# Saves step 30 and SIGKILLs itself after the optimizer state, before the trainer state and the manifest
KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
import torch
from train import checkpoint
from train.config import load_train_config

real_save = torch.save
def save_then_die(obj, path, *args, **kwargs):
    real_save(obj, path, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

torch.manual_seed(30)
model = torch.nn.Linear(4, 2)
checkpoint.torch.save = save_then_die
checkpoint.save_checkpoint(Path(sys.argv[1]), 30, model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                           {"step": 30}, load_train_config(), keep=2)
"""


def save(folder: Path, step: int) -> Path:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return save_checkpoint(folder, step, model, optimizer, None, {"step": step}, load_train_config(), keep=2)


def test_a_killed_save_is_never_resumed_from_and_the_next_save_removes_it(tmp_path):
    folder = tmp_path / "checkpoints"
    save(folder, 10)
    save(folder, 20)
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # The half-written step-30 sits in a hidden staging folder, not at checkpoints/step-30
    leftovers = [p for p in folder.iterdir() if p.name not in ("step-10", "step-20")]
    assert leftovers and all(p.name.startswith(".") for p in leftovers), leftovers
    assert any(p.name == "optimizer.pt" for p in leftovers[0].rglob("*")), "the save was not killed midway"
    assert [p.name for p in checkpoint_folders(folder)] == ["step-10", "step-20"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the leftover is not even a broken checkpoint to skip
        assert latest_complete_checkpoint(folder) == folder / "step-20"
    # The next save removes the leftover and prunes to the newest `keep`
    save(folder, 30)
    assert sorted(p.name for p in folder.iterdir()) == ["step-20", "step-30"]
    verify_checkpoint(folder / "step-30")


def test_saving_a_step_again_replaces_its_folder_whole(tmp_path):
    folder = tmp_path / "checkpoints"
    target = save(folder, 10)
    (target / "model.safetensors").write_bytes(b"truncated")
    assert latest_complete_checkpoint(folder, quiet=True) is None
    assert save(folder, 10) == target
    verify_checkpoint(target)
    assert [p.name for p in folder.iterdir()] == ["step-10"]
