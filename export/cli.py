"""`bertforge export`: a BERT folder -> verified ONNX variants and a Triton model repository.

    bertforge export --model runs/demo/model [--repo model_repository] [--precision int8]
    bertforge export --model DIR --output DIR --precision all      # plain ONNX variants + report
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bertforge.cli_options import add_config_options, build_config, given

if TYPE_CHECKING:
    from export.report import ExportReport

PRECISION_HELP = ("auto (the fastest variant that passes the gate: int8 recipe search, else fp32) | fp32 | int8 (recipe "
                  "search, fails if none passes) | int8-static (calibrated) | fp16 (GPU); with --output also a comma list or 'all'")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a BERT checkpoint to verified ONNX and a Triton model repository",
        description="Export a Hugging Face BERT folder with Optimum, fuse and quantize it, check every variant "
                    "against PyTorch fp32 (a variant that misses its gate is not written), and write the Triton "
                    "model repository (fill_mask, embed) or, with --output, plain ONNX variants.")
    parser.add_argument("--model", default=None, help="Hugging Face or sentence-transformers folder of a supported encoder (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT, MPNet, ELECTRA, ModernBERT), e.g. runs/demo/model")
    parser.add_argument("--repo", default=None, help="Triton model repository to write (default: model_repository)")
    parser.add_argument("--output", default=None, help="write only ONNX variants + export_report.json here (no Triton files)")
    parser.add_argument("--precision", default=None, help=PRECISION_HELP + " (default: auto)")
    parser.add_argument("--tasks", default=None, help="comma list of fill_mask,embed,embed_sparse (default: "
                        "fill_mask,embed; embed_sparse, SPLADE vectors from the MLM head, is opt-in); a "
                        "*ForSequenceClassification folder exports rerank (one label) or classify (several)")
    parser.add_argument("--name", default=None, help="rerank/classify/embed_sparse: add the model under this name "
                        "(several models of a task in one repository; the API's `model` field picks one)")
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
    if report.task is None:
        _print_summary(report)
    else:  # rerank / classify / embed_sparse (export/task_models.py): its verdicts were printed as outcomes
        chosen = report.target.chosen
        print(f"{report.task}: precision {chosen.requested} chose {chosen.precision}: {chosen.reason}")
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

    from export.parity import judged_figures

    table = Table(title=f"bertforge export -> {report.destination}")
    for column in ("model", "precision", "fused ops", "parity", "size MB"):
        table.add_column(column)
    for name, target in report.tasks.items():
        for precision, variant in target.variants.items():
            source, parity = judged_figures(variant.parity, precision)
            if "masked_tokens" in parity and precision == "fp32":
                summary = f"top-1 {parity['top1_agreement']:.4f}, max|dp| {parity['max_abs_diff']:.1e} ({source})"
            elif "masked_tokens" in parity:
                summary = (f"tie-aware {parity['tie_aware_agreement']:.4f}, top-5 {parity['top5_containment']:.4f}, "
                           f"TV {parity.get('mean_total_variation', float('nan')):.4f} ({parity['masked_tokens']} masks)")
            else:
                summary = f"cos min {parity['min_cosine']:.5f} mean {parity['mean_cosine']:.5f} ({parity['texts']} texts)"
            recipe = (variant.recipe or {}).get("name")
            precision = f"{precision} ({recipe})" if recipe else precision
            fused = ",".join(f"{op}×{count}" for op, count in (variant.fused_ops or {}).items()) or "-"
            table.add_row(name, precision, fused, summary, f"{variant.bytes / 1e6:.1f}")
    Console().print(table)
    for name, target in report.tasks.items():
        if target.chosen is not None:
            print(f"{name}: precision auto chose {target.chosen.precision}: {target.chosen.reason}")
    for note in report.notes or []:
        print(f"note: {note}")
