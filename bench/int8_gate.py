"""The int8 gate and recipe search on several models, side by side: every candidate's figures and speed.

    python -m bench.int8_gate --model runs/demo/model --model /path/to/sentence-bert [--outliers] \
        [--json bench/results/int8_gate.json]

For each model (and, with --outliers, a copy with planted outlier dimensions: bertforge/testing.py) the exporter
builds the fused fp32 graph and runs the int8 recipe search exactly as `bertforge export --precision int8`
does; the table shows each recipe's gate figures on real text (tie-aware agreement, top-5 containment, mean
total variation for fill-mask; min/mean cosine for embeddings), its latency on an 8 x 128 batch, and the
winner. This is the measurement behind the gate's thresholds (docs/export.md, "The gate").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bertforge.tasks import FILL_MASK

if TYPE_CHECKING:
    from export.report import TargetReport


def run(models: list[Path], outliers: bool = False, json_path: Path | None = None) -> dict:
    from bertforge.testing import plant_outlier_dimensions
    from export.config import ExportConfig
    from export.exporter import build_checked_variants

    results: dict = {"models": {}}
    with tempfile.TemporaryDirectory(prefix="bertforge-int8-gate-") as scratch:
        cases = [(model.name if model.name != "model" else model.parent.name, model) for model in models]
        if outliers:
            cases += [(f"{name}+outliers", plant_outlier_dimensions(model, Path(scratch) / f"{name}-outliers"))
                      for name, model in list(cases)]
        for name, model in cases:
            started = time.perf_counter()
            config = ExportConfig(model=model, repo=None, output=Path(scratch) / "unused", precision="fp32,int8",
                                  progress=False)
            _, report = build_checked_variants(config, Path(scratch) / name)
            results["models"][name] = {"path": str(model), "seconds": round(time.perf_counter() - started, 1),
                                       "tasks": {task: _task_rows(target) for task, target in report.tasks.items()}}
            _print_model(name, results["models"][name])
    if json_path:
        from bench.report import write_results

        write_results(results, json_path, plots=False)
        print(f"wrote {json_path}")
    return results


def _task_rows(target: TargetReport) -> dict:
    fp32, int8 = target.variants["fp32"], target.variants["int8"]
    rows = [{"recipe": "fp32 (fused)", "passed": fp32.passed, **_figures(fp32.parity, "fp32")}]
    for candidate in (int8.search or {}).get("candidates", []):
        if "passed" in candidate:
            rows.append({"recipe": candidate["name"], "passed": candidate["passed"], "latency_ms": candidate.get("latency_ms"),
                         "kept_fp32": len(candidate["keep_fp32"]), **_figures(candidate["parity"], "int8")})
    return {"winner": (int8.recipe or {}).get("name"), "rows": rows, "search_seconds": (int8.search or {}).get("seconds")}


def _figures(parity: dict, precision: str) -> dict:
    from export.parity import judged_figures

    _, figures = judged_figures(parity, precision)
    keys = ("tie_aware_agreement", "top1_agreement", "top5_containment", "mean_total_variation", "masked_tokens",
            "min_cosine", "mean_cosine", "texts")
    return {key: figures[key] for key in keys if key in figures}


def _print_model(name: str, result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    for task, summary in result["tasks"].items():
        table = Table(title=f"{name} {task}: winner {summary['winner']} (search {summary['search_seconds']} s)")
        fill = task == FILL_MASK
        columns = ["recipe", "gate"] + (["tie-aware", "top-1", "top-5", "mean TV", "masks"] if fill
                                        else ["min cos", "mean cos", "texts"]) + ["ms / 8x128"]
        for column in columns:
            table.add_column(column)
        for row in summary["rows"]:
            values = ([row.get("tie_aware_agreement"), row.get("top1_agreement"), row.get("top5_containment"),
                       row.get("mean_total_variation"), row.get("masked_tokens")] if fill
                      else [row.get("min_cosine"), row.get("mean_cosine"), row.get("texts")])
            cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in values]
            latency = row.get("latency_ms")
            table.add_row(row["recipe"], "pass" if row["passed"] else "FAIL", *cells,
                          f"{latency:.2f}" if latency else "-")
        Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.int8_gate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="Hugging Face BERT folder (repeatable)")
    parser.add_argument("--outliers", action="store_true", help="also each model with planted outlier dimensions")
    parser.add_argument("--json", default="bench/results/int8_gate.json")
    args = parser.parse_args(argv)
    run([Path(model) for model in args.model], outliers=args.outliers, json_path=Path(args.json) if args.json else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
