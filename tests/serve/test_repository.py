"""`bertforge.served_model`: config.pbtxt/model.py/serving.json written by code, committed copies in sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertforge import contract
from bertforge.config import ConfigError
from bertforge.served_model import (
    ServedModelDir,
    ServingSettings,
    copy_repository,
    render_backend,
    render_config_pbtxt,
    served_models,
)
from bertforge.tasks import FILL_MASK

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_write_triton_model_round_trips_settings(tmp_path):
    settings = ServingSettings(task="fill_mask", max_length=64, max_top_k=10, preferred_batch_sizes=(2, 4),
                               max_batch_size=8, max_queue_delay_microseconds=250, precision="int8")
    model = ServedModelDir.in_repo(tmp_path, "fill_mask")
    model.write(settings, info={"source": "tiny"})

    config = model.config_file.read_text()
    assert f'name: "{FILL_MASK}"' in config
    assert "max_batch_size: 8" in config
    assert "preferred_batch_size: [ 2, 4 ]" in config
    assert "max_queue_delay_microseconds: 250" in config
    for name in (contract.TEXT_INPUT, contract.TOKENS_OUTPUT, contract.TOKEN_IDS_OUTPUT, contract.SCORES_OUTPUT):
        assert f'name: "{name}"' in config
    assert model.path == tmp_path / FILL_MASK
    assert (model.path / "1" / "model.py").read_text() == render_backend(FILL_MASK)
    assert model.settings() == settings
    assert json.loads((model.path / "1" / "serving.json").read_text())["info"] == {"source": "tiny"}

    updated = model.update(max_queue_delay_microseconds=2000)
    assert model.settings() == updated and updated.precision == "int8"
    assert "max_queue_delay_microseconds: 2000" in model.config_file.read_text()
    assert model.info() == {"source": "tiny"}


def test_copy_to_changes_settings_and_links_weights(tmp_path):
    source = ServedModelDir.in_repo(tmp_path / "repo", "embed")
    source.write(ServingSettings(task="embed", instance_count=1), info={"source": "tiny"})
    source.onnx_file.write_bytes(b"onnx")
    source.tokenizer_dir.mkdir()
    (source.tokenizer_dir / "tokenizer.json").write_text("{}")
    assert source.is_complete() and served_models(tmp_path / "repo") == [source]

    copy, = copy_repository(tmp_path / "repo", tmp_path / "copy", instance_count=2)

    assert copy.path == tmp_path / "copy" / "embed" and copy.is_complete()
    assert copy.settings().instance_count == 2 and source.settings().instance_count == 1
    assert "count: 2" in copy.config_file.read_text() and "count: 1" in source.config_file.read_text()
    assert copy.info() == {"source": "tiny"}
    assert copy.onnx_file.stat().st_ino == source.onnx_file.stat().st_ino  # hard link, not a copy
    assert (copy.tokenizer_dir / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match="instance_count"):
        source.copy_to(tmp_path / "bad", instance_count=0)
    assert not (tmp_path / "bad" / "embed").exists()  # invalid settings write nothing


def test_incomplete_model_names_what_is_missing(tmp_path):
    model = ServedModelDir.in_repo(tmp_path, "embed")
    model.write(ServingSettings(task="embed"))
    assert not model.is_complete() and model.missing_files() == ["embed/1/model.onnx"]


def test_embed_config_has_only_the_embedding_output():
    config = render_config_pbtxt(ServingSettings(task="embed"))
    assert f'name: "{contract.EMBEDDING_OUTPUT}"' in config
    assert contract.TOKENS_OUTPUT not in config


def test_folder_name_must_match_model_name(tmp_path):
    with pytest.raises(ConfigError, match="folder name"):
        ServedModelDir(tmp_path / "wrong").write(ServingSettings(task="embed"))


@pytest.mark.parametrize("overrides, message", [
    (dict(preferred_batch_sizes=(65,)), "preferred_batch_sizes"),
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
    ServedModelDir.in_repo(tmp_path, task).write(settings)
    committed = PROJECT_ROOT / "model_repository" / settings.model_name
    for relative in ("config.pbtxt", "1/model.py"):
        generated = (tmp_path / settings.model_name / relative).read_text()
        assert (committed / relative).read_text() == generated, (
            f"model_repository/{settings.model_name}/{relative} is out of date: "
            "run `python -m bertforge.served_model model_repository`")
