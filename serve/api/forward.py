"""What the API knows about the served models and how it asks Triton: tokenizers, size checks, gRPC aio, health.

The API tokenizes each text with the model's own tokenizer (from the repository) and the backend's own
`TextEncoder` (prompts, truncation, special tokens around token ids) only to count tokens (OpenAI's `usage`),
to see truncation, to answer /tokenize and /decode and to rebuild fill-mask's `sequence`; the model runs in Triton.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertforge.served_model import (
    ServedModelDir,
    ServingSettings,
    load_served_tokenizer,
    served_models,
    special_tokens,
)
from bertforge.tasks import EMBED, FILL_MASK
from serve.api.errors import APIError, from_serving_error
from serve.client import AsyncBertforgeClient, ServingError
from serve.config import ApiConfig
from serve.health import probe, probe_text
from serve.runtime import RequestError
from serve.text import TextEncoder, TextRequest


@dataclass
class Encoded:
    ids: list[int]
    truncated: bool


class ApiModel:
    """One model of the repository as the API sees it: its ServingSettings and its tokenizer (the python backend's
    side of the same folder is serve.backend.ServedModel)."""

    def __init__(self, folder: ServedModelDir):
        self.name = folder.name
        self.settings: ServingSettings = folder.settings()
        self.source = str(folder.info().get("source", self.name))  # what was exported (a hub id or a folder)
        self.tokenizer = load_served_tokenizer(folder.tokenizer_dir / "tokenizer.json", self.settings.max_length)
        self.mask_id = self.tokenizer.token_to_id(special_tokens(folder.tokenizer_dir)["mask_token"])
        self.health_text = probe_text(folder.path.parent, self.name, self.settings.task)
        self.encoder = TextEncoder(self.tokenizer, self.settings)

    def prompt(self, name: str | None) -> str:
        """The request's prompt as the backend will apply it; 400 naming the model's prompts if unknown."""
        try:
            return self.encoder.prompt(name)
        except RequestError as error:
            raise APIError(400, str(error), "invalid_prompt_name") from None

    def check_sizes(self, texts: list[str] | list[list[int]]) -> None:
        """413 for a text over the model's byte or character limit (the same limits Triton's backend applies)."""
        for index, text in enumerate(texts):
            if not isinstance(text, str):  # token ids: the backend checks them
                continue
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError as error:  # a lone surrogate ("\ud800") is valid JSON but no UTF-8
                raise APIError(400, f"input {index} is not valid Unicode ({error.reason} at character "
                                    f"{error.start})", "invalid_text") from None
            if size > self.settings.max_text_bytes:  # bytes first, as the backend checks them
                raise APIError(413, f"input {index} is {size} bytes; the limit is {self.settings.max_text_bytes} "
                                    "(split it)", "input_too_large")
            if len(text) > self.settings.max_text_chars:
                raise APIError(413, f"input {index} is {len(text)} characters; the limit is "
                                    f"{self.settings.max_text_chars} (split it)", "input_too_large")

    def encode(self, inputs: list[str] | list[list[int]], prompt: str = "", direction: str = "right") -> list[Encoded]:
        """The ids the model runs on for each text or token-id list (as the backend builds them)."""
        requests = [TextRequest(text=item, top_k=1, truncation="truncate", truncation_direction=direction,
                                prompt=prompt) if isinstance(item, str) else
                    TextRequest(text="", top_k=1, truncation="truncate", truncation_direction=direction,
                                prompt=prompt, token_ids=list(item)) for item in inputs]
        truncated = self.encoder.encode_requests(requests)
        return [Encoded(request.ids, flag) for request, flag in zip(requests, truncated)]


class TritonForwarder:
    """The API's one gRPC aio client to Triton (shared by all HTTP requests) and the models it serves."""

    def __init__(self, grpc_url: str, repo: Path, config: ApiConfig):
        self.grpc_url, self.config = grpc_url, config
        self.models = {folder.name: ApiModel(folder) for folder in served_models(repo)
                       if folder.serving_file.is_file()}  # fill_mask, embed, rerank, classify
        if not self.models:
            raise FileNotFoundError(f"{repo} holds neither {FILL_MASK} nor {EMBED} "
                                    "(no <model>/1/serving.json); run `bertforge export` first")
        self.client: AsyncBertforgeClient | None = None
        self.dimension: int | None = None  # embed's output size, learnt from the first answer
        self._health: tuple[float, dict] | None = None
        self._health_lock: asyncio.Lock | None = None

    async def start(self) -> None:
        # retries=0: a down Triton is answered 503 at once; the caller (or its SDK) retries
        self.client = AsyncBertforgeClient(self.grpc_url, timeout_s=self.config.timeout_s, retries=0,
                                           max_in_flight=self.config.triton_in_flight)
        self._health_lock = asyncio.Lock()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def model(self, name: str) -> ApiModel:
        if name not in self.models:
            raise APIError(404, f"this repository does not serve {name!r}; served: {sorted(self.models)}",
                           "model_not_found")
        return self.models[name]

    def for_task(self, task: str, name: str | None = None) -> ApiModel:
        """The model that answers `task`: the one named, or the only one of that task whatever the name (as TEI
        and Infinity); no name (TEI's routes) and several: the one named after the task. 404 when none serves it or
        several do and the name picks none, 400 for another task's."""
        serving = {key: model for key, model in self.models.items() if model.settings.task == task}
        if name in serving:
            return serving[name]
        if name is None and task in serving:
            return serving[task]
        if name in self.models:
            raise APIError(400, f"model {name!r} serves {self.models[name].settings.task}, not {task}; "
                                f"{task} models here: {sorted(serving) or 'none'}", "wrong_model_task")
        if len(serving) == 1:
            return next(iter(serving.values()))
        if not serving:
            raise APIError(404, f"this repository serves no {task} model (served: {sorted(self.models)}); export one "
                                f"with `bertforge export --model DIR` (--tasks {task}; docs/tasks.md)", "model_not_found")
        raise APIError(404, f"model {name!r} is not one of the {task} models here: {sorted(serving)}", "model_not_found")

    async def answer(self, call: Awaitable[Any]) -> Any:
        """The awaited answer of one of the client's calls (`forwarder.answer(forwarder.client.rerank(...))`), a
        refusal or failure in Triton answered as the HTTP error it means (serve.api.errors.from_serving_error)."""
        try:
            return await call
        except ServingError as error:
            raise from_serving_error(error) from None

    async def embed(self, inputs: list[str] | list[list[int]], truncation: str | None = None, **options: Any) -> np.ndarray:
        """Embeddings from Triton; `options` are AsyncBertforgeClient.embed's (prompt_name, dimensions, ...)."""
        vectors = await self.answer(self.client.embed(inputs, truncation=truncation, **options))
        if options.get("dimensions") is None:
            self.dimension = int(vectors.shape[1])
        return vectors

    async def embedding_dimension(self) -> int:
        if self.dimension is None:
            await self.embed([self.models[EMBED].health_text], None)
        return self.dimension

    async def ready(self) -> dict:
        """Triton's own readiness (cheap: no inference). Triton keeps saying ready when a model's stub died."""
        return await self.client.health(tuple(self.models))

    async def health(self) -> dict:
        """A real inference on each model, each within health_timeout_s; cached health_cache_s seconds."""
        async with self._health_lock:  # concurrent /health calls share one probe
            now = time.monotonic()
            if self._health is not None and now - self._health[0] < self.config.health_cache_s:
                return self._health[1]
            results = await asyncio.gather(*(self._probe(name) for name in self.models))
            models = dict(zip(self.models, results))
            report = {"healthy": all(result["ok"] for result in results), "models": models,
                      "checked_at": time.time()}
            self._health = (time.monotonic(), report)
            return report

    async def _probe(self, name: str) -> dict:
        started = time.perf_counter()
        call = probe(self.client, name, self.models[name].settings.task, self.models[name].health_text)
        try:
            await asyncio.wait_for(call, self.config.health_timeout_s)
        except TimeoutError:
            return {"ok": False, "reason": f"no answer within {self.config.health_timeout_s} s"}
        except ServingError as error:
            return {"ok": False, "reason": str(error)}
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}

