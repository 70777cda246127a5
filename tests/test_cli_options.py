"""bertforge/cli_options.py: the config layers in their one order, the shared flags, presets and their errors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from bertforge.cli_options import add_config_options, build_config, given, preset_file
from bertforge.config import ConfigError, load_config


@dataclass(kw_only=True)
class Section:
    by_set: int = 1
    by_flag: int = 1


@dataclass(kw_only=True)
class Layers:
    """One field per layer: each is set by its layer and by every layer below it, so the highest one must win."""

    by_default: int = 1
    by_file: int = 1
    by_environment: int = 1
    by_set: int = 1
    by_flag: int = 1
    path: Path = Path("default")
    section: Section = field(default_factory=Section)


def _parser(presets: Path | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stage")
    add_config_options(parser, config_help="config TOML", set_example="section.by_set=4", presets=presets,
                       quick_help="the quick preset" if presets else None)
    parser.add_argument("--flag", type=int)
    parser.add_argument("--path")
    return parser


def _build(args: argparse.Namespace) -> Layers:
    environment = [("by_environment", 3), ("by_set", 3), ("by_flag", 3)]  # as serve's env_overrides() gives them
    flags = given({"by_flag": args.flag, "section.by_flag": args.flag, "path": args.path and Path(args.path)})
    return build_config(partial(load_config, Layers), args, environment=environment, flags=flags)


def test_precedence_defaults_file_environment_set_flags(tmp_path):
    config_file = tmp_path / "stage.toml"
    config_file.write_text("by_file = 2\nby_environment = 2\nby_set = 2\nby_flag = 2\n[section]\nby_flag = 2\n")
    args = _parser().parse_args(["--config", str(config_file), "--set", "by_set=9", "--set", "by_set=4",
                                 "--set", "by_flag=4", "--set", "section.by_set=4", "--flag", "5"])
    config = _build(args)
    assert (config.by_default, config.by_file, config.by_environment, config.by_set, config.by_flag) == (1, 2, 3, 4, 5)
    assert (config.section.by_set, config.section.by_flag) == (4, 5)  # nested keys: the same order
    assert config.path == Path("default")  # a flag not given (None) changes nothing
    # flags are typed values, not TOML text: a path with quotes and '=' arrives as it is
    assert _build(_parser().parse_args(["--path", 'a "b"=c'])).path == Path('a "b"=c')


def test_a_preset_is_the_file_layer_and_excludes_config(tmp_path, capsys):
    (tmp_path / "quick.toml").write_text("by_file = 2\nby_set = 2\n")
    (tmp_path / "full.toml").write_text("by_file = 7\n")
    quick = _build(_parser(tmp_path).parse_args(["--quick", "--set", "by_set=4"]))
    assert (quick.by_file, quick.by_set) == (2, 4)
    assert _build(_parser(tmp_path).parse_args(["--preset", "full"])).by_file == 7
    with pytest.raises(ConfigError, match=r"unknown preset 'fast' \(no .*/fast.toml\); available: full, quick"):
        _build(_parser(tmp_path).parse_args(["--preset", "fast"]))
    with pytest.raises(SystemExit) as exit_info:  # both name the file layer: refused, not one silently ignored
        _parser(tmp_path).parse_args(["--preset", "full", "--config", "x.toml"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_preset_file_lists_what_exists(tmp_path):
    (tmp_path / "one.toml").write_text("")
    assert preset_file(tmp_path, "one") == tmp_path / "one.toml"
    with pytest.raises(ConfigError, match="available: one"):
        preset_file(tmp_path, "../one")  # a name, not a path
