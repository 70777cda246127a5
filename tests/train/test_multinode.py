"""Multi-node training as two "nodes" on this machine: two torchrun launchers (--nnodes=2, one process
each, c10d rendezvous on 127.0.0.1) writing one run folder, the "shared storage", end equal to one process."""

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import bertforge_command
from train.checkpoint import checkpoint_folders, verify_checkpoint
from train.logger import read_metrics

COMMON = ["--set", "train.max_steps=8", "--set", "checkpoint.every=4", "--set", "model.hidden_dropout_prob=0.0",
          "--set", "model.attention_probs_dropout_prob=0.0", "--set", "model.output_bias_init=unigram"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_by_c10d_rendezvous_equal_one_process(tiny_config_file, tmp_path, isolated_cache):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BERTFORGE_CACHE": str(isolated_cache)}
    config = ["--config", str(tiny_config_file), *COMMON]
    single = subprocess.run(bertforge_command("train", *config, "--run-dir", str(tmp_path / "one"),
                                              "--set", "train.batch_size=8"),
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    shared = tmp_path / "shared_storage" / "run"  # both nodes get the same --run-dir
    torchrun = str(Path(os.sys.executable).parent / "torchrun")
    rendezvous = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                  f"--rdzv-endpoint=127.0.0.1:{free_port()}", f"--rdzv-id={uuid.uuid4().hex[:8]}",
                  "--local-addr=127.0.0.1", "--max-restarts=0"]
    nodes = [subprocess.Popen([torchrun, *rendezvous, "-m", "train", *config, "--run-dir", str(shared),
                               "--set", "train.batch_size=4"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    # the rendezvous made one launcher's worker rank 0 (it alone prints and saves) and the other's rank 1
    assert sorted("[train] done: 8 steps" in stdout for stdout, _ in outputs) == [False, True]

    one, two = load_file(tmp_path / "one" / "model" / "model.safetensors"), load_file(shared / "model" / "model.safetensors")
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=2e-5)
    losses_one = [m["loss"] for m in read_metrics(tmp_path / "one") if "loss" in m]
    losses_two = [m["loss"] for m in read_metrics(shared) if "loss" in m]
    assert losses_one and losses_one == pytest.approx(losses_two, rel=1e-4)
    # rank 0 alone wrote the checkpoints on the shared storage; they verify and resume would take the newest
    folders = checkpoint_folders(shared / "checkpoints")
    assert [folder.name for folder in folders][-1] == "step-8"
    for folder in folders:
        verify_checkpoint(folder)
