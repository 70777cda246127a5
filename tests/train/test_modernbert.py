"""model.family = "modernbert": ModernBertForMaskedLM pretraining through the same loop, resume, DDP, continued
pretraining, export and serving as BERT (train/architecture.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import bertforge_command, kill_at_checkpoint_then_resume, run_cli

FAMILY = ["--set", "model.family=modernbert", "--set", "model.init=bert"]


def _modernbert(layers: int = 2, every: int = 1, window: int = 128, dropout: float = 0.0):
    from train.config import ModelConfig
    from train.model import build_model

    torch.manual_seed(0)
    config = ModelConfig(family="modernbert", init="bert", hidden_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, intermediate_size=48, max_position_embeddings=64,
                         global_attention_every=every, local_attention=window, hidden_dropout_prob=dropout,
                         attention_probs_dropout_prob=dropout)
    return build_model(config, vocab_size=120, pad_token_id=0)


@pytest.mark.parametrize("layers, every, window", [(2, 1, 128), (3, 2, 8)])
def test_packed_encoder_equals_transformers_forward(layers, every, window):
    """The training forward (no padding: one rotary table, maskless SDPA, a band on local layers) against
    ModernBertModel's own forward, global layers only and alternating with local ones."""
    from train.architecture import MODERNBERT

    model = _modernbert(layers, every, window).eval()
    input_ids = torch.randint(5, 120, (3, 40))
    with torch.no_grad():
        reference = model.model(input_ids=input_ids).last_hidden_state
        packed = MODERNBERT.packed_encoder(model)(input_ids)
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-5)


def test_the_architecture_is_modernberts():
    """Pre-LN, GeGLU, rotary positions, no biases but the decoder's, the decoder tied to the embeddings."""
    from train.architecture import MODERNBERT
    from train.model import flops_per_token

    model = _modernbert()
    biases = [name for name, _ in model.named_parameters() if name.endswith(".bias")]
    assert biases == ["decoder.bias"]
    assert model.decoder.weight.data_ptr() == model.model.embeddings.tok_embeddings.weight.data_ptr()
    assert not any("position" in name for name, _ in model.named_parameters())  # rotary: no position table
    assert model.model.layers[0].mlp.Wi.out_features == 2 * 48  # gated feed-forward
    assert MODERNBERT.output_bias(model) is model.decoder.bias
    bert_like = flops_per_token(model, 64, 0.15, True)
    assert bert_like > 6 * 2 * (4 * 32 * 32 + 3 * 32 * 48)  # the GLU's three projections are counted


@pytest.fixture(scope="module")
def modernbert_run(tiny_config_file, tmp_path_factory) -> Path:
    """One uninterrupted 80-step ModernBERT run through the real CLI."""
    run_dir = tmp_path_factory.mktemp("modernbert") / "reference"
    result = run_cli("train", "--config", str(tiny_config_file), "--run-dir", str(run_dir), *FAMILY,
                     env_extra={"BERTFORGE_CACHE": str(tmp_path_factory.getbasetemp() / "bertforge-cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_a_modernbert_run_learns_and_saves_a_transformers_folder(modernbert_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    from train.logger import read_metrics

    settings = json.loads((modernbert_run / "model" / "config.json").read_text())
    assert settings["model_type"] == "modernbert" and settings["architectures"] == ["ModernBertForMaskedLM"]
    held_out = [m for m in read_metrics(modernbert_run) if "eval_loss" in m]
    losses = [m["eval_loss"] for m in held_out]
    # uniform guessing over 200 tokens: perplexity 200, accuracy 0.005 (the BERT run's bounds, test_runs.py)
    assert losses[-1] < losses[0] and held_out[-1]["eval_perplexity"] < 60 and held_out[-1]["eval_accuracy"] > 0.1
    tokenizer = AutoTokenizer.from_pretrained(modernbert_run / "model")
    assert "token_type_ids" not in tokenizer("the committee")  # ModernBERT takes none
    model = AutoModelForMaskedLM.from_pretrained(modernbert_run / "model")
    assert type(model).__name__ == "ModernBertForMaskedLM"
    predictions = pipeline("fill-mask", model=str(modernbert_run / "model"), device="cpu")("the [MASK] approved it.")
    assert len(predictions) == 5


@pytest.mark.slow
def test_modernbert_resume_after_sigkill_is_bit_identical(modernbert_run, tiny_config_file, tmp_path, isolated_cache):
    """(DDP equality for this family: tests/train/test_runs.py test_two_process_ddp_equals_one_process[modernbert])"""
    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "BERTFORGE_CACHE": str(isolated_cache)}
    command = bertforge_command("train", "--config", str(tiny_config_file), "--run-dir", str(run_dir), *FAMILY)
    kill_at_checkpoint_then_resume(command, run_dir, env)
    reference = load_file(modernbert_run / "model" / "model.safetensors")
    weights = load_file(run_dir / "model" / "model.safetensors")
    assert reference.keys() == weights.keys() and all(torch.equal(reference[k], weights[k]) for k in reference)


@pytest.mark.slow
def test_continued_pretraining_from_a_modernbert_folder(modernbert_run, continued_config_file, tmp_path,
                                                        isolated_cache):
    """--init-from a ModernBERT folder: the family comes from its config.json; the first step's loss is the
    source's loss on the same batch as transformers computes it; a contradicting family is refused."""
    from transformers import ModernBertForMaskedLM

    from tests.train.test_continued import first_batch
    from train.config import load_train_config

    source = modernbert_run / "model"
    overrides = ["train.max_steps=1", "log.every=1", "model.hidden_dropout_prob=0.0",
                 "model.attention_probs_dropout_prob=0.0", "model.init=bert"]
    run_dir = tmp_path / "continued"
    result = run_cli("train", "--config", str(continued_config_file), "--run-dir", str(run_dir), "--init-from",
                     str(source), *[item for override in overrides for item in ("--set", override)],
                     env_extra={"BERTFORGE_CACHE": str(isolated_cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with its MLM head" in result.stdout + result.stderr
    logged = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    config = load_train_config(continued_config_file, [*overrides, f"model.init_from={source}"])
    assert config.model.family == "modernbert"
    inputs, labels = first_batch(config, run_dir)
    with torch.no_grad():
        expected = ModernBertForMaskedLM.from_pretrained(source).eval()(input_ids=inputs, labels=labels).loss.item()
    assert logged["loss"] == pytest.approx(expected, rel=1e-4)
    refused = run_cli("train", "--config", str(continued_config_file), "--run-dir", str(tmp_path / "refused"),
                      "--init-from", str(source), "--set", "model.family=bert")
    assert refused.returncode == 2 and "model.family = 'bert' (the model has 'modernbert')" in refused.stderr


@pytest.mark.slow
@pytest.mark.int8_kernel
def test_a_trained_modernbert_exports_and_serves_fill_mask_and_embed(modernbert_run, tmp_path, isolated_cache):
    """The run's model/ through the real CLI: `bertforge export` (auto: fp32 parity gate and the int8 search),
    `bertforge serve`, `bertforge client`, answers checked against PyTorch by serve.verify."""
    from tests.train.test_e2e_cli import _read_endpoints, _verify

    repo = tmp_path / "repo"
    exported = run_cli("export", "--model", str(modernbert_run / "model"), "--repo", str(repo), "--quiet",
                       "--set", "search_candidates=12", "--set", "search_seconds=1000000", timeout=1800)
    assert exported.returncode == 0, exported.stderr[-3000:]
    report = json.loads((repo / "export_report.json").read_text())
    assert report["tasks"]["fill_mask"]["chosen"]["precision"] in ("fp32", "int8")
    server = subprocess.Popen(bertforge_command("serve", "--repo", str(repo), "--grpc-port", "0", "--http-port", "0",
                                                "--metrics-port", "0", "--no-api"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "BERTFORGE_CACHE": str(isolated_cache)})
    try:
        endpoints = _read_endpoints(server, timeout_s=180)
        fill = run_cli("client", "fill-mask", "the [MASK] approved the report", "--json", "--url", endpoints["grpc"])
        embed = run_cli("client", "embed", "the committee", "a second text", "--json", "--url", endpoints["grpc"])
        assert fill.returncode == 0 and embed.returncode == 0, fill.stderr + embed.stderr
        (tmp_path / "fill.json").write_text(fill.stdout)
        (tmp_path / "embed.json").write_text(embed.stdout)
        verified = _verify(modernbert_run / "model", tmp_path / "fill.json", tmp_path / "embed.json")
        assert verified.returncode == 0 and "PASS: 3 of 3 answers agree" in verified.stdout, verified.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
