"""Load generator on `tritonclient.grpc.aio` (perf_analyzer cannot run here): one measured point.

Closed loop: `concurrency` users, each sending its next text as soon as its answer is back. Open loop:
requests start on a fixed schedule (`request_rate` per second) whatever the answers do, and latency is
counted from the scheduled start, so a server that falls behind shows it (no coordinated omission).
Every point runs a warm-up first (excluded), then stops at `max_requests` or `max_seconds`, whichever
comes first. Triton's statistics are read before and after, giving the executed batch sizes. The load
generator's own CPU time over the measured part is reported (`client_cpu_cores`: CPU seconds per wall
second of this process, all its threads) because on a small machine it competes with the server it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from bench.stats import point_figures
from bench.texts import RequestTexts
from bertforge.tasks import EMBED, FILL_MASK


def measure_served_point(url: str | None, task: str, texts: RequestTexts, *, concurrency: int = 1, request_rate: float = 0.0,
                         max_requests: int, max_seconds: float, warmup_seconds: float, timeout_s: float,
                         top_k: int, api: str = "", api_url: str | None = None,
                         flops: list[float] | None = None) -> dict:
    """Throughput, latency percentiles, errors and Triton's average batch size for one load level.

    `url` is Triton's gRPC address (requests and statistics); with `api` ("openai", "tei", "hf") the
    requests go to the HTTP API at `api_url` instead, one text per request, and statistics still come
    from Triton. `api="external"`: another embedding server's OpenAI-style endpoint, `api_url` its full URL
    (e.g. Infinity's http://127.0.0.1:7997/embeddings; the request names model "default"); `url` None: no
    Triton behind it, no batch figures. `flops[i]`: model FLOPs of text i (summed over the answered requests
    into `gflops_per_s`)."""
    return asyncio.run(_measure(url, task, texts, concurrency, request_rate, max_requests, max_seconds,
                                warmup_seconds, timeout_s, top_k, api, api_url, flops))


async def _measure(url: str | None, task: str, texts: RequestTexts, concurrency: int, request_rate: float,
                   max_requests: int, max_seconds: float, warmup_seconds: float, timeout_s: float,
                   top_k: int, api: str = "", api_url: str | None = None,
                   flops: list[float] | None = None) -> dict:
    import tritonclient.grpc.aio as aioclient

    statistics = aioclient.InferenceServerClient(url) if url else None
    async with _sender(url, task, timeout_s, top_k, api, api_url) as send:
        run = _open_loop if request_rate > 0 else _closed_loop
        load = request_rate if request_rate > 0 else concurrency
        # Warm-up (connections, ONNX Runtime's first runs, the batcher), from the other half of the texts
        if warmup_seconds > 0:
            await run(send, texts, load, max_requests, warmup_seconds, offset=len(texts.texts) // 2, flops=flops)
        before = await _model_statistics(statistics, task)
        cpu_before = time.process_time()
        latencies, tokens, work, errors, elapsed = await run(send, texts, load, max_requests, max_seconds, offset=0,
                                                             flops=flops)
        client_cpu_s = time.process_time() - cpu_before
        after = await _model_statistics(statistics, task)
    if statistics is not None:
        await statistics.close()
    executions = after["executions"] - before["executions"]
    batches = {size: after["batches"].get(size, 0) - before["batches"].get(size, 0) for size in after["batches"]}
    figures = point_figures(latencies, tokens, errors, elapsed, work)
    return figures | {
        "client_cpu_cores": client_cpu_s / elapsed if elapsed > 0 else None,
        "concurrency": concurrency if request_rate <= 0 else None,
        "request_rate": request_rate if request_rate > 0 else None,
        "avg_batch_size": (after["inferences"] - before["inferences"]) / executions if executions else None,
        "executions": executions,
        "batch_size_counts": {str(size): count for size, count in sorted(batches.items()) if count},
        "server_ms": server_time_split(before, after, figures.get("mean_ms")),
    }


def server_time_split(before: dict, after: dict, client_mean_ms: float | None) -> dict | None:
    """Where a request's time went, from Triton's cumulative statistics read before and after a point (ms):
    per request `queue` (waiting for the batcher and a free instance), `compute_input` (inputs to the python
    backend), `compute_infer` (the backend's execute: our Python, tokenizer and ONNX Runtime, for the whole
    merged batch the request was in), `compute_output`, `server` (Triton's own total per request) and
    `outside_server` (the client's mean latency minus it: gRPC, the client library, the event loop); and per
    execution (one merged batch) `execute_per_batch`. None when no Triton statistics were read.

    Triton books every request of a merged batch until the batch's execute returns, while the backend answers
    each sub-batch as soon as it is done: with merged batches `server` overstates what a short request waited,
    so `outside_server` is given only where no request was merged with another (one per execution). Even there
    our backend's response leaves just before its execute returns, so that figure can dip a little below zero;
    a model that returns its responses from execute (bench profile's constant model) splits exactly."""
    if "success" not in after:
        return None
    requests = after["success"]["count"] - before["success"]["count"]
    executions = after["executions"] - before["executions"]
    if not requests or not executions:
        return None
    per_request = {name: (after[name]["ns"] - before[name]["ns"]) / requests / 1e6
                   for name in ("queue", "compute_input", "compute_infer", "compute_output")}
    server = (after["success"]["ns"] - before["success"]["ns"]) / requests / 1e6
    batch_ns = after["batch_infer_ns"] - before["batch_infer_ns"]
    unmerged = executions == requests
    return per_request | {"server": server,
                          "outside_server": client_mean_ms - server if unmerged and client_mean_ms is not None else None,
                          "execute_per_batch": batch_ns / executions / 1e6}


@contextlib.asynccontextmanager
async def _sender(url: str, task: str, timeout_s: float, top_k: int, api: str,
                  api_url: str | None) -> AsyncIterator[Callable[[str], Awaitable[Any]]]:
    """`send(text)`: over gRPC with our client, or as the API's JSON over HTTP (aiohttp, kept-alive connections)."""
    from serve.client import AsyncBertforgeClient, ServingError

    if not api:
        async with AsyncBertforgeClient(url, timeout_s=timeout_s, retries=0) as client:
            yield (lambda text: client.fill_mask(text, top_k=top_k)) if task == FILL_MASK else client.embed
        return
    import aiohttp

    route, body = API_REQUESTS[api]
    if api == "external":  # the full endpoint URL: the session gets its origin, each request its path
        from urllib.parse import urlsplit

        parts = urlsplit(api_url)
        api_url, route = f"{parts.scheme}://{parts.netloc}", parts.path or "/"
    # aiohttp, not httpx: the load generator's own CPU counts against the server on a small machine, and
    # httpx took ~1.7x more of it per request here (measured against the same API at 32 users)
    connector = aiohttp.TCPConnector(limit=0)  # one kept-alive connection per user, no pool cap
    async with aiohttp.ClientSession(api_url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async def send(text: str) -> Any:
            try:
                async with session.post(route, json=body(text, top_k)) as reply:
                    content = await reply.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                raise ServingError(f"{type(error).__name__}: {error}", "UNAVAILABLE") from None
            if reply.status != 200:
                raise ServingError(f"HTTP {reply.status}: {content[:200]!r}", str(reply.status))
            return content

        yield send


# the HTTP API's request per --api: (route, body of one text)
API_REQUESTS = {
    "openai": ("/v1/embeddings", lambda text, top_k: {"model": EMBED, "input": text}),
    "tei": ("/embed", lambda text, top_k: {"inputs": text, "normalize": False}),
    "hf": ("/fill-mask", lambda text, top_k: {"inputs": text, "parameters": {"top_k": top_k}}),
    "external": ("", lambda text, top_k: {"model": "default", "input": [text]}),  # route: from its URL
}


async def _closed_loop(send: Any, texts: RequestTexts, concurrency: int, max_requests: int, max_seconds: float,
                       offset: int, flops: list[float] | None = None) -> tuple[list[float], int, float, int, float]:
    from serve.client import ServingError

    latencies: list[float] = []
    counters = {"issued": 0, "tokens": 0, "flops": 0.0, "errors": 0}
    started = time.perf_counter()
    deadline = started + max_seconds

    async def user() -> None:
        while counters["issued"] < max_requests and time.perf_counter() < deadline:
            index = (offset + counters["issued"]) % len(texts.texts)
            counters["issued"] += 1
            begin = time.perf_counter()
            try:
                await send(texts.texts[index])
            except ServingError:
                counters["errors"] += 1
                continue
            latencies.append(time.perf_counter() - begin)
            counters["tokens"] += texts.tokens[index]
            counters["flops"] += flops[index] if flops else 0.0

    await asyncio.gather(*(user() for _ in range(int(concurrency))))
    return latencies, counters["tokens"], counters["flops"], counters["errors"], time.perf_counter() - started


async def _open_loop(send: Any, texts: RequestTexts, rate: float, max_requests: int, max_seconds: float,
                     offset: int, flops: list[float] | None = None) -> tuple[list[float], int, float, int, float]:
    from serve.client import ServingError

    latencies: list[float] = []
    counters = {"tokens": 0, "flops": 0.0, "errors": 0}
    started = time.perf_counter()

    async def request(index: int, scheduled: float) -> None:
        try:
            await send(texts.texts[index])
        except ServingError:
            counters["errors"] += 1
            return
        latencies.append(time.perf_counter() - scheduled)  # from the scheduled start: queueing counts
        counters["tokens"] += texts.tokens[index]
        counters["flops"] += flops[index] if flops else 0.0

    tasks = []
    for number in range(max_requests):
        scheduled = started + number / rate
        if scheduled - started >= max_seconds:
            break
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.ensure_future(request((offset + number) % len(texts.texts), scheduled)))
    await asyncio.gather(*tasks)
    return latencies, counters["tokens"], counters["flops"], counters["errors"], time.perf_counter() - started


async def _model_statistics(client: Any, model: str) -> dict:
    """Cumulative counters of one model: requests, executions, and executions per batch size (all 0 when
    no Triton is behind the measured server)."""
    if client is None:
        return {"inferences": 0, "executions": 0, "batches": {}}
    await asyncio.sleep(0.05)  # responses go out before Triton books the execution: let the last one land
    stats = (await client.get_inference_statistics(model_name=model)).model_stats[0]
    inference = stats.inference_stats
    durations = {name: {"count": getattr(inference, name).count, "ns": getattr(inference, name).ns}
                 for name in ("success", "queue", "compute_input", "compute_infer", "compute_output")}
    return durations | {"inferences": stats.inference_count, "executions": stats.execution_count,
                        "batches": {entry.batch_size: entry.compute_infer.count for entry in stats.batch_stats},
                        "batch_infer_ns": sum(entry.compute_infer.ns for entry in stats.batch_stats)}
