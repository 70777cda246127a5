"""`bertforge bench tune`: try Triton scheduling settings on a repository copy, pick the best under a p99 bound.

What Triton's model_analyzer does, in small: for every (max_queue_delay_microseconds, preferred batch sizes,
instance count, ONNX Runtime intra-op threads) of the grid, restart tritonserver on a copy of the repository with that setting, run one
closed-loop point at `tune.concurrency`, and report the highest throughput whose p99 latency stays within
`tune.p99_bound_ms` (error-free trials only). The original repository is never modified.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.config import BenchConfig
from bench.load import measure_served_point
from bench.serving import request_texts, serving_document, start_server, variant_repository
from bench.stats import pick_best


def run_tuner(config: BenchConfig, repo: Path, log: Callable[[str], None] = print) -> dict:
    """Every grid setting measured once (the order is the grid's); returns trials, the pick and the bound."""
    tune, load = config.tune, config.load
    texts = request_texts(config, repo)
    trials = []
    grid = list(itertools.product(tune.delays_us, tune.preferred_batch_sizes, tune.instance_counts,
                                  tune.intra_op_threads, tune.max_batch_sizes or (None,),
                                  tune.min_batch_fills or (None,)))
    log(f"[tune] {len(grid)} settings, {tune.concurrency} clients, {tune.max_seconds:g} s each, "
        f"p99 bound {tune.p99_bound_ms:g} ms")
    for delay, preferred, instances, threads, max_batch, fill in grid:
        setting = {"max_queue_delay_microseconds": delay, "preferred_batch_sizes": list(preferred),
                   "instance_count": instances, "intra_op_threads": threads}
        setting |= {key: value for key, value in (("max_batch_size", max_batch), ("min_batch_fill", fill))
                    if value is not None}  # only the ones varied: the rest stay as exported
        with tempfile.TemporaryDirectory(prefix="bertforge-tune-") as scratch:
            copy = variant_repository(repo, Path(scratch), config.task, **(setting | {
                "preferred_batch_sizes": tuple(preferred)}))
            with start_server(copy, lambda line: None, "tuning") as url:
                point = measure_served_point(url, config.task, texts, concurrency=tune.concurrency,
                                             max_requests=tune.max_requests, max_seconds=tune.max_seconds,
                                             warmup_seconds=load.warmup_seconds, timeout_s=load.timeout_s,
                                             top_k=load.top_k)
        trials.append({"contender": setting_label(setting), "setting": setting} | point)
        log(f"  {setting_label(setting):<48} {point['requests_per_s']:8.1f} req/s  p99 {point['p99_ms']:.1f} ms  "
            f"avg batch {point['avg_batch_size'] or 0:.1f}  errors {point['errors']}")
    best = pick_best(trials, tune.p99_bound_ms)
    return {"benchmark": "tune", "task": config.task, "repo": str(repo), "serving": serving_document(repo, config.task),
            "texts": texts.summary(), "p99_bound_ms": tune.p99_bound_ms, "concurrency": tune.concurrency,
            "points": trials, "best": best}


def setting_label(setting: dict) -> str:
    preferred = ",".join(str(size) for size in setting["preferred_batch_sizes"]) or "none"
    varied = "".join(f" {name}={setting[key]}" for key, name in (("max_batch_size", "max_batch"),
                                                                  ("min_batch_fill", "fill")) if key in setting)
    return (f"delay={setting['max_queue_delay_microseconds']}us pref={preferred} inst={setting['instance_count']} "
            f"threads={setting['intra_op_threads'] or 'default'}{varied}")


def print_tune_table(results: dict) -> None:
    from rich.table import Table

    from bench.report import wide_console

    best = results["best"]
    table = Table(title=f"bertforge bench tune: {results['task']}, {results['concurrency']} clients, "
                        f"p99 bound {results['p99_bound_ms']:g} ms")
    for column in ("delay µs", "preferred", "instances", "ORT threads", "max batch", "fill", "req/s", "p50 ms",
                   "p99 ms", "avg batch", "errors", ""):
        table.add_column(column, justify="right")
    for trial in results["points"]:
        setting = trial["setting"]
        within = trial["p99_ms"] is not None and trial["p99_ms"] <= results["p99_bound_ms"]
        mark = "best" if best and trial["contender"] == best["contender"] else ("" if within else "over bound")
        table.add_row(str(setting["max_queue_delay_microseconds"]),
                      ",".join(map(str, setting["preferred_batch_sizes"])) or "none", str(setting["instance_count"]),
                      str(setting["intra_op_threads"] or "default"),
                      str(setting.get("max_batch_size", "as exported")), str(setting.get("min_batch_fill", "as exported")),
                      f"{trial['requests_per_s']:,.1f}", f"{trial['p50_ms']:.1f}", f"{trial['p99_ms']:.1f}",
                      f"{trial['avg_batch_size'] or 0:.1f}", str(trial["errors"]), mark)
    console = wide_console()
    console.print(table)
    if best is None:
        console.print(f"no setting kept p99 within {results['p99_bound_ms']:g} ms without errors; raise "
                      "--set tune.p99_bound_ms or lower tune.concurrency")
    else:
        console.print(f"best under the bound: {best['contender']} ({best['requests_per_s']:.1f} req/s, "
                      f"p99 {best['p99_ms']:.1f} ms). Apply it with `bertforge export ... --set serving.<key>=...` "
                      "(keys: max_queue_delay_microseconds, preferred_batch_sizes, instance_count, intra_op_threads, "
                      "max_batch_size, min_batch_fill)")
