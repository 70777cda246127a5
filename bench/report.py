"""Result files and tables shared by every benchmark: JSON with provenance, PNG plots, rich tables.

Every result JSON carries `machine`, `versions`, `git`, `command` and `config` next to its figures, so
two files can be compared later (`bertforge bench compare A.json B.json`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from bertforge.files import write_text_atomically
from bertforge.paths import PROJECT_ROOT
from bertforge.versions import installed_version

VERSIONED_PACKAGES = ("bertforge", "numpy", "onnxruntime", "tokenizers", "tritonclient", "nvidia-pytriton", "grpcio",
                      "torch", "transformers", "optimum", "onnx")
SCHEMA_VERSION = 1


def provenance(config: dict | None = None) -> dict:
    """Where and how a result was measured: machine, load, versions, git commit, command line, config."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bertforge", *sys.argv[1:]]) if Path(sys.argv[0]).name == "bertforge" else " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": list(load) if load else None},
        "versions": {name: version for name in VERSIONED_PACKAGES if (version := installed_version(name))},
        "git": git_state(),
        "config": config or {},
    }


def arguments_config(args: argparse.Namespace) -> dict:
    """A benchmark's command-line flags as the `config` of its provenance: JSON values (paths as text),
    without what argparse carries besides them (the subcommand's `run` function)."""
    return {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()
            if not callable(value)}


def git_state() -> dict:
    """The commit of the checkout and whether it had uncommitted changes (results of a dirty tree say so)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def write_results(results: dict, path: Path, plots: bool = True) -> list[Path]:
    """Write the JSON (atomically) and, for sweeps, the PNG plots next to it; returns the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load and "machine" in results:
        results["machine"]["load_average_at_end"] = list(load)
    write_text_atomically(path, json.dumps(results, indent=1, sort_keys=False) + "\n")
    written = [path]
    if plots and any(point.get("concurrency") for point in results.get("points", [])):
        written += plot_sweep(results, path.with_suffix(""))
    return written


def plot_sweep(results: dict, stem: Path) -> list[Path]:
    """<stem>_throughput.png (req/s vs concurrency) and <stem>_latency.png (p50/p90/p99 vs concurrency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = {}
    for point in results["points"]:
        if point.get("concurrency"):
            served.setdefault(point["contender"], []).append(point)
    in_process = [point for point in results["points"] if point.get("in_process")]
    title = f"{results.get('task', '')} — {Path(results.get('repo') or '').name or results.get('url')}"
    files = []
    # Throughput: one line per served variant, in-process contenders as horizontal references
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for contender, points in served.items():
        points = sorted(points, key=lambda point: point["concurrency"])
        axis.plot([p["concurrency"] for p in points], [p["requests_per_s"] for p in points], marker="o", label=contender)
    for point in in_process:
        axis.axhline(point["requests_per_s"], linestyle=":", linewidth=1, color="grey")
        axis.annotate(point["contender"], (1, point["requests_per_s"]), fontsize=7, color="grey")
    axis.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s", title=f"throughput, {title}")
    axis.legend()
    files.append(_save(figure, stem.parent / f"{stem.name}_throughput.png"))
    # Latency percentiles: one colour per variant, one line style per percentile
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, (contender, points) in enumerate(served.items()):
        points = sorted(points, key=lambda point: point["concurrency"])
        for key, style in (("p50_ms", "-"), ("p90_ms", "--"), ("p99_ms", ":")):
            axis.plot([p["concurrency"] for p in points], [p[key] for p in points], style, marker="o",
                      color=f"C{index}", label=f"{contender} {key[:3]}")
    axis.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)",
             title=f"latency percentiles, {title}")
    axis.legend(fontsize=7)
    files.append(_save(figure, stem.parent / f"{stem.name}_latency.png"))
    return files


def print_serve_table(results: dict) -> None:
    from rich.table import Table

    peak = results.get("gemm_peak") or {}
    kind = peak.get("compared_with", "fp32")
    unit = "GOP/s" if kind == "int8" else "GFLOP/s"
    table = Table(title=f"bertforge bench serve: {results['task']}, texts: {results['texts']['count']} "
                        f"(median {results['texts']['tokens_median']} tokens), {results['serving'].get('precision')}")
    for column in ("contender", "load", "req/s", "tokens/s", unit, "% int8 peak", "% fp32 peak", "p50 ms", "p90 ms",
                   "p99 ms", "max ms", "errors", "avg batch", "client CPU"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for point in results["points"]:
        fractions = point.get("peak_fractions") or {}
        table.add_row(point["contender"], _load_label(point), f"{point['requests_per_s']:,.1f}",
                      f"{point['tokens_per_s']:,.0f}", f"{point.get('gflops_per_s', 0.0):,.1f}",
                      *(_percent(fractions.get(name)) for name in ("int8", "fp32")),
                      *(_ms(point.get(key)) for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
                      str(point["errors"]), f"{point['avg_batch_size']:.1f}" if point.get("avg_batch_size") else "",
                      "" if point.get("client_cpu_cores") is None else f"{point['client_cpu_cores']:.2f} cores")
    console = wide_console()
    console.print(table)
    print_time_split(results["points"], console)
    if peak:
        rates = ", ".join(f"{name} {rate:,.0f}" for name, rate in peak["gflops_per_s"].items())
        if peak.get("int8_by_library"):
            rates += " (int8 by kernel: " + ", ".join(f"{name} {rate:,.0f}" for name, rate in
                                                      peak["int8_by_library"].items()) + ")"
        console.print(f"GEMM peak measured in this run ({peak['threads']} threads, {peak['size']}² products): {rates} "
                      f"G(FL)OP/s; {unit} = model arithmetic of the answered texts' real tokens per second", style="dim")
    for name, goal in results.get("goals", {}).items():
        if goal["value"] is not None:
            verdict = "met" if goal["met"] else "NOT met"
            console.print(f"goal {name}: {goal['value']:.2f} (target {goal['target']}, {verdict}) — {goal['meaning']}")
    for name, variant in (results.get("variants") or {}).items():
        for level, by_versus in ((key, value) for key, value in variant.items() if key != "settings"):
            for versus, ratios in by_versus.items():
                throughput, p99 = ratios["throughput"], ratios["p99"]
                console.print(f"variant {name} {variant['settings']} at {level}, {versus}: throughput "
                              f"{throughput['value']:.2f}x (rounds {', '.join(f'{v:.2f}' for v in throughput['per_round'])}), "
                              f"p99 {p99['value']:.2f}x (rounds {', '.join(f'{v:.2f}' for v in p99['per_round'])})")
    console.print("in-process latency is per call (one text for _b1 rows, one batch of N for _bN rows)", style="dim")


def print_time_split(points: list[dict], console) -> None:
    """Where the time goes: in process per call (parse, tokenize, plan, pad, ONNX Runtime, the rest of our Python),
    served per request from Triton's statistics (queue, inputs, the backend's execute, outputs, outside the
    server: gRPC and the client) and per executed merged batch."""
    from rich.table import Table

    in_process = [point for point in points if point.get("phases_ms")]
    if in_process:
        phases = list(in_process[0]["phases_ms"])
        table = Table(title="in process: ms per call (one text for _b1, one batch for _bN)")
        for column in ("contender", *phases, "ONNX runs per call", "padding share"):
            table.add_column(column, justify="left" if column == "contender" else "right")
        for point in in_process:
            table.add_row(point["contender"], *(f"{point['phases_ms'][name]:.3f}" for name in phases),
                          f"{point['onnx_runs_per_call']:.2f}", f"{100 * point['padding_share']:.1f} %")
        console.print(table)
    served = [point for point in points if point.get("server_ms")]
    if served:
        table = Table(title="served: ms per request from Triton's statistics (execute: per merged batch)")
        names = ("queue", "compute_input", "compute_infer", "compute_output", "server", "outside_server")
        for column in ("contender", "load", "client mean", *names, "execute per batch", "avg batch"):
            table.add_column(column, justify="left" if column == "contender" else "right")
        for point in served:
            split = point["server_ms"]
            table.add_row(point["contender"], _load_label(point), _ms(point.get("mean_ms"), 2),
                          *(_ms(split.get(name), 2) for name in names), _ms(split.get("execute_per_batch"), 2),
                          f"{point['avg_batch_size']:.1f}" if point.get("avg_batch_size") else "")
        console.print(table)


def print_compare_table(rows: list[dict], first: str, second: str) -> None:
    from rich.table import Table

    table = Table(title=f"{first} -> {second}")
    for column in ("contender", "load", "req/s", "ratio", "p99 ms", "ratio", "verdict"):
        table.add_column(column, justify="left" if column in ("contender", "verdict") else "right")
    for row in rows:
        before, after = row["requests_per_s"]
        p99_before, p99_after = row["p99_ms"]
        table.add_row(row["contender"], str(row["concurrency"] or ""), f"{before:,.1f} -> {after:,.1f}",
                      _ratio(row["throughput_ratio"]), f"{_ms(p99_before)} -> {_ms(p99_after)}", _ratio(row["p99_ratio"]),
                      "REGRESSION: " + ", ".join(row["reasons"]) if row["regression"] else "ok")
    wide_console().print(table)


def wide_console():
    """A rich console that does not squeeze tables to 80 columns when the output is a pipe or a file."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 150
    return console


def _load_label(point: dict) -> str:
    if point.get("concurrency"):
        return f"c={point['concurrency']}"
    if point.get("request_rate"):
        return f"{point['request_rate']:g}/s"
    return f"batch {point.get('batch_size', 1)}"


def _ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path
