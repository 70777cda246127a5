"""What the new recipe's shape costs at serving time: the served fill_mask p50 at one client of two model folders of
the same size (by default the yardstick's round-0 `today` and `new` models: docs/training.md, "Serving cost of the
new shape").

    python -m bench.recipe_latency [--precision fp32|auto] [--slices 30] [--seconds 3]

Both folders are exported alike (`--tasks fill_mask`), each is served by its own tritonserver, both up at once, and
one client alternates between them in short slices (who goes first swapped every pair), so a change of load on a
shared machine hits both alike. Reported: the p50 of each slice, the median over slices of each, and the median
of the per-pair ratios new / today.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path
from statistics import median

from bench.config import BenchConfig
from bench.load import measure_served_point
from bench.report import arguments_config, provenance, write_results
from bench.serving import request_texts, start_server
from bertforge.tasks import FILL_MASK

CONTENDERS = ("today", "new")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--today", type=Path, default=Path("runs/quality/today-0/model"))
    parser.add_argument("--new", type=Path, default=Path("runs/quality/new-0/model"))
    parser.add_argument("--precision", default="fp32", help="export precision of both (default fp32; auto: each "
                                                            "serves what its own search picks)")
    parser.add_argument("--slices", type=int, default=30, help="slices per contender, alternating (default 30)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one slice (default 3)")
    parser.add_argument("--output", type=Path, default=Path("bench/results/recipe_latency.json"))
    args = parser.parse_args(argv)
    results = provenance(arguments_config(args)) | measure(args)
    summary = results["summary"]
    for name in CONTENDERS:
        print(f"{name}: served {summary[name]['precision']}, p50 median over {args.slices} slices "
              f"{summary[name]['p50_ms']:.3f} ms")
    print(f"new / today p50 ({args.precision}): median of per-pair ratios {summary['ratio_median']:.3f}, "
          f"ratio of medians {summary['ratio_of_medians']:.3f}")
    for path in write_results(results, args.output, plots=False):
        print(f"written: {path}")
    return 0


def measure(args: argparse.Namespace) -> dict:
    from export import export_to_repository

    config = BenchConfig(task=FILL_MASK)
    with contextlib.ExitStack() as stack:
        # both folders exported alike
        repos, precisions = {}, {}
        for name in CONTENDERS:
            repos[name] = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bertforge-{name}-")))
            report = export_to_repository(getattr(args, name), repos[name], precision=args.precision,
                                          tasks=(FILL_MASK,), progress=False)
            precisions[name] = report.tasks[FILL_MASK].served[0]
        texts = request_texts(config, repos["today"])

        # both servers up for the whole measurement; short slices in alternation
        urls = {name: stack.enter_context(start_server(repos[name], lambda line: None, name)) for name in CONTENDERS}
        slices: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for index in range(args.slices):
            for name in (CONTENDERS if index % 2 == 0 else tuple(reversed(CONTENDERS))):
                point = measure_served_point(urls[name], FILL_MASK, texts, concurrency=1, max_requests=10**9,
                                             max_seconds=args.seconds, warmup_seconds=0.3,
                                             timeout_s=config.load.timeout_s, top_k=config.load.top_k)
                slices[name].append(point["p50_ms"])
    ratios = [new / today for today, new in zip(slices["today"], slices["new"])]
    summary = {name: {"precision": precisions[name], "p50_ms": median(slices[name])} for name in CONTENDERS}
    summary |= {"ratio_median": median(ratios), "ratio_of_medians": summary["new"]["p50_ms"] / summary["today"]["p50_ms"],
                "new_slower_in": sum(ratio > 1 for ratio in ratios), "pairs": len(ratios)}
    return {"benchmark": "recipe_latency", "task": FILL_MASK, "texts": texts.summary(), "slices_p50_ms": slices,
            "summary": summary}


if __name__ == "__main__":
    raise SystemExit(main())
