"""The export report as types: what an export built, measured, chose and wrote.

    report = read_report(repo / REPORT_FILE)        # any report file, written before these types too
    for name, target in report.tasks.items():       # every graph: fill_mask, embed, rerank, ...
        precision, variant = target.served          # repository mode: the one variant written
    write_report(path, report)                      # the one place a report file is written

Two layouts on disk, one shape in memory. An export writes `export_report.json` with a `tasks` map (one entry per
graph, `variants` by precision); one model added beside the others (a single task other than fill_mask and embed:
rerank, classify, embed_sparse) writes `export_report.<model>.json` flat, its one graph's `variants` and `chosen` at
the top level beside `task`. Both load into `ExportReport` with `tasks` filled; `task` set marks the flat layout.
(Reports written before one export could hold embed_sparse beside fill_mask/embed carry it nested, `embed_sparse`.)
Figures whose shape belongs to another module stay plain dicts: `parity` (export/parity.py), `definition`
(export/author_reference.py), `search` and `recipe` (export/int8_search.py), `config` (ExportConfig as TOML).
Keys this version does not know are kept in `extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertforge.files import write_json_atomically
from bertforge.served_model import REPORT_FILE

TASK_REPORT_FILE = "export_report.{model}.json"  # a task model's own report, beside the fill_mask/embed one


@dataclass(kw_only=True)
class Choice:
    """What `--precision` asked for and which variant is served, with why (auto: the int8 search vs fp32)."""

    requested: str
    precision: str | None  # None: no variant passed the gate (a task model's failed export)
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As in the report (and in serving.json's `info.chosen`)."""
        return {**self.extra, "requested": self.requested, "precision": self.precision, "reason": self.reason}


@dataclass(kw_only=True)
class VariantReport:
    """One precision of one graph: the file built (export.variants.describe) and its parity gate verdict."""

    passed: bool
    failures: list[str] = field(default_factory=list)  # one line per missed threshold
    parity: dict[str, Any] = field(default_factory=dict)  # export.parity.compare's figures
    precision: str | None = None
    bytes: int | None = None
    fused_ops: dict[str, int] | None = None
    op_counts: dict[str, int] | None = None
    recipe: dict[str, Any] | None = None  # int8: the quantization recipe (export.quantize)
    providers: list[str] | None = None  # the ONNX Runtime providers the gate ran it on
    search: dict[str, Any] | None = None  # int8: the recipe search (export.int8_search)
    latency_ms: float | None = None  # auto: the paired timing fp32 vs int8
    int8_search: dict[str, Any] | None = None  # auto chose fp32: the int8 search it ran first
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def gated(cls, details: dict[str, Any], parity: dict[str, Any], failures: list[str], **fields: Any) -> VariantReport:
        """A built variant (`details`: export.variants.build_variant's description) with its gate's verdict."""
        return _from_dict(cls, {**details, **fields, "parity": parity, "failures": failures, "passed": not failures})


@dataclass(kw_only=True)
class TargetReport:
    """One exported graph (a served task, or a plain Optimum-loadable one in --output mode) and its variants."""

    task: str
    graph: str | None = None  # "served" or "plain" (fill_mask/embed exports; task models have only served graphs)
    variants: dict[str, VariantReport] = field(default_factory=dict)  # by precision
    chosen: Choice | None = None  # precision auto (and every task model): what was served and why
    model_dir: str | None = None  # repository mode: where it was written
    serving: dict[str, Any] | None = None  # repository mode: the serving settings it was written with
    layer_norm: dict[str, Any] | None = None  # export.layer_norm: the residual LayerNorm's form, as timed
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        return [line for variant in self.variants.values() for line in variant.failures]

    @property
    def served(self) -> tuple[str, VariantReport]:
        """(precision, variant) served from a repository: the chosen one, else the only one built."""
        if self.chosen is not None and self.chosen.precision in self.variants:
            return self.chosen.precision, self.variants[self.chosen.precision]
        (precision, variant), = self.variants.items()
        return precision, variant


@dataclass(kw_only=True)
class ExportReport:
    """One export: the model, where it went, each graph's variants and verdicts, and what was written."""

    model: str
    destination: str | None = None  # None: variants built for a benchmark, nothing written
    task: str | None = None  # a task model's report (rerank, classify, embed_sparse): `tasks` holds just it
    tasks: dict[str, TargetReport] = field(default_factory=dict)
    mode: str | None = None  # "repository" or "output"
    config: dict[str, Any] | None = None  # the resolved ExportConfig, as saved to export_config.toml
    notes: list[str] | None = None
    cpu: str | None = None  # the CPU every gate ran on (bertforge.cpu.detect_cpu().summary())
    labels: list[str] | None = None  # classify / rerank: the head's labels
    max_length: int | None = None
    max_top_k: int | None = None
    definition: dict[str, Any] | None = None  # export.author_reference.definition_report
    gate_inputs: dict[str, Any] | None = None
    passed: bool | None = None
    seconds: float | None = None
    written: bool | None = None
    embed_sparse: ExportReport | None = None  # read from older reports only (embed_sparse was its own export)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        return [line for target in self.tasks.values() for line in target.failures]

    @property
    def target(self) -> TargetReport:
        """A task model's one graph (rerank, classify, embed_sparse)."""
        if self.task is None:
            raise ValueError(f"{self.model}: a fill_mask/embed report has several graphs ({list(self.tasks)}); "
                             "pick one from `tasks`")
        return self.tasks[self.task]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, in the layout this report was read from or made for (see the module doc)."""
        document = _fields(self)
        if self.task is not None:  # flat: the one graph's variants and choice at the top level
            target = document.pop("tasks")[self.task]
            document.update({key: value for key, value in target.items() if key not in ("task", "graph")})
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ExportReport:
        document = dict(document)
        if "tasks" not in document and "task" in document:  # a task model's flat report
            target = {key: document.pop(key) for key in ("variants", "chosen", "model_dir", "serving") if key in document}
            document["tasks"] = {document["task"]: {"task": document["task"], **target}}
        return _from_dict(cls, document)


def write_report(path: str | Path, report: ExportReport) -> None:
    """Write `report` to `path` atomically (a reader never sees half a report)."""
    write_json_atomically(path, report.to_dict())


def read_report(path: str | Path) -> ExportReport:
    """The report at `path` (`<repo>/export_report.json`, a task model's `export_report.<model>.json`, or an
    `--output` folder's), whichever version of bertforge wrote it. A folder means its `export_report.json`."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no export report at {path}; export a model there first (bertforge export)")
    return ExportReport.from_dict(json.loads(path.read_text()))


def task_report_file(model_name: str) -> str:
    return TASK_REPORT_FILE.format(model=model_name)


def report_file(report: ExportReport) -> str:
    """Where an export keeps `report`: `export_report.json`, or in a repository, for one model added beside the others
    (a task other than fill_mask and embed, exported alone), `export_report.<model>.json`."""
    if report.task is None or report.mode == "output":
        return REPORT_FILE
    return task_report_file((report.config or {}).get("name") or report.task)


# how each typed field is read back: the nested types, everything else as JSON gave it
_NESTED = {"variants": VariantReport, "tasks": TargetReport}
_SINGLE = {"chosen": Choice, "embed_sparse": ExportReport}


def _from_dict(cls: type, document: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    values: dict[str, Any] = {"extra": {key: value for key, value in document.items() if key not in names}}
    for key, value in document.items():
        if key not in names:
            continue
        if key in _NESTED and value is not None:
            value = {name: _from_dict(_NESTED[key], item) for name, item in value.items()}
        elif key in _SINGLE and value is not None:
            value = _SINGLE[key].from_dict(value) if _SINGLE[key] is ExportReport else _from_dict(_SINGLE[key], value)
        values[key] = value
    return cls(**values)


def _to_dict(value: Any) -> Any:
    """Dataclasses as dicts without their None fields, `extra` merged back in; a nested report in its layout."""
    if isinstance(value, (ExportReport, Choice)):  # their own layout (a flat task report, a null precision)
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    if isinstance(value, dict):
        return {key: _to_dict(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_dict(item) for item in value]
    return value


def _fields(value: Any) -> dict[str, Any]:
    document = {f.name: _to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != "extra" and getattr(value, f.name) is not None}
    return {**value.extra, **document}
