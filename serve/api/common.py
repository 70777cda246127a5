"""What every router of the API shares: the in-flight cap, reading a request's inputs, counting tokens, answers.

    texts = request_texts(body.inputs, request, "/embed")     # a string or a list of them (or token ids), counted
    with request.app.state.limiter: ...                       # 429 at once past serve.api.max_in_flight
    return json_response(document)                            # orjson straight from numpy
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from serve.api.errors import APIError
from serve.api.forward import ApiModel, TritonForwarder
from serve.api.metrics import ApiMetrics

TRUNCATION = {None: None, True: "truncate", False: "error"}  # TEI's `truncate` -> the backend's truncation parameter


class InFlightLimiter:
    """429 at once when max_in_flight inference requests are being answered (no queue: never a hang)."""

    def __init__(self, limit: int, metrics: ApiMetrics):
        self.limit, self.metrics, self.active = limit, metrics, 0

    def __enter__(self) -> None:
        if self.active >= self.limit:
            self.metrics.rejected.inc()
            raise APIError(429, f"{self.limit} requests are in flight, the API's limit (serve.api.max_in_flight); "
                                "retry shortly", "too_many_requests", {"Retry-After": "1"})
        self.active += 1
        self.metrics.in_flight.set(self.active)

    def __exit__(self, *exc_info: object) -> None:
        self.active -= 1
        self.metrics.in_flight.set(self.active)


def request_texts(inputs: Any, request: Request, route: str) -> list[Any]:
    """A string, a list of strings, a token-id array or a list of them, as a list of inputs (checked: count)."""
    single = isinstance(inputs, str) or (bool(inputs) and isinstance(inputs[0], int))
    texts = [inputs] if single else list(inputs)
    check_input_count(request, len(texts), route, "texts", "input is an empty list; send at least one text")
    return texts


def check_input_count(request: Request, count: int, route: str, noun: str, empty: str) -> None:
    """400 (`empty`) for no inputs, 413 past serve.api.max_inputs; else the count goes to the batch-size metric."""
    limit = request.app.state.config.max_inputs
    if not count:
        raise APIError(400, empty, "empty_input")
    if count > limit:
        raise APIError(413, f"{count} {noun} in one request; the limit is {limit} (serve.api.max_inputs): split "
                            "the list", "too_many_inputs")
    request.app.state.metrics.batch_size.labels(route).observe(count)


def count_tokens(model: ApiModel, texts: list[Any], request: Request, prompt: str = "",
                 direction: str = "right") -> list[Any]:
    """The ids the model runs on for each input (as its backend builds them), counted in the token metrics."""
    encoded = model.encode(texts, prompt, direction)
    metrics: ApiMetrics = request.app.state.metrics
    metrics.tokens.labels(model.name).inc(sum(len(item.ids) for item in encoded))
    truncated = sum(item.truncated for item in encoded)
    if truncated:
        metrics.truncations.labels(model.name).inc(truncated)
    return encoded


def forwarder(request: Request) -> TritonForwarder:
    return request.app.state.forwarder


def json_response(document: Any) -> Response:
    # orjson straight from numpy (float32 written exactly, ~15x faster than json.dumps of lists, measured);
    # FastAPI's jsonable_encoder would walk every float of every vector
    return Response(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
