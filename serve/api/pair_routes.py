"""The routes of the pair models (rerank, classify): text-embeddings-inference `/rerank` and `/predict`, Cohere
`/v1/rerank` and `/v2/rerank`, and Hugging Face text-classification (`/models/classify`); each pair is one Triton
request (the dynamic batcher merges them)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from bertforge.tasks import CLASSIFY, RERANK
from serve.api.common import TRUNCATION, check_input_count, forwarder, json_response
from serve.api.errors import APIError
from serve.api.forward import ApiModel
from serve.api.schemas import CohereRerankRequest, PredictRequest, RerankRequest
from serve.client import sigmoid

router = APIRouter()


@router.post("/rerank", tags=["tei"], summary="text-embeddings-inference /rerank: [{index, score, text?}], best first")
async def tei_rerank(body: RerankRequest, request: Request) -> Response:
    model = forwarder(request).for_task(RERANK)
    logits = await _rerank(request, model, body.query, body.texts, TRUNCATION[body.truncate], "/rerank")
    scores = logits if body.raw_scores else sigmoid(logits)
    order = np.argsort(-scores, kind="stable")
    return json_response([{"index": int(index), "score": float(scores[index]),
                           **({"text": body.texts[index]} if body.return_text else {})} for index in order])


@router.post("/v1/rerank", tags=["cohere"], summary="Cohere rerank: {results: [{index, relevance_score}], id, meta}")
@router.post("/v2/rerank", tags=["cohere"], summary="Cohere v2 rerank (the cohere SDK's ClientV2.rerank)")
async def cohere_rerank(body: CohereRerankRequest, request: Request) -> Response:
    model = forwarder(request).for_task(RERANK, body.model)
    texts = [document if isinstance(document, str) else document.text for document in body.documents]
    if body.top_n is not None and body.top_n < 1:
        raise APIError(400, f"top_n must be >= 1, got {body.top_n}", "invalid_top_n")
    scores = sigmoid(await _rerank(request, model, body.query, texts, None, request.url.path))
    order = np.argsort(-scores, kind="stable")[: body.top_n]
    results = [{"index": int(index), "relevance_score": float(scores[index]),
                **({"document": {"text": texts[index]}} if body.return_documents else {})} for index in order]
    version = "2" if request.url.path.startswith("/v2") else "1"
    return json_response({"id": str(uuid.uuid4()), "results": results,
                          "meta": {"api_version": {"version": version}, "billed_units": {"search_units": 1}}})


@router.post("/predict", tags=["tei"], summary="text-embeddings-inference /predict: [{label, score}], best first")
@router.post("/models/classify", tags=["huggingface"], summary="Hugging Face text-classification: [[{label, score}]]")
async def tei_predict(body: PredictRequest, request: Request) -> Response:
    model = forwarder(request).for_task(CLASSIFY)
    # TEI's reading: "a" and ["a", "b"] (a pair) are one input; a list of them is a batch
    single = isinstance(body.inputs, str) or (len(body.inputs) == 2 and all(isinstance(x, str) for x in body.inputs))
    items = [body.inputs] if single else list(body.inputs)
    texts, pairs = [], []
    for item in items:
        item = [item] if isinstance(item, str) else item
        if len(item) not in (1, 2):
            raise APIError(400, f"an input is a text or a pair [text, text_pair]; got a list of {len(item)}",
                           "invalid_input")
        texts.append(item[0])
        pairs.append(item[1] if len(item) == 2 else None)
    logits = await _logits(request, model, texts, pairs, TRUNCATION[body.truncate],
                           request.url.path)
    parameters = body.parameters
    function = (parameters.function_to_apply if parameters and parameters.function_to_apply else
                "none" if body.raw_scores else "sigmoid" if logits.shape[1] == 1 else "softmax")
    top_k = parameters.top_k if parameters and parameters.top_k is not None else None
    answers = [_labelled(model, row, function, top_k) for row in logits]
    if request.url.path == "/models/classify":  # the Inference API's shape: one list per input
        return json_response(answers)
    return json_response(answers[0] if single else answers)


async def _rerank(request: Request, model: ApiModel, query: str, texts: list[str], truncation: str | None,
                  route: str) -> np.ndarray:
    """The logit of each (query, text), in the texts' order."""
    if not query.strip():
        raise APIError(400, "query is empty; send the text to rank the documents against", "empty_query")
    return (await _logits(request, model, [query] * len(texts), texts, truncation, route))[:, 0]


async def _logits(request: Request, model: ApiModel, texts: list[str], pairs: list[str | None],
                  truncation: str | None, route: str) -> np.ndarray:
    check_input_count(request, len(texts), route, "documents (or inputs)",
                      "no documents (or inputs) given; send at least one")
    model.check_sizes([*texts[:1], *[pair for pair in pairs if pair is not None]])
    with request.app.state.limiter:
        return await forwarder(request).answer(forwarder(request).client.classify(texts, pairs, truncation, model=model.name))


def _labelled(model: ApiModel, logits: np.ndarray, function: str, top_k: int | None) -> list[dict[str, Any]]:
    """[{label, score}] sorted by score, as transformers' text-classification pipeline (top_k=None)."""
    if function == "softmax":
        exp = np.exp(logits.astype(np.float64) - logits.max())
        scores = exp / exp.sum()
    elif function == "sigmoid":
        scores = sigmoid(logits)
    else:
        scores = logits
    labels = model.settings.labels or tuple(f"LABEL_{index}" for index in range(len(logits)))
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [{"label": labels[index], "score": float(scores[index])} for index in order]

