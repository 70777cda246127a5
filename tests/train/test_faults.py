"""Training under faults: repeated SIGKILLs, a failing disk, hostile checkpoint files."""

import errno
import json
import os
import pickle
import random
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import bertforge_command
from train import checkpoint as checkpoint_module
from train.checkpoint import (
    CheckpointError,
    _sha256,
    checkpoint_folders,
    latest_complete_checkpoint,
    verify_checkpoint,
)
from train.config import load_train_config
from train.trainer import run_training


@pytest.mark.slow
def test_repeated_sigkills_at_random_points_still_end_bit_identical(trained_run, tiny_config_file, tmp_path,
                                                                    isolated_cache):
    """Checkpoint every step and evaluate every 4 so kills land in steps, checkpoint writes and evaluation."""
    run_dir = tmp_path / "killed-often"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "BERTFORGE_CACHE": str(isolated_cache)}
    command = bertforge_command("train", "--config", str(tiny_config_file), "--run-dir", str(run_dir),
                                "--set", "checkpoint.every=1", "--set", "train.eval_every=4")
    rng = random.Random(int(time.time()))
    kills = 0
    for attempt in range(8):
        process = subprocess.Popen([*command, *(["--resume"] if attempt else [])], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait until it is past start-up (its first new checkpoint), then kill after a random delay
        before = {p.name for p in checkpoint_folders(run_dir / "checkpoints")}
        deadline = time.time() + 120
        while process.poll() is None and time.time() < deadline:
            now = {p.name for p in checkpoint_folders(run_dir / "checkpoints")}
            if now - before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        # After every kill there is a complete checkpoint to resume from
        assert latest_complete_checkpoint(run_dir / "checkpoints", quiet=True) is not None
        if kills == 3:
            break
    assert kills >= 2, "the run finished before it could be killed twice"
    result = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = load_file(trained_run / "model" / "model.safetensors")
    resumed = load_file(run_dir / "model" / "model.safetensors")
    assert all(torch.equal(reference[name], resumed[name]) for name in reference)


def test_disk_failure_during_a_checkpoint_stops_with_the_previous_one_intact(tiny_config_file, tmp_path, monkeypatch):
    config = load_train_config(tiny_config_file, ["checkpoint.every=10", "train.max_steps=30"])
    real_save = torch.save
    calls = {"count": 0}

    def failing_save(obj, path, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 2:  # the first checkpoint (2 torch.save calls) succeeds, the second fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="step-20.*No space left on device.*kept intact: .*step-10"):
        run_training(config, tmp_path / "full-disk")
    folders = checkpoint_folders(tmp_path / "full-disk" / "checkpoints")
    assert [p.name for p in folders] == ["step-10"]
    verify_checkpoint(folders[0])
    # no half-written (staging) folder left beside it
    assert [p.name for p in (tmp_path / "full-disk" / "checkpoints").iterdir()] == ["step-10"]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/bertforge-pwned",))


def test_checkpoint_with_a_code_running_pickle_is_refused(trained_run, tiny_config_file, tmp_path):
    import shutil

    run_dir = tmp_path / "hostile"
    shutil.copytree(trained_run, run_dir)
    shutil.rmtree(run_dir / "model")
    newest = checkpoint_folders(run_dir / "checkpoints")[-1]
    # Replace the optimizer state with a payload and fix the manifest so only the loader can stop it
    (newest / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": RunsCode()}))
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"]["optimizer.pt"] = _sha256(newest / "optimizer.pt")
    (newest / "manifest.json").write_text(json.dumps(manifest))
    if os.path.exists("/tmp/bertforge-pwned"):
        os.remove("/tmp/bertforge-pwned")
    with pytest.raises(CheckpointError, match="optimizer.pt: refused to load"):
        run_training(load_train_config(tiny_config_file), run_dir, resume=True)
    assert not os.path.exists("/tmp/bertforge-pwned")
