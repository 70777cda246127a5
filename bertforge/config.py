"""Typed stage configs loaded from TOML, with `--set section.key=value` overrides.

Every stage owns one dataclass (nested dataclasses become TOML tables). Unknown keys
and wrong types are errors that name the key; the resolved config is written back
to TOML next to whatever it produced. An override is a `key=value` string (`--set`,
the value parsed as TOML) or a `(key, value)` pair holding a typed value (a CLI flag);
bertforge/cli_options.py decides their order for every stage.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from bertforge.errors import ConfigError
from bertforge.files import write_text_atomically

__all__ = ["ConfigError", "Override", "load_config", "save_config", "from_dict", "to_dict", "read_toml",
           "apply_override", "parse_override"]

T = TypeVar("T")
Override = str | tuple[str, Any]  # "a.b=<TOML value>" as --set takes it, or ("a.b", typed value) from a flag


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[Override] = ()) -> T:
    """Build `cls` from a TOML file (optional) plus overrides applied in order (a later one wins)."""
    # Read the file, apply overrides on top, then build and validate the dataclass tree
    data = read_toml(path)
    for override in overrides:
        apply_override(data, override)
    return from_dict(cls, data, where=str(path) if path else "config")


def read_toml(path: str | Path | None) -> dict[str, Any]:
    """A TOML file as a dict ({} for no file); a missing or invalid file is a ConfigError."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from error


def apply_override(data: dict[str, Any], override: Override) -> None:
    """Set `a.b.c` in a nested dict: from `"a.b.c=value"` (value parsed as TOML, else taken as a string)
    or from a `("a.b.c", value)` pair, whose value is used as it is (checked when the dataclass is built)."""
    key, value = parse_override(override) if isinstance(override, str) else override
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {part!r} is a value, not a section")
    node[leaf] = value


def parse_override(override: str) -> tuple[str, Any]:
    """`"a.b=value"` -> `("a.b", value)`, the value parsed as TOML (`5`, `true`, `[1, 2]`, `"x"`), else a string."""
    if "=" not in override:
        raise ConfigError(f"--set expects key=value, got {override!r}")
    key, raw = override.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a (nested) dataclass from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{where}: {error}") from error


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass tree -> plain dict that TOML can write (None values are dropped)."""
    result: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            result[field.name] = to_dict(value)
        elif value is None:
            continue
        elif isinstance(value, Path):
            result[field.name] = str(value)
        elif isinstance(value, tuple):
            result[field.name] = list(value)
        else:
            result[field.name] = value
    return result


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as TOML (atomically, so a crash never leaves half a file)."""
    write_text_atomically(path, tomli_w.dumps(to_dict(config)))


def _convert(hint: Any, value: Any, where: str) -> Any:
    """Check/convert one value against its type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_hint = args[0] if args else Any
        items = [_convert(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        key_hint, value_hint = args or (Any, Any)
        return {_convert(key_hint, key, where): _convert(value_hint, item, f"{where}.{key}") for key, item in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: unsupported type {hint}")
