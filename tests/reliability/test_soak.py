"""Soak: thousands of mixed fill_mask/embed requests at concurrency 32 against a real tritonserver.

Every good answer is compared with an independent in-process ONNX Runtime run of the same text, every bad
request must get its own INVALID_ARGUMENT, nothing else may fail, and the server's memory (tritonserver plus
its python-backend stubs) must stay flat. CI sends BERTFORGE_SOAK_REQUESTS (default 2,000); the full run is
`BERTFORGE_SOAK_REQUESTS=20000 pytest tests/reliability -m soak -s` (figures in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field

import pytest

from bertforge import contract
from bertforge.tasks import EMBED, FILL_MASK
from tests.conftest import make_sentences
from tests.reliability.reference import assert_embedding_matches, assert_fill_mask_matches

pytestmark = [pytest.mark.slow, pytest.mark.soak]

SOAK_REQUESTS = int(os.environ.get("BERTFORGE_SOAK_REQUESTS", "2000"))
CONCURRENCY = 32
WARMUP_REQUESTS = 600
MAX_RSS_GROWTH = 0.10
POOL_SIZE = 120  # distinct good texts per model; every answer is checked against its reference
BAD_SHARE = 0.05
BAD_REQUESTS = [  # (model, text, parameters, message fragment)
    (FILL_MASK, "", {}, "text is empty"),
    (FILL_MASK, "no mask in this text", {}, "has no [MASK] token"),
    (FILL_MASK, "the [MASK] report", {"top_k": 0}, "top_k must be an integer"),
    (EMBED, "hello", {"truncation": "sometimes"}, "truncation must be one of"),
    (EMBED, "x" * 70_000, {}, "the limit is 65536 bytes"),
    (EMBED, "budget " * 100, {"truncation": "error"}, "longer than the model's maximum"),
]


@dataclass
class Request:
    model: str
    text: str
    parameters: dict = field(default_factory=dict)
    bad: str | None = None  # expected message fragment for a bad request


def test_soak_mixed_load_is_correct_and_memory_stays_flat(reliability_server, references):
    import psutil

    rng = random.Random(int.from_bytes(os.urandom(2), "little"))
    pools = {model: good_texts(model, references[model], rng) for model in references}
    expected = {(model, text): (references[model].fill_mask(text) if model == FILL_MASK
                                else references[model].embed(text)) for model, texts in pools.items() for text in texts}
    url = reliability_server.endpoints.grpc_url

    # Warm-up: every pool text once (all shapes seen), then the memory baseline
    warmup = [Request(model, text) for model, texts in pools.items() for text in texts]
    warmup += workload(WARMUP_REQUESTS - len(warmup), pools, rng)
    warm_outcomes, _ = asyncio.run(run_load(url, warmup))
    check_outcomes(warmup, warm_outcomes, expected)
    process = psutil.Process(reliability_server.pid)
    rss_warm = server_rss(process)

    # The soak itself
    requests = workload(SOAK_REQUESTS, pools, rng)
    outcomes, seconds = asyncio.run(run_load(url, requests))
    rss_end = server_rss(process)
    counts = check_outcomes(requests, outcomes, expected)
    figures = {"requests": len(requests), "concurrency": CONCURRENCY, "seconds": round(seconds, 1),
               "requests_per_s": round(len(requests) / seconds, 1), **counts,
               "rss_after_warmup_mb": round(rss_warm / 2**20, 1), "rss_end_mb": round(rss_end / 2**20, 1),
               "rss_growth": round(rss_end / rss_warm - 1, 4), "server_processes": 1 + len(process.children(recursive=True))}
    print("soak figures:", json.dumps(figures))
    assert counts["unexpected_errors"] == 0 and counts["wrong_answers"] == 0, figures
    assert counts["good"] + counts["bad_rejected"] == len(requests), figures
    assert rss_end <= rss_warm * (1 + MAX_RSS_GROWTH), f"server memory grew {figures['rss_growth']:.1%}: {figures}"
    assert reliability_server.process.poll() is None


def good_texts(model: str, reference, rng: random.Random) -> list[str]:
    """Texts of 1 word up to beyond the model's maximum length; fill_mask texts carry 1–5 masks."""
    words = " ".join(make_sentences(400, seed=rng.randrange(10**6))).split()
    texts: list[str] = []
    while len(texts) < POOL_SIZE:
        length = rng.choice([1, 2, 3] + list(range(4, 90)))  # tokens: 3 up to > max_length (truncated)
        start = rng.randrange(len(words) - length)
        chosen = words[start : start + length]
        if model == FILL_MASK:
            for position in rng.sample(range(min(length, 40)), rng.randint(1, min(5, length))):
                chosen[position] = contract.MASK_TOKEN
        text = " ".join(chosen)
        if model == FILL_MASK and len(reference.fill_mask(text)[0]) == 0:
            continue  # every mask truncated away: that is a bad request, covered in BAD_REQUESTS
        texts.append(text)
    return texts


def workload(count: int, pools: dict[str, list[str]], rng: random.Random) -> list[Request]:
    requests = []
    for _ in range(count):
        if rng.random() < BAD_SHARE:
            model, text, parameters, message = rng.choice(BAD_REQUESTS)
            requests.append(Request(model, text, parameters, bad=message))
            continue
        model = rng.choice(sorted(pools))
        parameters = {"top_k": rng.randint(1, 20)} if model == FILL_MASK else {}
        requests.append(Request(model, rng.choice(pools[model]), parameters))
    return requests


async def run_load(url: str, requests: list[Request]) -> tuple[list, float]:
    """Closed loop: CONCURRENCY workers, each sends its next request when the previous one is answered."""
    from serve.client import AsyncBertforgeClient, ServingError

    outcomes: list = [None] * len(requests)
    queue = iter(range(len(requests)))

    async def worker(client: AsyncBertforgeClient) -> None:
        for index in queue:
            request = requests[index]
            try:
                if request.model == FILL_MASK:
                    (outcomes[index],) = await client.fill_mask(request.text, top_k=request.parameters.get("top_k", 5),
                                                                truncation=request.parameters.get("truncation"))
                else:
                    (outcomes[index],) = await client.embed(request.text, truncation=request.parameters.get("truncation"))
            except ServingError as error:
                outcomes[index] = error
            except Exception as error:  # anything else is an unexpected error too: record, do not stop the load
                outcomes[index] = error

    async with AsyncBertforgeClient(url, timeout_s=120, retries=0) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
        return outcomes, time.perf_counter() - started


def check_outcomes(requests: list[Request], outcomes: list, expected: dict) -> dict[str, int]:
    from serve.client import ServingError

    counts = {"good": 0, "bad_rejected": 0, "unexpected_errors": 0, "wrong_answers": 0}
    first_problems: list[str] = []
    for request, outcome in zip(requests, outcomes):
        context = f"{request.model} {request.text[:60]!r} {request.parameters}"
        if request.bad is not None:
            ok = (isinstance(outcome, ServingError) and request.bad in str(outcome)
                  and "INVALID_ARGUMENT" in str(outcome.status))
            counts["bad_rejected" if ok else "unexpected_errors"] += 1
            if not ok:
                first_problems.append(f"{context}: expected {request.bad!r}, got {outcome!r}")
            continue
        if isinstance(outcome, BaseException) or outcome is None:
            counts["unexpected_errors"] += 1
            first_problems.append(f"{context}: {outcome!r}")
            continue
        try:
            reference = expected[(request.model, request.text)]
            if request.model == FILL_MASK:
                assert_fill_mask_matches(outcome, reference, request.parameters.get("top_k", 5), context)
            else:
                assert_embedding_matches(outcome, reference, context)
            counts["good"] += 1
        except AssertionError as error:
            counts["wrong_answers"] += 1
            first_problems.append(str(error)[:300])
    assert not first_problems, f"{counts}; first problems:\n" + "\n".join(first_problems[:5])
    return counts


def server_rss(process) -> int:
    """Resident memory of tritonserver and its python-backend stub processes, in bytes."""
    processes = [process, *process.children(recursive=True)]
    return sum(child.memory_info().rss for child in processes)
