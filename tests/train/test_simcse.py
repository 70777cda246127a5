"""The SimCSE stage: a masked-LM folder in, a sentence-transformers folder out; resumable mid-stage."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from bertforge.config import ConfigError
from tests.train.conftest import run_cli
from train.checkpoint import checkpoint_folders
from train.config import load_train_config

SIMCSE_RUN = ["train.max_steps=8", "train.batch_size=8", "checkpoint.every=4", "checkpoint.keep=10", "log.every=1",
              "optim.lr=1e-3", "optim.warmup_steps=2", "simcse.min_words=4"]
TEXTS = ["The committee approved the budget on monday.", "Our government rejected the trade deal.", "the bank"]


def simcse_command(config_file, source, run_dir, *extra):
    sets = [item for override in SIMCSE_RUN for item in ("--set", override)]
    return ("train", "--config", str(config_file), "--objective", "simcse", "--init-from", str(source),
            "--run-dir", str(run_dir), *sets, *extra)


@pytest.fixture(scope="module")
def simcse_run(continued_config_file, source_mlm, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("simcse") / "run"
    cache = tmp_path_factory.getbasetemp() / "bertforge-cache"
    result = run_cli(*simcse_command(continued_config_file, source_mlm, run_dir), env_extra={"BERTFORGE_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_the_result_is_a_sentence_transformers_folder_that_loads_as_trained(simcse_run, source_mlm):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    folder = simcse_run / "model"
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json", "config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    # The author's library loads it; its embeddings are the mean-pooled states of the trained encoder
    embeddings = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True)
    encoder, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(embeddings, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-5)
    # ... and it is not the starting model any more
    trained, source = load_file(folder / "model.safetensors"), load_file(source_mlm / "model.safetensors")
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(trained[name], source[f"bert.{name}"])
    steps = [json.loads(line) for line in (simcse_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "simcse_loss" in r] == list(range(1, 9))
    assert all(0 < r["simcse_loss"] < 10 for r in steps if "simcse_loss" in r)


@pytest.mark.slow
def test_a_run_resumed_mid_stage_ends_with_the_same_weights(simcse_run, continued_config_file, source_mlm, tmp_path,
                                                          isolated_cache):
    # As if killed after step 4's checkpoint: the later checkpoint and the result are gone
    run_dir = tmp_path / "resumed"
    shutil.copytree(simcse_run, run_dir)
    shutil.rmtree(run_dir / "model")
    for folder in checkpoint_folders(run_dir / "checkpoints"):
        if folder.name != "step-4":
            shutil.rmtree(folder)
    result = run_cli(*simcse_command(continued_config_file, source_mlm, run_dir, "--resume"),
                     env_extra={"BERTFORGE_CACHE": str(isolated_cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    reference = load_file(simcse_run / "model" / "model.safetensors")
    resumed = load_file(run_dir / "model" / "model.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[name], resumed[name]) for name in reference)


def test_simcse_needs_a_model_to_start_from(continued_config_file):
    with pytest.raises(ConfigError, match="--init-from"):
        load_train_config(continued_config_file, ["train.objective=simcse"])
