"""Quick side-by-side measurement of dynamic-batching settings (the defaults in ServingSettings come from it).

    python -m serve.measure_batching --repo model_repository --model embed --seconds 4

For each (max_queue_delay_microseconds, preferred_batch_sizes) it restarts tritonserver on a copy of the
repository and runs closed-loop asyncio clients at each concurrency, sending texts of mixed lengths.
It prints throughput, p50/p95 latency and Triton's average executed batch size. bench/ owns real
benchmarks; this only picks sensible defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bertforge import contract
from serve.launcher import running_server
from serve.repository import update_triton_model

WORDS = ("the minister announced a new budget for housing and energy after a long debate in london this week "
         "while the committee reviewed the report and criticised the trade deal despite strong opposition").split()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--model", default=contract.EMBED_MODEL, choices=[contract.EMBED_MODEL, contract.FILL_MASK_MODEL])
    parser.add_argument("--delays", default="0,500,1000,2000,4000")
    parser.add_argument("--preferred", default="none;8,16", help="';'-separated lists, 'none' for no preference")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fill", default="keep", help="comma-separated min_batch_fill values ('keep' = as exported)")
    parser.add_argument("--words", default="4,60", help="min,max words per text (mixed lengths)")
    args = parser.parse_args(argv)

    delays = [int(value) for value in args.delays.split(",")]
    preferred = [() if item == "none" else tuple(int(v) for v in item.split(",")) for item in args.preferred.split(";")]
    concurrency = [int(value) for value in args.concurrency.split(",")]
    words = tuple(int(value) for value in args.words.split(","))
    fills = [None] if args.fill == "keep" else [float(value) for value in args.fill.split(",")]
    print(f"{'delay_us':>8} {'preferred':>10} {'fill':>5} {'conc':>5} {'req/s':>8} {'p50_ms':>7} {'p95_ms':>7} "
          f"{'avg_batch':>9}")
    for delay, sizes, fill in itertools.product(delays, preferred, fills):
        for row in measure(Path(args.repo), args.model, delay, sizes, concurrency, args.seconds, words, fill):
            print(f"{delay:>8} {','.join(map(str, sizes)) or 'none':>10} {row['fill']:>5.2f} {row['concurrency']:>5} "
                  f"{row['throughput']:>8.1f} {row['p50_ms']:>7.2f} {row['p95_ms']:>7.2f} {row['avg_batch']:>9.2f}",
                  flush=True)


def measure(repo: Path, model: str, delay: int, sizes: tuple[int, ...], concurrency: list[int], seconds: float,
            words: tuple[int, int] = (4, 60), fill: float | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "repo"
        shutil.copytree(repo / model, copy / model, symlinks=True)
        changes = dict(max_queue_delay_microseconds=delay, preferred_batch_sizes=sizes)
        settings = update_triton_model(copy / model, **changes, **({} if fill is None else {"min_batch_fill": fill}))
        with running_server(copy, grpc_port=0, http_port=0, metrics_port=0) as server:
            rows = [asyncio.run(_closed_loop(server.endpoints.grpc_url, model, users, seconds, words))
                    for users in concurrency]
        return [dict(row, fill=settings.min_batch_fill) for row in rows]


async def _closed_loop(url: str, model: str, users: int, seconds: float, words: tuple[int, int]) -> dict:
    import tritonclient.grpc as grpcclient

    from serve.client import AsyncBertforgeClient

    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(*words))) for _ in range(256)]
    if model == contract.FILL_MASK_MODEL:
        texts = [text + " " + contract.MASK_TOKEN for text in texts]
    stats = grpcclient.InferenceServerClient(url)
    latencies: list[float] = []
    async with AsyncBertforgeClient(url, timeout_s=60) as client:
        call = client.embed if model == contract.EMBED_MODEL else client.fill_mask

        async def user(index: int, deadline: float) -> None:
            position = index
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await call(texts[position % len(texts)])
                latencies.append(time.perf_counter() - start)
                position += users

        await asyncio.gather(*(user(i, time.perf_counter() + 0.5) for i in range(users)))  # warm-up
        latencies.clear()
        before = stats.get_inference_statistics(model).model_stats[0]
        started = time.perf_counter()
        await asyncio.gather(*(user(i, started + seconds) for i in range(users)))
        elapsed = time.perf_counter() - started
        after = stats.get_inference_statistics(model).model_stats[0]
    executions = max(after.execution_count - before.execution_count, 1)
    milliseconds = np.array(latencies) * 1000
    return {"concurrency": users, "throughput": len(latencies) / elapsed, "p50_ms": float(np.percentile(milliseconds, 50)),
            "p95_ms": float(np.percentile(milliseconds, 95)),
            "avg_batch": (after.inference_count - before.inference_count) / executions}


if __name__ == "__main__":
    main()
