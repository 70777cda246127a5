"""Every stage's CLI through bertforge/cli_options.py: typed flags over --set, --set over the environment and the
file, and an unknown --set key failing with one line naming it, in every stage."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest

from bertforge.cli import build_parser, main
from bertforge.cli_options import build_config
from bertforge.config import load_config

DEMO = str(Path(__file__).resolve().parents[1] / "train" / "configs" / "demo.toml")


def test_serve_flags_win_over_set_environment_and_file(tmp_path):
    from serve.cli import _flags
    from serve.config import ServeConfig, env_overrides

    config_file = tmp_path / "serve.toml"
    config_file.write_text("grpc_port = 9101\nhttp_port = 9102\nmetrics_port = 9103\n[api]\nport = 9104\n")
    environ = {"BERTFORGE_SERVE_HTTP_PORT": "9202", "BERTFORGE_SERVE_METRICS_PORT": "9203",
               "BERTFORGE_SERVE_API_PORT": "9204"}
    args = build_parser().parse_args(["serve", "--config", str(config_file), "--set", "metrics_port=9303",
                                      "--set", "api.port=9304", "--api-port", "9404", "--no-api"])
    config = build_config(partial(load_config, ServeConfig), args, environment=env_overrides(environ),
                          flags=_flags(args))
    assert (config.grpc_port, config.http_port, config.metrics_port, config.api.port) == (9101, 9202, 9303, 9404)
    assert config.api.enabled is False


def test_export_output_flag_drops_the_repository(tmp_path):
    from export.cli import _flags
    from export.config import load_export_config

    args = build_parser().parse_args(["export", "--model", str(tmp_path), "--output", str(tmp_path / "onnx"),
                                      "--tasks", "embed", "--set", "precision=int8", "--precision", "fp32"])
    config = build_config(load_export_config, args, flags=_flags(args))
    assert (config.output, config.repo, config.tasks, config.precision) == (tmp_path / "onnx", None, ("embed",), "fp32")


def test_bench_flags_are_typed_config_values():
    from bench.cli import _config, _serve_flags
    from bench.config import CONFIG_DIR

    args = build_parser().parse_args(["bench", "serve", "--quick", "--concurrency", "2, 8", "--length", "fixed",
                                      "--no-baselines", "--set", "rounds=3", "--rounds", "1", "--no-plots"])
    config = _config(args, "serve", _serve_flags(args))
    assert config.load.concurrency == (2, 8) and config.texts.length == "fixed" and config.rounds == 1
    assert not (config.baselines.pipeline or config.baselines.onnxruntime or config.baselines.batching_off)
    assert config.plots is False
    assert config.load.max_seconds == load_config(type(config), CONFIG_DIR / "quick.toml").load.max_seconds


@pytest.mark.parametrize("command", [
    ["train", "--config", DEMO],
    ["pipeline", "--config", DEMO, "--skip-export"],
    ["export", "--model", "runs/none"],
    ["serve", "--grpc-port", "0"],
    ["bench", "serve", "--repo", "none", "--no-plots"],
    ["bench", "tune", "--repo", "none"],
])
def test_an_unknown_set_key_fails_naming_it_in_every_stage(command, monkeypatch, capsys):
    for variable in [name for name in os.environ if name.startswith("BERTFORGE_SERVE_")]:
        monkeypatch.delenv(variable)
    assert main([*command, "--set", "colour_of_the_sky=1"]) == 2
    error = capsys.readouterr().err
    assert "unknown key(s) ['colour_of_the_sky']" in error and len(error.strip().splitlines()) == 1, error


def test_set_without_equals_is_a_clear_error(capsys):
    assert main(["export", "--model", "runs/none", "--set", "precision"]) == 2
    assert "--set expects key=value, got 'precision'" in capsys.readouterr().err


def test_bench_concurrency_must_be_integers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "serve", "--concurrency", "1,four"])
    assert exit_info.value.code == 2 and "expected comma-separated integers" in capsys.readouterr().err
