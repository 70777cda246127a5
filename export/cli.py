"""`bertforge export`: a BERT folder -> verified ONNX variants and a Triton model repository.

    bertforge export --model runs/demo/model [--repo model_repository] [--precision int8]
    bertforge export --model DIR --output DIR --precision all      # plain ONNX variants + report
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bertforge.cli_options import add_config_options, build_config, given
from bertforge.tasks import TASKS

if TYPE_CHECKING:
    from export.report import ExportReport

PRECISION_HELP = ("auto (the fastest variant that passes the gate: int8 recipe search, else fp32) | fp32 | int8 (recipe "
                  "search, fails if none passes) | int8-static (calibrated) | fp16 (GPU); with --output also a comma list or 'all'")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a BERT checkpoint to verified ONNX and a Triton model repository",
        description="Export a Hugging Face or sentence-transformers folder with Optimum, fuse and quantize it, check every variant "
                    "against its reference (a variant that misses its gate is not written), and write the Triton "
                    "model repository (the tasks the folder exports: fill_mask and embed from a masked-LM folder; "
                    "docs/tasks.md) or, with --output, plain ONNX variants.")
    parser.add_argument("--model", default=None, help="Hugging Face or sentence-transformers folder of a supported encoder (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT, MPNet, ELECTRA, ModernBERT), e.g. runs/demo/model")
    parser.add_argument("--repo", default=None, help="Triton model repository to write (default: model_repository)")
    parser.add_argument("--output", default=None, help="write only ONNX variants + export_report.json here (no Triton files)")
    parser.add_argument("--precision", default=None, help=PRECISION_HELP + " (default: auto)")
    defaults = "; ".join(f"{kind}: {','.join(name for name, task in TASKS.items() if kind in task.defaults_for)}"
                         for kind in dict.fromkeys(kind for task in TASKS.values() for kind in task.defaults_for))
    parser.add_argument("--tasks", default=None, help=f"comma list of {','.join(TASKS)} (default: what the kind of "
                        f"folder exports, bertforge/tasks.py: {defaults})")
    parser.add_argument("--name", default=None, help="one task other than fill_mask/embed: add the model under this "
                        "name (several models of a task in one repository; the API's `model` field picks one)")
    parser.add_argument("--pooling", default=None,
                        help="embedding pooling: sentence-transformers modes (cls, mean, max, mean_sqrt_len_tokens, "
                             "weightedmean, lasttoken) joined by '+' (default: the folder's 1_Pooling, else mean; "
                             "contradicting the folder is honoured with a warning)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="L2-normalise embeddings (default: as the folder defines it: a Normalize module, else no)")
    parser.add_argument("--no-optimize", dest="optimize", action="store_false", default=None,
                        help="skip ONNX Runtime fusions (Attention, SkipLayerNorm, Gelu)")
    parser.add_argument("--calibration-file", default=None, help="text for int8-static calibration (.txt or .jsonl)")
    parser.add_argument("--parity-file", default=None, help="held-out text for the parity gate (.txt or .jsonl)")
    add_config_options(parser, config_help="export config TOML (see docs/export.md; presets: export/configs/)",
                       set_example="serving.instance_count=2")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from export.config import load_export_config

    config = build_config(load_export_config, args, flags=_flags(args))
    return _run_with_progress(config, quiet=args.quiet)


def _flags(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The flags given, as typed config values (they win over --config and --set)."""
    from pathlib import Path

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    from export.precision import Precision

    # --precision parsed here, so a misspelling fails before the config loads; the config keeps its text
    precision = None if args.precision is None else Precision.parse(args.precision).text
    flags = given({"name": args.name, "precision": precision, "pooling": args.pooling, "normalize": args.normalize,
                   "optimize": args.optimize, "model": path(args.model), "calibration_file": path(args.calibration_file),
                   "parity_file": path(args.parity_file), "repo": path(args.repo),
                   "tasks": None if args.tasks is None else tuple(task.strip() for task in args.tasks.split(",")
                                                                   if task.strip())})
    if args.output is not None:  # plain ONNX variants, no repository
        flags += [("output", Path(args.output)), ("repo", None)]
    return flags


def _run_with_progress(config, quiet: bool) -> int:
    from rich.console import Console

    from export import run_export

    console = Console(stderr=True, quiet=quiet)
    with console.status("[bold]exporting…") as status:
        report = run_export(config, progress=_StatusProgress(console, status))
    _print_summary(report)
    return 0


class _StatusProgress:
    """Steps on the status line, outcomes (gate verdicts, choices, notes, what was written) kept on screen."""

    def __init__(self, console, status):
        self.console, self.status = console, status

    def step(self, message: str) -> None:
        self.status.update(message)

    def outcome(self, message: str) -> None:
        self.status.update(message)
        self.console.print(f"[export] {message}", highlight=False, markup=False, soft_wrap=True)


def _print_summary(report: ExportReport) -> None:
    from rich.console import Console
    from rich.table import Table

    from export.task_exporter import exporter_class

    table = Table(title=f"bertforge export -> {report.destination}")
    for column in ("model", "precision", "fused ops", "parity", "size MB"):
        table.add_column(column)
    for name, target in report.tasks.items():
        for precision, variant in target.variants.items():
            summary = exporter_class(target.task).summary(variant.parity, precision) if variant.parity else "-"
            recipe = (variant.recipe or {}).get("name")
            shown = f"{precision} ({recipe})" if recipe else precision
            fused = ",".join(f"{op}×{count}" for op, count in (variant.fused_ops or {}).items()) or "-"
            size = f"{variant.bytes / 1e6:.1f}" if variant.bytes else "-"
            table.add_row(name, shown, fused, summary, size)
    Console().print(table)
    for name, target in report.tasks.items():
        if target.chosen is not None:
            print(f"{name}: precision {target.chosen.requested} chose {target.chosen.precision}: {target.chosen.reason}")
    for note in report.notes or []:
        print(f"note: {note}")
