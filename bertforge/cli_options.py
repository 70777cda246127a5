"""The options every stage's CLI shares, declared once, and the one order in which they build its typed config.

    add_config_options(parser, config_help="...", set_example="train.max_steps=500", presets=CONFIG_DIR)
    config = build_config(load, args, environment=env_overrides(), flags=given({"grpc_port": args.grpc_port}))

Precedence, lowest first (a later layer wins, key by key):
    1. the config dataclass' defaults
    2. the config file (`--config FILE`) or a preset (`--preset NAME`, `--quick`: `<stage>/configs/<NAME>.toml`)
    3. the environment, where the stage reads one (serve: `BERTFORGE_SERVE_*`, serve/config.py)
    4. `--set KEY=VALUE`, in the order given (the value parsed as TOML)
    5. explicit flags (`--grpc-port 0`, `--precision fp32`, ...), as typed values
Every layer is an override of bertforge.config, so an unknown key or a wrong type fails naming the key, and
the dataclass' own checks run once, on the merged result. Imports nothing heavy (every `--help` uses it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bertforge.config import ConfigError, Override
from bertforge.paths import PROJECT_ROOT

__all__ = ["add_config_options", "build_config", "given", "config_source", "preset_file", "preset_names",
           "module_main"]

T = TypeVar("T")
# what builds a stage's config from (file, overrides): functools.partial(load_config, ServeConfig), load_train_config
Loader = Callable[[Path | None, Sequence[Override]], T]


def add_config_options(parser: argparse.ArgumentParser, *, set_example: str, config_help: str | None = None,
                       config_required: bool = False, presets: Path | None = None,
                       quick_help: str | None = None) -> None:
    """Declare `--config FILE` (with config_help), `--preset NAME` (with presets, the folder of `<NAME>.toml`;
    `--quick` with quick_help: the 'quick' preset) and `--set KEY=VALUE` (repeatable, collected in
    `args.overrides`). A file and a preset exclude each other: both name layer 2."""
    parser.set_defaults(presets_folder=presets)  # where build_config looks a --preset up
    source = parser.add_mutually_exclusive_group(required=config_required) if presets else parser
    if presets is not None and quick_help is not None:
        source.add_argument("--quick", action="store_true", help=quick_help)
    if presets is not None:
        source.add_argument("--preset", metavar="NAME",
                            help=f"{_shown(presets)}/<NAME>.toml ({', '.join(preset_names(presets))})")
    if config_help is not None:
        required = {} if presets else {"required": config_required}
        source.add_argument("--config", metavar="FILE", help=config_help, **required)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {set_example} (repeatable; the value is parsed "
                             "as TOML)")


def build_config(load: Loader[T], args: argparse.Namespace, *, environment: Sequence[Override] = (),
                 flags: Sequence[tuple[str, Any]] = ()) -> T:
    """The stage's typed config: defaults < file or preset < environment < `--set` < flags (see the module doc).

    args come from a parser set up by add_config_options; environment and flags are overrides in their order."""
    return load(config_source(args), [*environment, *args.overrides, *flags])


def given(flags: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The flags the user gave, as `(config key, typed value)` overrides; a value of None means not given."""
    return [(key, value) for key, value in flags.items() if value is not None]


def config_source(args: argparse.Namespace) -> Path | None:
    """Layer 2: the preset (`--quick`, `--preset NAME`) where the stage has presets, else `--config FILE`, else none."""
    presets = getattr(args, "presets_folder", None)
    if presets is not None and getattr(args, "quick", False):
        return preset_file(presets, "quick")
    if presets is not None and getattr(args, "preset", None):
        return preset_file(presets, args.preset)
    config = getattr(args, "config", None)
    return Path(config) if config else None


def preset_file(directory: Path, name: str) -> Path:
    """`<directory>/<name>.toml`; an unknown name is a ConfigError listing the available ones."""
    names = preset_names(directory)
    if name not in names:
        raise ConfigError(f"unknown preset {name!r} (no {_shown(directory)}/{name}.toml); available: "
                          f"{', '.join(names) or 'none'}")
    return directory / f"{name}.toml"


def preset_names(directory: Path) -> list[str]:
    return sorted(path.stem for path in Path(directory).glob("*.toml"))


def _shown(path: Path) -> str:
    """A path relative to the checkout when it is inside it (bench/configs), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def module_main(prog: str, description: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
                run_command: Callable[[argparse.Namespace], int], argv: Sequence[str] | None = None) -> int:
    """`python -m <module>` for a module that `bertforge` registers as a subcommand (its `add_arguments` and
    `run_command`): the same flags, and a project error as argparse's usage error (exit 2)."""
    from bertforge.errors import BertforgeError

    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except BertforgeError as error:
        parser.error(str(error))
