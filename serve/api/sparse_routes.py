"""The route of the sparse models (embed_sparse): text-embeddings-inference `/embed_sparse`, each text one Triton
request (the dynamic batcher merges them)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from bertforge.tasks import EMBED_SPARSE
from serve.api.common import TRUNCATION, forwarder, json_response, request_texts
from serve.api.schemas import SparseEmbedRequest

router = APIRouter()


@router.post("/embed_sparse", tags=["tei"], summary="text-embeddings-inference /embed_sparse: [[{index, value}]]")
async def tei_embed_sparse(body: SparseEmbedRequest, request: Request) -> Response:
    model = forwarder(request).for_task(EMBED_SPARSE)
    texts = request_texts(body.inputs, request, "/embed_sparse")
    model.check_sizes(texts)
    truncation = TRUNCATION[body.truncate]
    direction = body.truncation_direction.lower() if body.truncation_direction else None
    with request.app.state.limiter:
        triton = forwarder(request)
        vectors = await triton.answer(triton.client.embed_sparse(texts, truncation, truncation_direction=direction,
                                                                 model=model.name))
    return json_response([[{"index": int(index), "value": float(value)} for index, value in zip(indices, values)]
                          for indices, values in vectors])
