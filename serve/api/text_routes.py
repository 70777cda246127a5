"""The routes of the text models (fill_mask, embed): OpenAI embeddings, TEI embed/tokenize/decode/info, Hugging Face
fill-mask and feature-extraction."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from bertforge import __version__
from bertforge.tasks import EMBED, FILL_MASK
from serve.api.common import TRUNCATION, count_tokens, forwarder, json_response, request_texts
from serve.api.errors import APIError
from serve.api.forward import ApiModel, TritonForwarder
from serve.api.schemas import DecodeRequest, EmbeddingsRequest, EmbedRequest, FillMaskRequest, TokenizeRequest

router = APIRouter()


@router.post("/v1/embeddings", tags=["openai"], summary="OpenAI embeddings (float or base64; text or token ids)")
async def openai_embeddings(body: EmbeddingsRequest, request: Request) -> Response:
    inputs = request_texts(body.input, request, "/v1/embeddings")
    vectors, encoded = await _embed(request, inputs, {"dimensions": body.dimensions})
    if body.encoding_format == "base64":
        embeddings: list[Any] = [base64.b64encode(vector.astype("<f4").tobytes()).decode() for vector in vectors]
    else:
        embeddings = list(vectors)  # rows stay float32 numpy arrays: orjson writes them
    tokens = sum(len(item.ids) for item in encoded)
    return json_response({"object": "list", "model": EMBED,
                          "data": [{"object": "embedding", "index": index, "embedding": embedding}
                                   for index, embedding in enumerate(embeddings)],
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _embed(request: Request, inputs: list[str] | list[list[int]], options: dict[str, Any]) -> tuple[Any, list]:
    """Embed through Triton (options: AsyncBertforgeClient.embed's) and count the tokens the model ran on."""
    triton, model = forwarder(request), forwarder(request).model(EMBED)
    prompt = model.prompt(options.get("prompt_name"))  # an unknown name is 400 here, before anything is sent
    with request.app.state.limiter:
        model.check_sizes(inputs)
        # send first, count tokens while Triton works: the API's tokenizing adds no latency
        answer = asyncio.ensure_future(triton.embed(inputs, **options))
        encoded = count_tokens(model, inputs, request, prompt, options.get("truncation_direction") or "right")
        return await answer, encoded


@router.post("/embed", tags=["tei"], summary="text-embeddings-inference /embed: a list of vectors")
@router.post("/models/embed", tags=["tei"], include_in_schema=False)  # huggingface_hub's feature_extraction: TEI's errors
@router.post("/models/embed/pipeline/feature-extraction", tags=["tei"], include_in_schema=False)
async def tei_embed(body: EmbedRequest, request: Request) -> Response:
    inputs = request_texts(body.inputs, request, "/embed")
    truncation = TRUNCATION[body.truncate]  # "error": Triton refuses, 413
    direction = body.truncation_direction.lower() if body.truncation_direction else None
    vectors, _ = await _embed(request, inputs, {"truncation": truncation, "truncation_direction": direction,
                                                "prompt_name": body.prompt_name, "dimensions": body.dimensions,
                                                "normalize": body.normalize})
    return json_response(vectors.astype(np.float32))


@router.post("/tokenize", tags=["tei"], summary="text-embeddings-inference /tokenize: the tokens the model runs on")
async def tei_tokenize(body: TokenizeRequest, request: Request) -> Response:
    model = forwarder(request).model(EMBED)
    texts = request_texts(body.inputs, request, "/tokenize")
    model.check_sizes(texts)
    prompted = [model.prompt(body.prompt_name) + text for text in texts]
    encodings = model.encoder.encode(prompted, add_special_tokens=body.add_special_tokens)
    return json_response([[_token(text, token_id, token, special, offsets) for token_id, token, special, offsets
                           in zip(encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets)]
                          for text, encoding in zip(prompted, encodings)])


def _token(text: str, token_id: int, token: str, special: int, offsets: tuple[int, int]) -> dict[str, Any]:
    """TEI's token: a special token has no offsets; the others carry their span of the (prompted) text."""
    if special:
        return {"id": token_id, "text": token, "special": True, "start": None, "stop": None}
    start, stop = offsets
    return {"id": token_id, "text": text[start:stop], "special": False, "start": start, "stop": stop}


@router.post("/decode", tags=["tei"], summary="text-embeddings-inference /decode: token ids back to text")
async def tei_decode(body: DecodeRequest, request: Request) -> Response:
    model = forwarder(request).model(EMBED)
    batch = [body.ids] if not body.ids or isinstance(body.ids[0], int) else body.ids
    vocabulary = model.encoder.vocab_size
    for ids in batch:
        bad = [token_id for token_id in ids if not 0 <= token_id < vocabulary]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside this model's vocabulary (0..{vocabulary - 1})",
                           "invalid_token_id")
    return json_response(model.tokenizer.decode_batch(batch, skip_special_tokens=body.skip_special_tokens))


@router.get("/info", tags=["tei"], summary="text-embeddings-inference /info: the served embedding model")
async def tei_info(request: Request) -> Response:
    triton = forwarder(request)
    model, config = triton.model(EMBED), request.app.state.config
    settings = model.settings
    return json_response({
        "model_id": model.source, "model_sha": None, "model_dtype": PRECISION_DTYPES.get(settings.precision,
                                                                                         settings.precision),
        "model_type": {"embedding": {"pooling": settings.pooling}}, "family": settings.family,
        "normalize": settings.normalize, "embedding_dim": settings.embedding_dim or await _probed_width(triton),
        "prompts": settings.prompts, "default_prompt_name": settings.default_prompt_name,
        "max_concurrent_requests": config.max_in_flight, "max_input_length": settings.max_length,
        "max_batch_tokens": settings.max_batch_tokens, "max_batch_requests": settings.max_batch_size,
        "max_client_batch_size": config.max_inputs, "auto_truncate": settings.truncation == "truncate",
        "version": __version__, "sha": None, "docker_label": None})


PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


async def _probed_width(triton: TritonForwarder) -> int | None:
    """An export that did not record embedding_dim: the width of a real answer (None while Triton is down)."""
    try:
        return await triton.embedding_dimension()
    except APIError:
        return None


@router.post("/fill-mask", tags=["huggingface"], summary="Hugging Face fill-mask: score, token, token_str, sequence")
@router.post("/models/fill_mask", include_in_schema=False)
async def hf_fill_mask(body: FillMaskRequest, request: Request) -> Response:
    triton, model = forwarder(request), forwarder(request).model(FILL_MASK)
    texts = request_texts(body.inputs, request, "/fill-mask")
    parameters = body.parameters
    top_k = parameters.top_k if parameters and parameters.top_k is not None else model.settings.default_top_k
    targets = _target_ids(model, parameters.targets) if parameters and parameters.targets is not None else None
    with request.app.state.limiter:
        model.check_sizes(texts)
        # with targets: ask for every exported candidate, then keep the targets among them
        asked = model.settings.max_top_k if targets is not None else top_k
        answer = asyncio.ensure_future(triton.answer(triton.client.fill_mask(texts, top_k=asked)))
        encoded = count_tokens(model, texts, request)  # while Triton works; `sequence` needs the ids
        predictions = await answer
    answers = [_hf_masks(model, item, masks, top_k, targets) for item, masks in zip(encoded, predictions)]
    return json_response(answers[0] if isinstance(body.inputs, str) else answers)


def _hf_masks(model: ApiModel, encoded: Any, masks: list[list[Any]], top_k: int,
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


def _target_ids(model: ApiModel, targets: list[str]) -> dict[int, str]:
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
