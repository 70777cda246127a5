"""Keyword options of `export_to_repository` / `export_onnx` -> an `ExportConfig`.

    config_from_options(model=..., repo=..., precision="auto", max_batch_size=8, tie_margin=0.1)

ExportConfig's own fields are taken as they are; a `ServingOptions` name goes to `serving`, a `ParityGates`
name to `gates` (or pass `serving=` / `gates=` whole); anything else is an error that lists the valid names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from export.config import ExportConfig, ParityGates
from export.errors import ExportError


def config_from_options(**fields: Any) -> ExportConfig:
    """ExportConfig from keyword options; ServingOptions names go to `serving`, gate names to `gates`."""
    from bertforge.served_model import ServingOptions, option_fields

    own = {f.name for f in dataclasses.fields(ExportConfig)}
    gate_names = {f.name for f in dataclasses.fields(ParityGates)}
    serving = fields.pop("serving", None)
    gates = fields.pop("gates", None)
    gate_values = {name: fields.pop(name) for name in list(fields) if name in gate_names}
    serving_values = {name: fields.pop(name) for name in list(fields) if name not in own and name in option_fields()}
    unknown = sorted(set(fields) - own)
    if unknown:
        raise ExportError(f"unknown export option(s) {unknown}; valid: {sorted(own | gate_names | set(option_fields()))}")
    if gates is None:
        gates = ParityGates(**gate_values)
    if serving is None:
        serving = ServingOptions(**serving_values)
    for name in ("calibration_file", "parity_file"):
        if fields.get(name) is not None:
            fields[name] = Path(fields[name])
    return ExportConfig(**fields, serving=serving, gates=gates)
