"""`bertforge export`: --help, flags + --config/--set, clear errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bertforge.cli import main
from bertforge.tasks import EMBED, FILL_MASK


def test_help_lists_flags():
    result = subprocess.run([sys.executable, "-m", "bertforge.cli", "export", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--model", "--repo", "--output", "--precision", "--config", "--set", "--pooling", "--normalize"):
        assert flag in result.stdout


def test_config_file_set_and_flags(tmp_path, tiny_bert_dir, capsys):
    config = tmp_path / "export.toml"
    config.write_text('precision = "int8"\ntasks = ["embed"]\n[serving]\ninstance_count = 2\n')
    repo = tmp_path / "repo"
    code = main(["export", "--model", str(tiny_bert_dir), "--repo", str(repo), "--config", str(config),
                 "--set", "pooling=cls", "--precision", "fp32", "--quiet"])
    assert code == 0
    settings = json.loads((repo / EMBED / "1" / "serving.json").read_text())["settings"]
    assert settings["precision"] == "fp32"  # the flag wins over the file
    assert settings["pooling"] == "cls" and settings["instance_count"] == 2
    assert "count: 2" in (repo / EMBED / "config.pbtxt").read_text()
    assert not (repo / FILL_MASK).exists()
    assert (repo / "export_config.toml").is_file()
    assert "fp32" in capsys.readouterr().out  # the summary table


def test_errors_exit_non_zero_with_message(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "missing"), "--repo", str(tmp_path / "repo")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path), "--set", "colour=blue"]) == 2
    assert "unknown key(s) ['colour']" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path), "--precision", "int4"]) == 2
    assert "'int4' is not one of" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_misspelt_serving_key_fails_when_the_config_loads(tmp_path):
    from bertforge.config import ConfigError
    from export.config import load_export_config

    with pytest.raises(ConfigError, match=r"config.serving: unknown key\(s\) \['max_batch_sise'\]"):
        load_export_config(None, ["serving.max_batch_sise=16"])
    with pytest.raises(ConfigError, match="serving.instance_count must be >= 1"):
        load_export_config(None, ["serving.instance_count=0"])


def test_presets_load():
    from pathlib import Path

    from bertforge.served_model import ServingOptions
    from export.config import load_export_config

    presets = sorted((Path(__file__).resolve().parents[2] / "export" / "configs").glob("*.toml"))
    assert presets
    for preset in presets:
        config = load_export_config(preset)
        assert isinstance(config.serving, ServingOptions)  # typed and checked when the preset loads
        assert len(config.precisions) == 1
