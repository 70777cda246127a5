"""`bertforge pipeline`: train then export in one command; a second call reuses the finished run."""

import json

import pytest

from tests.train.conftest import run_cli


@pytest.mark.slow
def test_pipeline_trains_exports_and_reuses(tiny_config_file, tmp_path, tmp_path_factory):
    run_dir, repo = tmp_path / "run", tmp_path / "repo"
    env = {"BERTFORGE_CACHE": str(tmp_path_factory.getbasetemp() / "bertforge-cache")}
    args = ("pipeline", "--config", str(tiny_config_file), "--run-dir", str(run_dir), "--repo", str(repo),
            "--set", "train.max_steps=20", "--precision", "fp32")
    first = run_cli(*args, env_extra=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run_dir / "model" / "model.safetensors").is_file()
    for model in ("fill_mask", "embed"):
        assert (repo / model / "1" / "model.onnx").is_file() and (repo / model / "config.pbtxt").is_file()
    report = json.loads((repo / "export_report.json").read_text())
    assert "fp32" in json.dumps(report)
    # The second call reuses the trained run (no new checkpoints) and re-exports
    checkpoints_before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    second = run_cli(*args, env_extra=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already trained" in second.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == checkpoints_before
    # A finished run of another model is not silently served under a config that asks for something else
    other = run_cli(*args, "--set", "model.num_hidden_layers=3", env_extra=env, timeout=600)
    assert other.returncode == 2 and "model.num_hidden_layers: 2 -> 3" in other.stderr, other.stderr[-2000:]
    assert "--run-dir" in other.stderr
