"""The one loader of a served model: its settings, its task's runtime, its ONNX Runtime session.

    runtime = load_runtime(version_dir)       # <repo>/<model>/1 -> the runtime the registry names for its task
    session, providers = create_session(onnx_path, settings, device_id)

A runtime is what a served model does with a batch of requests, without Triton: parse and validate each request,
tokenize, split by token budget, run the graph, answer each request with its output tensors. `Runtime` holds what
every task shares (settings, session, batching, padding); one module per kind of request holds the rest
(serve/text.py: fill_mask, embed; serve/pair.py: rerank, classify; serve/sparse.py: embed_sparse), and
serve/backend.py adapts any of them to the python backend. A bad request raises `RequestError` for itself alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bertforge import tasks
from bertforge.served_model import ServedModelDir, ServingSettings

PROVIDERS_ENV = "BERTFORGE_ORT_PROVIDERS"  # e.g. "TensorrtExecutionProvider,CUDAExecutionProvider"


class RequestError(ValueError):
    """One request is invalid; the message goes back to that client only."""


def load_runtime(version_dir: Path, device_id: int | None = None) -> Runtime:
    """The runtime of the model whose version folder is `version_dir` (what Triton hands the backend): the class its
    task names in the registry (bertforge.tasks.Task.runtime), on its settings, tokenizer and graph."""
    model = served_model_of(version_dir)
    settings = model.settings()
    runtime_class = tasks.resolve(tasks.task(settings.task).runtime)
    return runtime_class(settings, model.tokenizer_dir, model.onnx_file, device_id)


def served_model_of(version_dir: Path) -> ServedModelDir:
    """The served model folder whose version folder is `version_dir`."""
    return ServedModelDir(Path(version_dir).parent)


class Runtime:
    """What every task's runtime shares; a subclass parses its requests, tokenizes them and answers them."""

    def __init__(self, settings: ServingSettings, tokenizer_dir: Path, onnx_path: Path, device_id: int | None = None):
        self.settings = settings
        self.task = tasks.task(settings.task)
        self.tokenizer_dir = Path(tokenizer_dir)
        # ONNX Runtime session on the first available provider of the preference list
        self.session, self.providers = create_session(onnx_path, settings, device_id)
        self.input_names = {node.name for node in self.session.get_inputs()}

    def parse(self, *texts_then_parameters: Any) -> Any:
        """One request from its input strings (the task's inputs, in order; None for an absent optional one), then
        its parameters (a dict): `parse(text, parameters)`, `parse(query, document, parameters)`. Raises
        RequestError with what to fix."""
        raise NotImplementedError

    def tokenize(self, requests: list) -> list[RequestError | None]:
        """Fill each request's `ids` and `type_ids`; returns a per-request error (or None)."""
        raise NotImplementedError

    def answer(self, requests: list) -> list[dict[str, np.ndarray] | RequestError]:
        """Per tokenized request, its output tensors by Triton name (without the batch axis), or why it has none."""
        raise NotImplementedError

    def check_parameters(self, parameters: dict) -> None:
        """Refuse parameters the task does not take (bertforge.tasks.Task.parameters)."""
        unknown = sorted(key for key in parameters if key not in self.task.parameters)
        if unknown:
            raise RequestError(f"unknown parameter(s) {unknown} for {self.settings.model_name}; valid: "
                               f"{list(self.task.parameters)}")

    def plan_batches(self, requests: list) -> list[list[int]]:
        """Group request indices so each padded batch stays within max_batch_tokens (short requests first)."""
        return plan_batches([len(request.ids) for request in requests], self.settings.max_batch_tokens,
                            self.settings.min_batch_fill)

    def encoder_feeds(self, requests: list, pad_id: int) -> dict[str, np.ndarray]:
        """The graph's inputs for tokenized requests, padded to the longest of this batch (not to max_length)."""
        longest = max(len(request.ids) for request in requests)
        input_ids = np.full((len(requests), longest), pad_id, dtype=np.int64)  # (B, T)
        attention_mask = np.zeros_like(input_ids)
        token_type_ids = np.zeros_like(input_ids)
        for row, request in enumerate(requests):
            length = len(request.ids)
            input_ids[row, :length] = request.ids
            attention_mask[row, :length] = 1
            token_type_ids[row, :length] = request.type_ids
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return {name: value for name, value in feeds.items() if name in self.input_names}


def create_session(onnx_path: Path, settings: ServingSettings, device_id: int | None = None) -> tuple[Any, list[str]]:
    """(ONNX Runtime session of the served graph, its providers): the first available provider of the settings'
    preference list (BERTFORGE_ORT_PROVIDERS overrides it), CPU always last, the settings' thread count."""
    import onnxruntime as ort

    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"{onnx_path} is missing; run `bertforge export` to fill the model repository")
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = choose_providers(settings.execution_providers, ort.get_available_providers())
    device_options = {"device_id": device_id or 0}
    provider_options = [device_options if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else {}
                        for name in providers]
    session = ort.InferenceSession(str(onnx_path), options, providers=providers, provider_options=provider_options)
    return session, session.get_providers()


def choose_providers(preferred: tuple[str, ...] | list[str], available: list[str]) -> list[str]:
    """First-preference order among the providers this onnxruntime build has; CPU is always the fallback."""
    override = os.environ.get(PROVIDERS_ENV)
    if override:
        preferred = [name.strip() for name in override.split(",") if name.strip()]
    chosen = [name for name in preferred if name in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def decode_text(raw: object, settings: ServingSettings, what: str = "text", allow_empty: bool = False) -> str:
    """One request's string (`what`: text, query, document) as UTF-8, within the model's byte and character
    limits and, unless `allow_empty`, not blank; a RequestError naming the limit otherwise."""
    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.size == 1 else raw
    if isinstance(raw, str):
        raw = raw.encode()
    if not isinstance(raw, bytes):
        raise RequestError(f"the {what} must be one UTF-8 string per request")
    if len(raw) > settings.max_text_bytes:
        raise RequestError(f"{what} is {len(raw)} bytes; the limit is {settings.max_text_bytes} bytes "
                           "(split it or raise serving.max_text_bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(f"{what} is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    if len(text) > settings.max_text_chars:
        raise RequestError(f"{what} is {len(text)} characters; the limit is {settings.max_text_chars} characters "
                           "(split it or raise serving.max_text_chars)")
    if not text.strip() and not allow_empty:
        raise RequestError(f"{what} is empty")
    return text


def truncation_policy(parameters: dict, settings: ServingSettings) -> str:
    """The request's `truncation` (truncate or error), the model's by default."""
    from bertforge.contract import TRUNCATION_POLICIES

    truncation = parameters.get("truncation", settings.truncation)
    if truncation not in TRUNCATION_POLICIES:
        raise RequestError(f"truncation must be one of {list(TRUNCATION_POLICIES)}, got {truncation!r}")
    return truncation


def plan_batches(lengths: list[int], max_batch_tokens: int, min_batch_fill: float = 0.0) -> list[list[int]]:
    """Sort by length and pack greedily: batch_size * longest <= max_batch_tokens, and real tokens at least
    `min_batch_fill` of the padded ones (less padding waste on CPU, at the cost of more, smaller runs)."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    batches: list[list[int]] = []
    current: list[int] = []
    real_tokens = 0
    for index in order:
        longest = lengths[index]  # ascending order: the newcomer is the longest
        padded = (len(current) + 1) * longest
        if current and (padded > max_batch_tokens or real_tokens + longest < min_batch_fill * padded):
            batches.append(current)
            current, real_tokens = [], 0
        current.append(index)
        real_tokens += longest
    if current:
        batches.append(current)
    return batches
