"""Client library for the served models (fill_mask, embed, rerank, classify, embed_sparse, or any through `infer`),
over tritonclient's gRPC (sync and asyncio).

Imports neither torch nor transformers. One text = one request; the texts of one call are sent
concurrently so Triton's dynamic batcher can merge them, at most `max_in_flight` at a time per client (a
list of 100,000 texts goes out as a sliding window, not all at once). Only UNAVAILABLE (server starting,
restarting, overloaded connection) is retried; every other error is raised at once with the
server's message and the index of the text that caused it.

`_ClientBase` owns what both clients share (settings and channel, what each call sends and how its answers
are read, health's probes, retry backoff, errors); `BertforgeClient` and `AsyncBertforgeClient` only move the
requests, blocking or awaitable.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bertforge import contract
from bertforge.tasks import CLASSIFY, DEFAULT_TASKS, EMBED, EMBED_SPARSE, FILL_MASK, RERANK

DEFAULT_URL = f"{contract.DEFAULT_HOST}:{contract.DEFAULT_GRPC_PORT}"
RETRYABLE = ("StatusCode.UNAVAILABLE", "UNAVAILABLE")
# gRPC's reconnect backoff grows to 120 s by default: a restarted server would look unavailable that long.
# Keep it below the default retry window (0.2 + 0.4 + 0.8 s) so a retried call reaches a server that is back.
MAX_RECONNECT_BACKOFF_MS = 500
# Requests one client keeps in flight: enough to fill one of Triton's merged batches (max_batch_size 64), few
# enough that a long list neither floods the server's queue nor holds thousands of pending calls in memory.
DEFAULT_MAX_IN_FLIGHT = 64


class ServingError(RuntimeError):
    """The server rejected a request (or was unreachable); the message is the server's, with the text's index."""

    def __init__(self, message: str, status: str | None = None, index: int | None = None):
        super().__init__(message if index is None else f"text {index}: {message}")
        self.status, self.index = status, index


@dataclass(frozen=True)
class MaskPrediction:
    token: str
    token_id: int
    score: float  # probability


@dataclass(frozen=True)
class _Call:
    """What one call sends (one request per text or pair, with its parameters) and how it reads the answers."""

    model: str
    texts: list[str] | list[tuple[str, str | None]]  # one TEXT, or TEXT + TEXT_PAIR (rerank, classify), per request
    parameters: list[dict[str, Any]]  # one per text (token-id input differs per text; options are shared)
    parse: Callable[[list[Any]], Any]


class _ClientBase:
    """Settings, channel, calls, health probes, backoff and errors of both clients; subclasses send the requests."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.2,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s
        self.max_in_flight = _check_in_flight(max_in_flight)
        self._client = self._connect(url)

    def _connect(self, url: str) -> Any:
        """The transport's InferenceServerClient for `url`, with `channel_args()`."""
        raise NotImplementedError

    def _health_probes(self, models: tuple[str, ...]) -> list[Callable[[], Any]]:
        """Triton's liveness, its readiness, then each model's readiness, in that order (called or awaited)."""
        timeout = self.timeout_s
        return [functools.partial(self._client.is_server_live, client_timeout=timeout),
                functools.partial(self._client.is_server_ready, client_timeout=timeout),
                *(functools.partial(self._client.is_model_ready, name, client_timeout=timeout) for name in models)]

    def _backoff_s(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt + 1`: exponential from backoff_s."""
        return self.backoff_s * 2**attempt

    def _unavailable_error(self, detail: str, index: int) -> ServingError:
        return ServingError(f"server at {self.url} unavailable after {self.retries} retries: {detail}",
                            "UNAVAILABLE", index)


class BertforgeClient(_ClientBase):
    """Synchronous client: `fill_mask(texts, top_k)`, `embed(texts)`, `health()`."""

    def fill_mask(self, texts: str | list[str], top_k: int = contract.DEFAULT_TOP_K,
                  truncation: str | None = None) -> list[list[list[MaskPrediction]]]:
        """Per text, per [MASK]: the top_k predictions, most likely first."""
        return self._run(_fill_mask_call(texts, top_k, truncation))

    def embed(self, texts: str | list[str] | list[list[int]], truncation: str | None = None, *,
              prompt_name: str | None = None, dimensions: int | None = None, normalize: bool | None = None,
              truncation_direction: str | None = None) -> np.ndarray:
        """Sentence embeddings, float32 (num_texts, hidden or `dimensions`).

        texts: strings, or lists of token ids (the text's tokens without special tokens; the server adds them).
        prompt_name: one of the model's prompts put before each text (default: the model's default prompt;
        "" = none). dimensions: keep the first N values (re-normalised when the model normalises).
        normalize: L2-normalise (default: as the model defines). truncation_direction: "right" or "left"."""
        return self._run(_embed_call(texts, truncation, prompt_name=prompt_name, dimensions=dimensions,
                                     normalize=normalize, truncation_direction=truncation_direction))

    def rerank(self, query: str, documents: list[str], truncation: str | None = None, *, raw_scores: bool = False,
               model: str = RERANK) -> np.ndarray:
        """Relevance of each document to the query, float32 (num_documents,), in the documents' order:
        sigmoid of the cross-encoder's logit (raw_scores=True: the logit). Only documents are truncated."""
        return self._run(_rerank_call(query, documents, truncation, raw_scores, model))

    def classify(self, texts: str | list[str], text_pairs: list[str] | None = None, truncation: str | None = None, *,
                 model: str = CLASSIFY) -> np.ndarray:
        """The classifier's logits, float32 (num_texts, num_labels); with text_pairs each text is classified with its
        pair (the pair is what gets truncated). Labels, in logit order: the model's serving.json (GET /v1/models)."""
        return self._run(_classify_call(texts, text_pairs, truncation, model))

    def embed_sparse(self, texts: str | list[str], truncation: str | None = None, *,
                     truncation_direction: str | None = None,
                     model: str = EMBED_SPARSE) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text its SPLADE weights' non-zeros: (vocabulary ids int64 ascending, values float32)."""
        return self._run(_sparse_call(texts, truncation, truncation_direction, model))

    def infer(self, model: str, items: list[str | tuple[str, str | None]],
              parameters: dict[str, Any] | None = None) -> list[Any]:
        """Any served model's raw answers (tritonclient InferResults, read with `.as_numpy(name)`): one request per
        item, a TEXT or a (TEXT, TEXT_PAIR) pair, each with `parameters`."""
        return self._run(_raw_call(model, items, parameters))

    def health(self, models: tuple[str, ...] = DEFAULT_TASKS) -> dict[str, Any]:
        """{'live', 'ready', 'models': {name: ready}}; never raises for an unreachable server."""
        try:
            return _health_report([probe() for probe in self._health_probes(models)], models)
        except self._grpc.InferenceServerException as error:
            return _health_failure(error)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BertforgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect(self, url: str) -> Any:
        return self._grpc.InferenceServerClient(url, channel_args=channel_args())

    def _run(self, call: _Call) -> Any:
        return call.parse(self._infer_all(call.model, call.texts, call.parameters))

    def _infer_all(self, model: str, texts: list[str], parameters: list[dict[str, Any]]) -> list[Any]:
        """Send every text at once (async_infer), retry the UNAVAILABLE ones, raise the first other error."""
        results: list[Any] = [None] * len(texts)
        pending = list(range(len(texts)))
        for attempt in range(self.retries + 1):
            errors = self._send_round(model, texts, pending, parameters, results)
            _raise_unless_retryable(errors)
            pending = sorted(errors)
            if not pending:
                return results
            if attempt < self.retries:
                time.sleep(self._backoff_s(attempt))
        index = pending[0]
        raise self._unavailable_error(str(errors[index]), index)

    def _send_round(self, model: str, texts: list[str], pending: list[int], parameters: list[dict[str, Any]],
                    results: list[Any]) -> dict[int, Any]:
        """One concurrent round over `pending` (at most max_in_flight at a time); fills `results`, returns
        {index: error}."""
        errors: dict[int, Any] = {}
        slots = threading.Semaphore(self.max_in_flight)
        finished = threading.Semaphore(0)

        def callback(index: int, result: Any, error: Any) -> None:
            if error is not None:
                errors[index] = error
            else:
                results[index] = result
            slots.release()
            finished.release()

        for index in pending:
            slots.acquire()  # a sliding window: the next text goes out as soon as one answer is back
            self._client.async_infer(model, _inputs(self._grpc, texts[index]),
                                     callback=functools.partial(callback, index),
                                     parameters=parameters[index], client_timeout=self.timeout_s)
        for _ in pending:
            finished.acquire()
        return errors


class AsyncBertforgeClient(_ClientBase):
    """asyncio client (tritonclient.grpc.aio) with the same methods as BertforgeClient, awaitable."""

    async def fill_mask(self, texts: str | list[str], top_k: int = contract.DEFAULT_TOP_K,
                        truncation: str | None = None) -> list[list[list[MaskPrediction]]]:
        return await self._run(_fill_mask_call(texts, top_k, truncation))

    async def embed(self, texts: str | list[str] | list[list[int]], truncation: str | None = None, *,
                    prompt_name: str | None = None, dimensions: int | None = None, normalize: bool | None = None,
                    truncation_direction: str | None = None) -> np.ndarray:
        return await self._run(_embed_call(texts, truncation, prompt_name=prompt_name, dimensions=dimensions,
                                           normalize=normalize, truncation_direction=truncation_direction))

    async def rerank(self, query: str, documents: list[str], truncation: str | None = None, *,
                     raw_scores: bool = False, model: str = RERANK) -> np.ndarray:
        return await self._run(_rerank_call(query, documents, truncation, raw_scores, model))

    async def classify(self, texts: str | list[str], text_pairs: list[str] | None = None,
                       truncation: str | None = None, *, model: str = CLASSIFY) -> np.ndarray:
        return await self._run(_classify_call(texts, text_pairs, truncation, model))

    async def embed_sparse(self, texts: str | list[str], truncation: str | None = None, *,
                           truncation_direction: str | None = None,
                           model: str = EMBED_SPARSE) -> list[tuple[np.ndarray, np.ndarray]]:
        return await self._run(_sparse_call(texts, truncation, truncation_direction, model))

    async def infer(self, model: str, items: list[str | tuple[str, str | None]],
                    parameters: dict[str, Any] | None = None) -> list[Any]:
        return await self._run(_raw_call(model, items, parameters))

    async def health(self, models: tuple[str, ...] = DEFAULT_TASKS) -> dict[str, Any]:
        try:
            return _health_report([await probe() for probe in self._health_probes(models)], models)
        except self._grpc.InferenceServerException as error:
            return _health_failure(error)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncBertforgeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _connect(self, url: str) -> Any:
        import tritonclient.grpc.aio as aioclient

        self._slots = asyncio.Semaphore(self.max_in_flight)  # the window, shared by every call of this client
        return aioclient.InferenceServerClient(url, channel_args=channel_args())

    async def _run(self, call: _Call) -> Any:
        return call.parse(await self._infer_all(call.model, call.texts, call.parameters))

    async def _infer_all(self, model: str, texts: list[str], parameters: list[dict[str, Any]]) -> list[Any]:
        return await asyncio.gather(*(self._infer_one(model, text, index, parameters[index])
                                      for index, text in enumerate(texts)))

    async def _infer_one(self, model: str, text: str, index: int, parameters: dict[str, Any]) -> Any:
        async with self._slots:
            return await self._infer_with_retries(model, text, index, parameters)

    async def _infer_with_retries(self, model: str, text: str, index: int, parameters: dict[str, Any]) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return await self._client.infer(model, _inputs(self._grpc, text), parameters=parameters,
                                                client_timeout=self.timeout_s)
            except self._grpc.InferenceServerException as error:
                if not _is_retryable(error):
                    raise _serving_error(error, index) from None
                if attempt == self.retries:
                    raise self._unavailable_error(error.message(), index) from None
                await asyncio.sleep(self._backoff_s(attempt))
        raise AssertionError("unreachable")


def parse_fill_mask(result: Any) -> list[list[MaskPrediction]]:
    """TOKENS/TOKEN_IDS/SCORES (1, masks, k) -> per mask, the k predictions."""
    tokens = result.as_numpy(contract.TOKENS_OUTPUT)[0]
    token_ids = result.as_numpy(contract.TOKEN_IDS_OUTPUT)[0]
    scores = result.as_numpy(contract.SCORES_OUTPUT)[0]
    return [
        [MaskPrediction(_to_str(token), int(token_id), float(score)) for token, token_id, score in zip(*row)]
        for row in zip(tokens, token_ids, scores)
    ]


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options plus a short reconnect backoff (recovery within ~0.6 s of a restart)."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]


def _fill_mask_call(texts: str | list[str], top_k: int, truncation: str | None) -> _Call:
    texts = _as_list(texts)
    return _Call(FILL_MASK, texts, [_parameters(top_k=top_k, truncation=truncation)] * len(texts),
                 lambda results: [parse_fill_mask(result) for result in results])


def _embed_call(inputs: str | list[str] | list[list[int]], truncation: str | None, **options: Any) -> _Call:
    """A text goes as TEXT; a token-id list as an empty TEXT and its ids in the `token_ids` parameter."""
    inputs = _as_list(inputs)
    shared = _parameters(truncation=truncation, **options)
    texts = [item if isinstance(item, str) else "" for item in inputs]
    parameters = [shared if isinstance(item, str) else {**shared, "token_ids": json.dumps([int(i) for i in item])}
                  for item in inputs]
    return _Call(EMBED, texts, parameters, _parse_embeddings)


def _rerank_call(query: str, documents: list[str], truncation: str | None, raw_scores: bool, model: str) -> _Call:
    """One request per (query, document): Triton's dynamic batcher merges the pairs."""
    if not isinstance(query, str):
        raise ValueError("query must be a string")
    documents = _as_list(documents)

    def parse(results: list[Any]) -> np.ndarray:
        logits = np.array([result.as_numpy(contract.LOGITS_OUTPUT)[0, 0] for result in results], dtype=np.float32)
        return logits if raw_scores else sigmoid(logits)

    return _Call(model, [(query, document) for document in documents],
                 [_parameters(truncation=truncation)] * len(documents), parse)


def _classify_call(texts: str | list[str], text_pairs: list[str] | None, truncation: str | None, model: str) -> _Call:
    texts = _as_list(texts)
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"{len(text_pairs)} text_pairs for {len(texts)} texts; give one pair per text")
    pairs = text_pairs if text_pairs is not None else [None] * len(texts)
    return _Call(model, list(zip(texts, pairs)), [_parameters(truncation=truncation)] * len(texts),
                 lambda results: np.stack([result.as_numpy(contract.LOGITS_OUTPUT)[0] for result in results]))


def _sparse_call(texts: str | list[str], truncation: str | None, direction: str | None, model: str) -> _Call:
    texts = _as_list(texts)
    return _Call(model, texts, [_parameters(truncation=truncation, truncation_direction=direction)] * len(texts),
                 lambda results: [(result.as_numpy(contract.SPARSE_INDICES_OUTPUT)[0],
                                   result.as_numpy(contract.SPARSE_VALUES_OUTPUT)[0]) for result in results])


def _raw_call(model: str, items: list[str | tuple[str, str | None]], parameters: dict[str, Any] | None) -> _Call:
    items = _as_list(items)
    return _Call(model, items, [_parameters(**(parameters or {}))] * len(items), list)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """A cross-encoder's relevance score, as sentence-transformers' CrossEncoder.predict for one-label models."""
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


def _parse_embeddings(results: list[Any]) -> np.ndarray:
    """EMBEDDING (1, hidden) per text -> (num_texts, hidden)."""
    return np.stack([result.as_numpy(contract.EMBEDDING_OUTPUT)[0] for result in results])


def _health_report(answers: list[Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The probes' answers (see _ClientBase._health_probes) as {'live', 'ready', 'models': {name: ready}}."""
    live, ready, *models = answers
    return {"live": live, "ready": ready, "models": dict(zip(names, models))}


def _health_failure(error: Any) -> dict[str, Any]:
    return {"live": False, "ready": False, "models": {}, "error": str(error)}


def _inputs(grpcclient: Any, item: str | tuple[str, str | None]) -> list[Any]:
    """TEXT, or TEXT and TEXT_PAIR for a (text, pair) item (no TEXT_PAIR when the pair is None)."""
    text, pair = (item, None) if isinstance(item, str) else item
    named = [(contract.TEXT_INPUT, text)] + ([(contract.TEXT_PAIR_INPUT, pair)] if pair is not None else [])
    tensors = []
    for name, value in named:
        tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=np.object_))
        tensors.append(tensor)
    return tensors


def _parameters(**values: Any) -> dict[str, Any]:
    """Triton request parameters (str, int, bool): the given ones, None left out (the model's default)."""
    return {name: value for name, value in values.items() if value is not None}


def _as_list(texts: str | list[str] | list[list[int]]) -> list:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no texts given")
    return texts


def _check_in_flight(max_in_flight: int) -> int:
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
    return max_in_flight


def _is_retryable(error: Any) -> bool:
    return str(error.status()) in RETRYABLE


def _serving_error(error: Any, index: int) -> ServingError:
    """A non-retryable answer from the server: its message and status, with the text's index."""
    return ServingError(error.message(), error.status(), index)


def _raise_unless_retryable(errors: dict[int, Any]) -> None:
    for index in sorted(errors):
        error = errors[index]
        if not _is_retryable(error):
            raise _serving_error(error, index)


def _to_str(token: Any) -> str:
    return token.decode("utf-8", errors="replace") if isinstance(token, bytes) else str(token)
