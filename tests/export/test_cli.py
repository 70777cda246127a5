"""`bertforge export`: --help, flags + --config/--set, clear errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

from bertforge import contract
from bertforge.cli import main


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
    settings = json.loads((repo / contract.EMBED_MODEL / "1" / "serving.json").read_text())["settings"]
    assert settings["precision"] == "fp32"  # the flag wins over the file
    assert settings["pooling"] == "cls" and settings["instance_count"] == 2
    assert "count: 2" in (repo / contract.EMBED_MODEL / "config.pbtxt").read_text()
    assert not (repo / contract.FILL_MASK_MODEL).exists()
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


def test_presets_load():
    from pathlib import Path

    from export.config import load_export_config
    from serve.repository import ServingSettings

    presets = sorted((Path(__file__).resolve().parents[2] / "export" / "configs").glob("*.toml"))
    assert presets
    for preset in presets:
        config = load_export_config(preset)
        ServingSettings(task="embed", **config.serving)  # every serving key is a real ServingSettings field
        assert len(config.precisions) == 1
