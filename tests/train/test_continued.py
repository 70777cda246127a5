"""Continued pretraining: --init-from a BERT masked-LM folder (its weights, tokenizer and architecture)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from bertforge.config import ConfigError
from tests.conftest import build_tiny_bert
from tests.train.conftest import run_cli
from train.config import load_train_config


@pytest.mark.slow
def test_first_step_loss_is_the_source_models_loss_on_the_same_batch(continued_config_file, source_mlm, tmp_path,
                                                                    isolated_cache):
    from transformers import BertForMaskedLM

    overrides = ["train.max_steps=1", "log.every=1", "model.hidden_dropout_prob=0.0",
                 "model.attention_probs_dropout_prob=0.0"]
    run_dir = tmp_path / "run"
    args = [item for override in overrides for item in ("--set", override)]
    result = run_cli("train", "--config", str(continued_config_file), "--run-dir", str(run_dir),
                     "--init-from", str(source_mlm), *args, env_extra={"BERTFORGE_CACHE": str(isolated_cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with its MLM head" in result.stdout + result.stderr
    logged = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if '"loss"' in line)
    # The same first batch through the source model, as transformers computes its loss
    config = load_train_config(continued_config_file, [*overrides, f"model.init_from={source_mlm}"])
    inputs, labels = first_batch(config, run_dir)
    source = BertForMaskedLM.from_pretrained(source_mlm).eval()
    with torch.no_grad():
        expected = source(input_ids=inputs, labels=labels).loss.item()
    assert logged["loss"] == pytest.approx(expected, rel=1e-4)
    # The run's tokenizer is the source's
    assert json.loads((run_dir / "tokenizer" / "tokenizer.json").read_text()) == \
        json.loads((source_mlm / "tokenizer.json").read_text())


def first_batch(config, run_dir):
    from train.prepare import prepare_data
    from train.runtime import start_runtime
    from train.tokenizer import load_tokenizer

    runtime = start_runtime(config.train)
    data = prepare_data(config, load_tokenizer(run_dir / "tokenizer"), runtime)
    return next(iter(data.loader(start=0, end=1, runtime=runtime)))


def test_config_keys_that_contradict_the_model_are_refused_by_name(continued_config_file, source_mlm):
    with pytest.raises(ConfigError, match=r"model.hidden_size = 64 \(the model has 32\)"):
        load_train_config(continued_config_file, ["model.hidden_size=64", f"model.init_from={source_mlm}"])
    # The architecture comes from the folder, not from the preset
    config = load_train_config(continued_config_file, ["model.preset=base", f"model.init_from={source_mlm}"])
    assert (config.model.hidden_size, config.model.max_position_embeddings) == (32, 64)
    # Through the pipeline command too, before any training
    result = run_cli("pipeline", "--config", str(continued_config_file), "--init-from", str(source_mlm),
                     "--set", "model.num_hidden_layers=3", "--skip-export", timeout=120)
    assert result.returncode == 2 and "model.num_hidden_layers = 3 (the model has 2)" in result.stderr


def test_a_folder_without_an_mlm_head_gets_a_fresh_one(continued_config_file, tiny_tokenizer_dir, tmp_path):
    from train.prepare import prepare_data, prepare_tokenizer
    from train.runtime import start_runtime
    from train.trainer import initial_model

    encoder_only = build_tiny_bert(tmp_path / "encoder", tiny_tokenizer_dir, seed=3, with_mlm_head=False)
    config = load_train_config(continued_config_file, [f"model.init_from={encoder_only}", "model.output_bias_init=unigram"])
    runtime = start_runtime(config.train)
    tokenizer = prepare_tokenizer(config.data, tmp_path / "run", runtime)
    mlm = initial_model(config, tokenizer, prepare_data(config, tokenizer, runtime), runtime)
    source = load_file(encoder_only / "model.safetensors")
    weights = mlm.state_dict()
    encoder = {name: value for name, value in source.items() if not name.startswith("pooler.")}  # no pooler in an MLM
    assert encoder and all(torch.equal(weights[f"bert.{name}"], value) for name, value in encoder.items())
    head = mlm.cls.predictions
    assert head.transform.dense.weight.std() > 0 and torch.isfinite(head.bias).all()
    assert head.bias.std() > 0  # the unigram output bias of a fresh head (a loaded head keeps its own)
