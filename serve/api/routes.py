"""The inference routes: OpenAI embeddings and models, TEI embed, Hugging Face fill-mask."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from bertforge import contract
from serve.api.errors import APIError
from serve.api.forward import ServedModel, TritonForwarder
from serve.api.metrics import ApiMetrics
from serve.api.schemas import EmbeddingsRequest, EmbedRequest, FillMaskRequest

router = APIRouter()
STARTED = int(time.time())


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


@router.post("/v1/embeddings", tags=["openai"], summary="OpenAI embeddings (float or base64)")
async def openai_embeddings(body: EmbeddingsRequest, request: Request) -> Response:
    forwarder, model = _forwarder(request), _forwarder(request).model(contract.EMBED_MODEL)
    texts = _texts(body.input, request, "/v1/embeddings")
    if body.dimensions is not None:
        dimension = await forwarder.embedding_dimension()
        if body.dimensions != dimension:
            raise APIError(400, f"dimensions={body.dimensions} is not supported: this model's embeddings have "
                                f"{dimension} dimensions (omit dimensions or send {dimension})", "invalid_dimensions")
    with request.app.state.limiter:
        model.check_sizes(texts)
        # send first, count tokens while Triton works: the API's tokenizing adds no latency
        answer = asyncio.ensure_future(forwarder.embed(texts, None))
        encoded = _count_tokens(model, texts, request)
        vectors = await answer
    if body.encoding_format == "base64":
        embeddings: list[Any] = [base64.b64encode(vector.astype("<f4").tobytes()).decode() for vector in vectors]
    else:
        embeddings = list(vectors)  # rows stay float32 numpy arrays: orjson writes them
    tokens = sum(len(item.ids) for item in encoded)
    return _json({"object": "list", "model": contract.EMBED_MODEL,
                  "data": [{"object": "embedding", "index": index, "embedding": embedding}
                           for index, embedding in enumerate(embeddings)],
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@router.get("/v1/models", tags=["openai"], summary="the served models, OpenAI's list shape")
async def openai_models(request: Request) -> Response:
    return _json({"object": "list", "data": [{"id": name, "object": "model", "created": STARTED,
                                              "owned_by": "bertforge"} for name in _forwarder(request).models]})


@router.post("/embed", tags=["tei"], summary="text-embeddings-inference /embed: a list of vectors")
@router.post("/models/embed", include_in_schema=False)
@router.post("/models/embed/pipeline/feature-extraction", include_in_schema=False)
async def tei_embed(body: EmbedRequest, request: Request) -> Response:
    forwarder, model = _forwarder(request), _forwarder(request).model(contract.EMBED_MODEL)
    texts = _texts(body.inputs, request, "/embed")
    truncation = {None: None, True: "truncate", False: "error"}[body.truncate]  # "error": Triton refuses, 413
    with request.app.state.limiter:
        model.check_sizes(texts)
        answer = asyncio.ensure_future(forwarder.embed(texts, truncation))
        _count_tokens(model, texts, request)
        vectors = await answer
    if body.normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return _json(vectors.astype(np.float32))


@router.post("/fill-mask", tags=["huggingface"], summary="Hugging Face fill-mask: score, token, token_str, sequence")
@router.post("/models/fill_mask", include_in_schema=False)
async def hf_fill_mask(body: FillMaskRequest, request: Request) -> Response:
    forwarder, model = _forwarder(request), _forwarder(request).model(contract.FILL_MASK_MODEL)
    texts = _texts(body.inputs, request, "/fill-mask")
    parameters = body.parameters
    top_k = parameters.top_k if parameters and parameters.top_k is not None else model.settings.default_top_k
    targets = _target_ids(model, parameters.targets) if parameters and parameters.targets is not None else None
    with request.app.state.limiter:
        model.check_sizes(texts)
        # with targets: ask for every exported candidate, then keep the targets among them
        asked = model.settings.max_top_k if targets is not None else top_k
        answer = asyncio.ensure_future(forwarder.fill_mask(texts, asked, None))
        encoded = _count_tokens(model, texts, request)  # while Triton works; `sequence` needs the ids
        predictions = await answer
    answers = [_hf_masks(model, item, masks, top_k, targets) for item, masks in zip(encoded, predictions)]
    return _json(answers[0] if isinstance(body.inputs, str) else answers)


@router.post("/", include_in_schema=False)
async def root(request: Request) -> Response:
    raise APIError(404, "POST / is ambiguous here (two models): post to /fill-mask or /embed, e.g. "
                        "InferenceClient(model=f'{url}/fill-mask').fill_mask(...)", "unknown_route")


def _hf_masks(model: ServedModel, encoded: Any, masks: list[list[Any]], top_k: int,
              targets: dict[int, str] | None) -> list[Any]:
    """Per mask: [{score, token, token_str, sequence}] as transformers' FillMaskPipeline; a list per mask if several."""
    positions = [index for index, token_id in enumerate(encoded.ids) if token_id == model.mask_id]
    single = len(masks) == 1
    answer = []
    for position, predictions in zip(positions, masks):
        if targets is not None:
            predictions = [prediction for prediction in predictions if prediction.token_id in targets][:top_k]
        rows = []
        for prediction in predictions:
            ids = list(encoded.ids)
            ids[position] = prediction.token_id
            sequence = model.tokenizer.decode(ids, skip_special_tokens=single)
            rows.append({"score": prediction.score, "token": prediction.token_id, "token_str": prediction.token,
                         "sequence": sequence})
        answer.append(rows)
    return answer[0] if single else answer


def _target_ids(model: ServedModel, targets: list[str]) -> dict[int, str]:
    """As transformers: a target in the vocabulary is its id, otherwise the first token it tokenizes to."""
    if not targets:
        raise APIError(400, "parameters.targets is empty; give at least one token or omit it", "invalid_targets")
    ids: dict[int, str] = {}
    for target in targets:
        token_id = model.tokenizer.token_to_id(target)
        if token_id is None:
            pieces = model.tokenizer.encode(target, add_special_tokens=False).ids
            if not pieces:
                raise APIError(400, f"target {target!r} yields no token; give words of the model's vocabulary",
                               "invalid_targets")
            token_id = pieces[0]
        ids[token_id] = target
    return ids


def _texts(inputs: str | list[str], request: Request, route: str) -> list[str]:
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    config = request.app.state.config
    if not texts:
        raise APIError(400, "input is an empty list; send at least one text", "empty_input")
    if len(texts) > config.max_inputs:
        raise APIError(413, f"{len(texts)} texts in one request; the limit is {config.max_inputs} "
                            "(serve.api.max_inputs): split the list", "too_many_inputs")
    request.app.state.metrics.batch_size.labels(route).observe(len(texts))
    return texts


def _count_tokens(model: ServedModel, texts: list[str], request: Request) -> list[Any]:
    encoded = model.encode(texts)
    metrics: ApiMetrics = request.app.state.metrics
    metrics.tokens.labels(model.name).inc(sum(len(item.ids) for item in encoded))
    truncated = sum(item.truncated for item in encoded)
    if truncated:
        metrics.truncations.labels(model.name).inc(truncated)
    return encoded


def _forwarder(request: Request) -> TritonForwarder:
    return request.app.state.forwarder


def _json(document: Any) -> Response:
    # orjson straight from numpy (float32 written exactly, ~15x faster than json.dumps of lists, measured);
    # FastAPI's jsonable_encoder would walk every float of every vector
    return Response(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
