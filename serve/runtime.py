"""What a served model does with a batch of texts: validate, tokenize, split by token budget, run, post-process.

Pure Python + tokenizers + ONNX Runtime, no Triton: `serve/backend.py` adapts it to the python
backend, and tests drive it directly. A bad text raises `RequestError` for that text alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertforge import contract
from serve.repository import ServingSettings, load_serving_settings

TRUNCATION_POLICIES = contract.TRUNCATION_POLICIES
PROVIDERS_ENV = "BERTFORGE_ORT_PROVIDERS"  # e.g. "TensorrtExecutionProvider,CUDAExecutionProvider"


class RequestError(ValueError):
    """One request is invalid; the message goes back to that client only."""


@dataclass
class TextRequest:
    """One validated request: its text, options and (after tokenization) its token ids."""

    text: str
    top_k: int
    truncation: str
    ids: list[int] = field(default_factory=list)
    type_ids: list[int] = field(default_factory=list)


@dataclass
class FillMaskResult:
    tokens: list[list[str]]  # [num_masks][top_k]
    token_ids: np.ndarray  # int64 [num_masks, top_k]
    scores: np.ndarray  # float32 [num_masks, top_k]


def load_runtime(version_dir: Path, device_id: int | None = None) -> ModelRuntime:
    """Build the runtime for `<repo>/<model>/1` (serving.json, tokenizer/, model.onnx)."""
    version_dir = Path(version_dir)
    settings = load_serving_settings(version_dir)
    return ModelRuntime(settings, version_dir / "tokenizer", version_dir / "model.onnx", device_id)


class ModelRuntime:
    def __init__(self, settings: ServingSettings, tokenizer_dir: Path, onnx_path: Path, device_id: int | None = None):
        self.settings = settings
        self.tokenizer = load_tokenizer(Path(tokenizer_dir) / "tokenizer.json", settings.max_length)
        # the tokenizer's own padding and mask tokens ([PAD]/[MASK] for BERT, <pad>/<mask> for RoBERTa, ...)
        tokens = special_tokens(Path(tokenizer_dir))
        self.mask_token = tokens["mask_token"]
        self.pad_id = self._special_id(tokens["pad_token"])
        self.mask_id = self._special_id(self.mask_token) if settings.task == "fill_mask" else self.tokenizer.token_to_id(self.mask_token)
        self._decoded: dict[int, str] = {}
        # ONNX Runtime session on the first available provider of the preference list
        self.session, self.providers = _create_session(onnx_path, settings, device_id)
        self.input_names = {node.name for node in self.session.get_inputs()}

    # --- request parsing -------------------------------------------------------------------------
    def parse(self, raw: object, parameters: dict) -> TextRequest:
        """Check one request's text and parameters; raises RequestError with what to fix."""
        if isinstance(raw, np.ndarray):
            raw = raw.item() if raw.size == 1 else raw
        if isinstance(raw, str):
            raw = raw.encode()
        if not isinstance(raw, bytes):
            raise RequestError(f"{contract.TEXT_INPUT} must hold one UTF-8 string per request")
        if len(raw) > self.settings.max_text_bytes:
            raise RequestError(f"text is {len(raw)} bytes; the limit is {self.settings.max_text_bytes} bytes "
                               "(split it or raise serving.max_text_bytes)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestError(f"text is not valid UTF-8 ({error.reason} at byte {error.start})") from None
        if len(text) > self.settings.max_text_chars:
            raise RequestError(f"text is {len(text)} characters; the limit is {self.settings.max_text_chars} characters "
                               "(split it or raise serving.max_text_chars)")
        if not text.strip():
            raise RequestError("text is empty")
        top_k, truncation = self._parse_parameters(parameters)
        return TextRequest(text=text, top_k=top_k, truncation=truncation)

    def _parse_parameters(self, parameters: dict) -> tuple[int, str]:
        unknown = sorted(key for key in parameters if key not in ("top_k", "truncation"))
        if unknown:
            raise RequestError(f"unknown parameter(s) {unknown}; valid: top_k (fill_mask), truncation")
        top_k = parameters.get("top_k", self.settings.default_top_k)
        if isinstance(top_k, str) and top_k.strip().isdigit():
            top_k = int(top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.settings.max_top_k:
            raise RequestError(f"top_k must be an integer in 1..{self.settings.max_top_k}, got {top_k!r}")
        truncation = parameters.get("truncation", self.settings.truncation)
        if truncation not in TRUNCATION_POLICIES:
            raise RequestError(f"truncation must be one of {list(TRUNCATION_POLICIES)}, got {truncation!r}")
        return top_k, truncation

    # --- tokenization ----------------------------------------------------------------------------
    def tokenize(self, requests: list[TextRequest]) -> list[RequestError | None]:
        """Fill `ids` of every request; returns a per-request error (or None)."""
        encodings = self.tokenizer.encode_batch([request.text for request in requests])
        errors: list[RequestError | None] = []
        for request, encoding in zip(requests, encodings):
            request.ids, request.type_ids = encoding.ids, encoding.type_ids
            errors.append(self._check_tokens(request, truncated=bool(encoding.overflowing)))
        return errors

    def _check_tokens(self, request: TextRequest, truncated: bool) -> RequestError | None:
        if truncated and request.truncation == "error":
            return RequestError(f"text is longer than the model's maximum of {self.settings.max_length} tokens "
                                "(send truncation=truncate to cut it, or shorten it)")
        if self.settings.task == "fill_mask" and self.mask_id not in request.ids:
            where = f" within the first {self.settings.max_length} tokens" if truncated else ""
            return RequestError(f"text has no {self.mask_token} token{where}; fill_mask needs at least one")
        return None

    # --- batching --------------------------------------------------------------------------------
    def plan_batches(self, requests: list[TextRequest]) -> list[list[int]]:
        """Group request indices so each padded batch stays within max_batch_tokens (short texts first)."""
        lengths = [len(request.ids) for request in requests]
        return plan_batches(lengths, self.settings.max_batch_tokens, self.settings.min_batch_fill)

    # --- inference -------------------------------------------------------------------------------
    def fill_mask(self, requests: list[TextRequest]) -> list[FillMaskResult]:
        """Top-k tokens per [MASK] for already tokenized requests (one ONNX run)."""
        feeds = self._encoder_feeds(requests)
        input_ids = feeds["input_ids"]  # (B, T)
        positions = np.flatnonzero(input_ids == self.mask_id).astype(np.int64)  # (M,) flat b*T+t
        feeds[contract.ONNX_MASK_POSITIONS] = positions
        top_ids, top_probs = self.session.run([contract.ONNX_TOP_IDS, contract.ONNX_TOP_PROBS], feeds)  # (M, K)
        rows = positions // input_ids.shape[1]
        results = []
        for index, request in enumerate(requests):
            ids = top_ids[rows == index, : request.top_k].astype(np.int64)
            probs = top_probs[rows == index, : request.top_k].astype(np.float32)
            tokens = [[self.decode(int(token_id)) for token_id in mask_row] for mask_row in ids]
            results.append(FillMaskResult(tokens=tokens, token_ids=ids, scores=probs))
        return results

    def embed(self, requests: list[TextRequest]) -> np.ndarray:
        """Sentence embeddings (B, hidden) for already tokenized requests (one ONNX run)."""
        (embeddings,) = self.session.run([contract.ONNX_SENTENCE_EMBEDDING], self._encoder_feeds(requests))
        return embeddings.astype(np.float32)

    def decode(self, token_id: int) -> str:
        if token_id not in self._decoded:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._decoded[token_id] = text or self.tokenizer.id_to_token(token_id) or ""
        return self._decoded[token_id]

    def _encoder_feeds(self, requests: list[TextRequest]) -> dict[str, np.ndarray]:
        """Pad to the longest text of this batch (not to max_length)."""
        longest = max(len(request.ids) for request in requests)
        input_ids = np.full((len(requests), longest), self.pad_id, dtype=np.int64)  # (B, T)
        attention_mask = np.zeros_like(input_ids)
        token_type_ids = np.zeros_like(input_ids)
        for row, request in enumerate(requests):
            length = len(request.ids)
            input_ids[row, :length] = request.ids
            attention_mask[row, :length] = 1
            token_type_ids[row, :length] = request.type_ids
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return {name: value for name, value in feeds.items() if name in self.input_names}

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token} token; re-export the model so its tokenizer is copied whole")
        return token_id


def special_tokens(tokenizer_dir: Path) -> dict[str, str]:
    """pad_token and mask_token as the exported tokenizer names them (tokenizer_config.json, else
    special_tokens_map.json); BERT's [PAD]/[MASK] for tokenizers saved without either file."""
    import json

    found = {"pad_token": contract.PAD_TOKEN, "mask_token": contract.MASK_TOKEN}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the later file wins
        path = tokenizer_dir / name
        if path.is_file():
            values = json.loads(path.read_text())
            for key in found:
                value = values.get(key)
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str) and value:
                    found[key] = value
    return found


def load_tokenizer(tokenizer_file: Path, max_length: int):
    """The fast (Rust) tokenizer exactly as the server runs it: no padding (a batch is padded to its longest
    text; HF folders such as sentence-transformers' ship tokenizer.json with fixed padding to 128), truncation
    at `max_length`. Anything that counts served tokens (bench) must use this, not a bare Tokenizer.from_file."""
    from tokenizers import Tokenizer

    if not Path(tokenizer_file).is_file():
        raise FileNotFoundError(f"{tokenizer_file} is missing; the exporter must copy the HF tokenizer folder")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


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


def choose_providers(preferred: tuple[str, ...] | list[str], available: list[str]) -> list[str]:
    """First-preference order among the providers this onnxruntime build has; CPU is always the fallback."""
    override = os.environ.get(PROVIDERS_ENV)
    if override:
        preferred = [name.strip() for name in override.split(",") if name.strip()]
    chosen = [name for name in preferred if name in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _create_session(onnx_path: Path, settings: ServingSettings, device_id: int | None):
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
