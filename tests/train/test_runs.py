"""Real training runs on a tiny model: learning, run folder, resume after SIGKILL, DDP, faults."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertforge.config import ConfigError
from tests.train.conftest import bertforge_command, kill_at_checkpoint_then_resume, run_cli
from train.checkpoint import CheckpointError, checkpoint_folders, verify_checkpoint
from train.config import load_train_config
from train.logger import read_metrics
from train.trainer import TrainingDiverged, run_training


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def test_run_folder_layout_and_learning(trained_run):
    assert (trained_run / "config.toml").is_file() and (trained_run / "tokenizer" / "tokenizer.json").is_file()
    assert [p.name for p in checkpoint_folders(trained_run / "checkpoints")] == ["step-60", "step-80"]  # keep = 2
    # model/ and each checkpoint were swapped in whole: no staging folder left beside them
    assert not [p for p in [*trained_run.iterdir(), *(trained_run / "checkpoints").iterdir()] if p.name.startswith(".")]
    assert (trained_run / "loss_curve.png").stat().st_size > 1000
    metrics = read_metrics(trained_run)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 16 and losses[-1] < losses[0] - 1.0, losses
    held_out = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]  # eval_every = 20, and the end
    assert [step for step, _ in held_out] == [20, 40, 60, 80] and held_out[-1][1] < held_out[0][1], held_out
    final_eval = [m for m in metrics if "eval_accuracy" in m][-1]
    # uniform guessing over 200 tokens: perplexity 200, accuracy 0.005
    assert final_eval["eval_accuracy"] > 0.1 and final_eval["eval_perplexity"] < 60, final_eval
    assert all(m["tokens_per_s"] > 0 for m in metrics if "loss" in m)


def test_final_model_works_with_transformers_pipeline(trained_run):
    from transformers import pipeline

    fill_mask = pipeline("fill-mask", model=str(trained_run / "model"), device="cpu")
    predictions = fill_mask("the committee [MASK] the new budget on monday.")
    scores = [p["score"] for p in predictions]
    assert len(predictions) == 5 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_resume_after_sigkill_is_bit_identical(trained_run, tiny_config_file, tmp_path, isolated_cache):
    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "BERTFORGE_CACHE": str(isolated_cache)}
    command = bertforge_command("train", "--config", str(tiny_config_file), "--run-dir", str(run_dir))
    # A real run SIGKILLed once its first checkpoint exists, resumed; every tensor against the uninterrupted run
    kill_at_checkpoint_then_resume(command, run_dir, env)
    reference, resumed = final_weights(trained_run), final_weights(run_dir)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[name], resumed[name]) for name in reference)


def test_corrupted_checkpoint_is_named_and_resume_falls_back(trained_run, tiny_config_file, tmp_path):
    run_dir = tmp_path / "corrupted"
    shutil.copytree(trained_run, run_dir)
    shutil.rmtree(run_dir / "model")
    newest = run_dir / "checkpoints" / "step-80" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="step-80/model.safetensors: checksum mismatch"):
        verify_checkpoint(newest.parent)
    # Resume in a fresh process (thread settings of this test process must not change the arithmetic)
    result = run_cli("train", "--config", str(tiny_config_file), "--run-dir", str(run_dir), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping checkpoint" in result.stderr and "step-80/model.safetensors" in result.stderr
    assert "resumed from" in result.stdout and "step-60" in result.stdout
    # it resumed from step-60 and re-did steps 61..80: same weights as the reference
    reference, resumed = final_weights(trained_run), final_weights(run_dir)
    assert all(torch.equal(reference[name], resumed[name]) for name in reference)


def test_refuses_to_overwrite_or_resume_a_different_model(trained_run, tiny_config_file):
    result = run_cli("train", "--config", str(tiny_config_file), "--run-dir", str(trained_run))
    assert result.returncode == 2 and "already holds a run; pass --resume" in result.stderr
    result = run_cli("train", "--config", str(tiny_config_file), "--run-dir", str(trained_run), "--resume",
                     "--set", "model.hidden_size=64")
    assert result.returncode == 2 and "cannot resume" in result.stderr and "hidden_size" in result.stderr


def test_config_errors_exit_before_any_work(tiny_config_file, tmp_path):
    result = run_cli("train", "--config", str(tiny_config_file), "--run-dir", str(tmp_path / "r"),
                     "--set", "model.num_attention_heads=5")
    assert result.returncode == 2 and "not divisible" in result.stderr
    assert not (tmp_path / "r").exists()


def test_non_finite_steps_are_skipped_then_training_stops(tiny_config_file, tmp_path):
    config = load_train_config(tiny_config_file, ["optim.lr=1e30", "optim.warmup_steps=0",
                                                  "train.max_consecutive_bad_steps=3", "checkpoint.every=1"])
    with pytest.raises(TrainingDiverged, match="3 consecutive non-finite steps.*Last good checkpoint: .*step-"):
        run_training(config, tmp_path / "diverged")
    records = read_metrics(tmp_path / "diverged")
    assert all("loss" in r or "precision" in r for r in records)  # step records and the run's precision line only


def test_lamb_and_whole_word_masking_train(tiny_config_file, tmp_path):
    config = load_train_config(tiny_config_file, ["optim.name=lamb", "data.whole_word_mask=true",
                                                  "train.max_steps=10", "train.grad_accum=2"])
    run_training(config, tmp_path / "lamb")
    losses = [m["loss"] for m in read_metrics(tmp_path / "lamb") if "loss" in m]
    assert losses[-1] < losses[0]


def test_tokenizer_vocab_mismatch_is_refused(trained_run, tiny_config_file, tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "mismatch"
    shutil.copytree(trained_run, run_dir)
    vocab_file = run_dir / "tokenizer" / "tokenizer.json"
    tokenizer = json.loads(vocab_file.read_text())
    tokenizer["model"]["vocab"]["zzzextra"] = len(tokenizer["model"]["vocab"])
    vocab_file.write_text(json.dumps(tokenizer))
    with pytest.raises(ConfigError, match="vocabulary of 2\\d\\d tokens but .* 2\\d\\d"):
        run_training(load_train_config(tiny_config_file, ["train.max_steps=50"]), run_dir, resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("family", [[], ["--set", "model.family=modernbert", "--set", "model.init=bert"]],
                         ids=["bert", "modernbert"])
def test_two_process_ddp_equals_one_process(family, tiny_config_file, tmp_path, isolated_cache):
    """torchrun with 2 CPU processes (gloo), batch 4 each == 1 process with batch 8 (dropout off)."""
    common = ["--config", str(tiny_config_file), *family, "--set", "train.max_steps=12",
              "--set", "model.hidden_dropout_prob=0.0",
              "--set", "model.attention_probs_dropout_prob=0.0", "--set", "model.output_bias_init=unigram"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BERTFORGE_CACHE": str(isolated_cache)}
    single = subprocess.run(bertforge_command("train", *common, "--run-dir", str(tmp_path / "one"),
                                              "--set", "train.batch_size=8"),
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [str(Path(os.sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "train"]
    double = subprocess.run([*torchrun, *common, "--run-dir", str(tmp_path / "two"), "--set", "train.batch_size=4"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=2e-5)
    losses_one = [m["loss"] for m in read_metrics(tmp_path / "one") if "loss" in m]
    losses_two = [m["loss"] for m in read_metrics(tmp_path / "two") if "loss" in m]
    assert losses_one == pytest.approx(losses_two, rel=1e-4)
