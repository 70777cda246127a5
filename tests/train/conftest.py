"""Tiny training configs over the synthetic corpus (seconds per run on CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY_CONFIG = """
name = "tiny"
[model]
preset = "tiny"
hidden_size = 32
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 64
max_position_embeddings = 64
init = "local"
output_bias_init = "zero"  # the learning test watches the loss fall from ln(vocab); DDP tests "unigram"
[data]
train = "{corpus}/train.txt"
eval = "{corpus}/eval.txt"
tokenizer = "{tokenizer}"  # one tokenizer for the session: saves retraining it per run
vocab_size = 200
seq_len = 32
num_proc = 1
max_eval_blocks = 64
[optim]
lr = 3e-3
warmup_steps = 5
[train]
batch_size = 8
max_steps = 80
eval_every = 20
[checkpoint]
every = 20
keep = 2
[log]
every = 5
tensorboard = false
progress = false
"""


@pytest.fixture(scope="session")
def tiny_config_file(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny.toml"
    path.write_text(TINY_CONFIG.format(corpus=tiny_corpus_dir, tokenizer=tiny_tokenizer_dir))
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Packed blocks and demo data go to a per-session cache, not the checkout's."""
    cache = tmp_path_factory.getbasetemp() / "bertforge-cache"
    monkeypatch.setenv("BERTFORGE_CACHE", str(cache))
    return cache


def bertforge_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bertforge.cli", *args]


def kill_at_checkpoint_then_resume(command: list[str], run_dir: Path, env: dict,
                                   checkpoint: str = "step-20") -> subprocess.CompletedProcess:
    """Start a real run, SIGKILL it once `checkpoint` exists (mid-run), then resume it to the end."""
    import signal
    import time

    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240  # a hang guard, not a speed bound
    while not (run_dir / "checkpoints" / checkpoint).is_dir():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, f"no {checkpoint} within 240 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "model").exists(), "the run finished before it could be killed"
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    return resumed


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", **(env_extra or {})}
    return subprocess.run(bertforge_command(*args), capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def trained_run(tiny_config_file, tmp_path_factory) -> Path:
    """One uninterrupted 80-step run through the real CLI; other tests compare against it."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    result = run_cli("train", "--config", str(tiny_config_file), "--run-dir", str(run_dir),
                     env_extra={"BERTFORGE_CACHE": str(tmp_path_factory.getbasetemp() / "bertforge-cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def continued_config_file(tiny_corpus_dir, tmp_path_factory):
    """The tiny run config without its own tokenizer (the source folder brings one)."""
    text = TINY_CONFIG.format(corpus=tiny_corpus_dir, tokenizer="")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("tokenizer ="))
    path = tmp_path_factory.mktemp("continued") / "tiny.toml"
    path.write_text(text + "\n")
    return path


@pytest.fixture(scope="session")
def source_mlm(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A random tiny BertForMaskedLM folder to continue from."""
    from tests.conftest import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("source_mlm"), tiny_tokenizer_dir, seed=7)
