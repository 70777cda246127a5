"""`serve.repository`: config.pbtxt/model.py/serving.json written by code, committed copies in sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertforge import contract
from bertforge.config import ConfigError
from serve.repository import (
    MODEL_TEMPLATE,
    ServingSettings,
    load_serving_settings,
    render_config_pbtxt,
    update_triton_model,
    write_triton_model,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_write_triton_model_round_trips_settings(tmp_path):
    settings = ServingSettings(task="fill_mask", max_length=64, max_top_k=10, preferred_batch_sizes=(2, 4),
                               max_batch_size=8, max_queue_delay_microseconds=250, precision="int8")
    model_dir = tmp_path / contract.FILL_MASK_MODEL
    write_triton_model(model_dir, settings, info={"source": "tiny"})

    config = (model_dir / "config.pbtxt").read_text()
    assert f'name: "{contract.FILL_MASK_MODEL}"' in config
    assert "max_batch_size: 8" in config
    assert "preferred_batch_size: [ 2, 4 ]" in config
    assert "max_queue_delay_microseconds: 250" in config
    for name in (contract.TEXT_INPUT, contract.TOKENS_OUTPUT, contract.TOKEN_IDS_OUTPUT, contract.SCORES_OUTPUT):
        assert f'name: "{name}"' in config
    assert (model_dir / "1" / "model.py").read_text() == MODEL_TEMPLATE.read_text()
    assert load_serving_settings(model_dir / "1") == settings
    assert json.loads((model_dir / "1" / "serving.json").read_text())["info"] == {"source": "tiny"}

    updated = update_triton_model(model_dir, max_queue_delay_microseconds=2000)
    assert load_serving_settings(model_dir / "1") == updated and updated.precision == "int8"
    assert "max_queue_delay_microseconds: 2000" in (model_dir / "config.pbtxt").read_text()
    assert json.loads((model_dir / "1" / "serving.json").read_text())["info"] == {"source": "tiny"}


def test_embed_config_has_only_the_embedding_output():
    config = render_config_pbtxt(ServingSettings(task="embed"))
    assert f'name: "{contract.EMBEDDING_OUTPUT}"' in config
    assert contract.TOKENS_OUTPUT not in config


def test_folder_name_must_match_model_name(tmp_path):
    with pytest.raises(ConfigError, match="folder name"):
        write_triton_model(tmp_path / "wrong", ServingSettings(task="embed"))


@pytest.mark.parametrize("overrides, message", [
    (dict(preferred_batch_sizes=(64,)), "preferred_batch_sizes"),
    (dict(default_top_k=60, max_top_k=50), "default_top_k"),
    (dict(max_batch_tokens=10, max_length=128), "max_batch_tokens"),
    (dict(max_batch_size=0), "max_batch_size"),
])
def test_invalid_settings_say_what_to_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ServingSettings(task="fill_mask", **overrides)


@pytest.mark.parametrize("task", ["fill_mask", "embed"])
def test_committed_repository_matches_default_settings(task, tmp_path):
    settings = ServingSettings(task=task)
    write_triton_model(tmp_path / settings.model_name, settings)
    committed = PROJECT_ROOT / "model_repository" / settings.model_name
    for relative in ("config.pbtxt", "1/model.py"):
        generated = (tmp_path / settings.model_name / relative).read_text()
        assert (committed / relative).read_text() == generated, (
            f"model_repository/{settings.model_name}/{relative} is out of date: "
            "run `python -m serve.repository model_repository`")
