"""What a served model does with a batch of texts: validate, tokenize, split by token budget, run, post-process.

Pure Python + tokenizers + ONNX Runtime, no Triton: `serve/backend.py` adapts it to the python
backend, and tests drive it directly. A bad text raises `RequestError` for that text alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.served_model import ServedModelDir, ServingSettings, load_served_tokenizer, special_tokens
from bertforge.tasks import EMBED, FILL_MASK, TASKS

TRUNCATION_POLICIES = contract.TRUNCATION_POLICIES
TRUNCATION_DIRECTIONS = contract.TRUNCATION_DIRECTIONS
PROVIDERS_ENV = "BERTFORGE_ORT_PROVIDERS"  # e.g. "TensorrtExecutionProvider,CUDAExecutionProvider"


class RequestError(ValueError):
    """One request is invalid; the message goes back to that client only."""


@dataclass
class TextRequest:
    """One validated request: its text (or token ids), options and (after tokenization) the ids the model runs on."""

    text: str
    top_k: int
    truncation: str
    truncation_direction: str = "right"
    prompt: str = ""  # put before the text (or its tokens before token_ids), as sentence-transformers does
    dimensions: int | None = None  # embed: keep the first N values (Matryoshka)
    normalize: bool | None = None  # embed: L2-normalise the returned vector; None = as the model defines
    token_ids: list[int] | None = None  # the text's tokens instead of a text (no special tokens)
    ids: list[int] = field(default_factory=list)
    type_ids: list[int] = field(default_factory=list)


@dataclass
class FillMaskResult:
    tokens: list[list[str]]  # [num_masks][top_k]
    token_ids: np.ndarray  # int64 [num_masks, top_k]
    scores: np.ndarray  # float32 [num_masks, top_k]


def load_runtime(version_dir: Path, device_id: int | None = None) -> ModelRuntime:
    """Build the runtime for a model's version folder (what Triton hands the backend; `ServedModelDir.version_dir`)."""
    model = served_model_of(version_dir)
    return ModelRuntime(model.settings(), model.tokenizer_dir, model.onnx_file, device_id)


def served_model_of(version_dir: Path) -> ServedModelDir:
    """The served model folder whose version folder is `version_dir`."""
    return ServedModelDir(Path(version_dir).parent)


class ModelRuntime:
    def __init__(self, settings: ServingSettings, tokenizer_dir: Path, onnx_path: Path, device_id: int | None = None):
        self.settings = settings
        self.tokenizer = load_served_tokenizer(Path(tokenizer_dir) / "tokenizer.json", settings.max_length)
        # the tokenizer's own padding and mask tokens ([PAD]/[MASK] for BERT, <pad>/<mask> for RoBERTa, ...)
        tokens = special_tokens(Path(tokenizer_dir))
        self.mask_token = tokens["mask_token"]
        self.pad_id = self._special_id(tokens["pad_token"])
        self.mask_id = self._special_id(self.mask_token) if settings.task == FILL_MASK else self.tokenizer.token_to_id(self.mask_token)
        self.encoder = TextEncoder(self.tokenizer, settings)
        self._decoded: dict[int, str] = {}
        # ONNX Runtime session on the first available provider of the preference list
        self.session, self.providers = _create_session(onnx_path, settings, device_id)
        self.input_names = {node.name for node in self.session.get_inputs()}
        self.width = settings.embedding_dim or _static_width(self.session)  # embed: 0 = known only after a run

    # --- request parsing -------------------------------------------------------------------------
    def parse(self, raw: object, parameters: dict) -> TextRequest:
        """Check one request's text and parameters; raises RequestError with what to fix."""
        request = self._parse_parameters(parameters)
        text = decode_text(raw, self.settings, allow_empty=request.token_ids is not None)
        if request.token_ids is not None and text:
            raise RequestError("send either a text or token_ids, not both (TEXT must be empty with token_ids)")
        request.text = text
        return request

    def _parse_parameters(self, parameters: dict) -> TextRequest:
        if not parameters:  # the common request: the model's defaults (checked when the settings loaded)
            return TextRequest(text="", top_k=self.settings.default_top_k, truncation=self.settings.truncation,
                               prompt=self.encoder.default_prompt)
        valid = TASKS[EMBED].parameters if self.settings.task == EMBED else TASKS[FILL_MASK].parameters
        unknown = sorted(key for key in parameters if key not in valid)
        if unknown:
            raise RequestError(f"unknown parameter(s) {unknown} for {self.settings.model_name}; valid: {list(valid)}")
        top_k = _integer(parameters.get("top_k", self.settings.default_top_k), "top_k", self.settings.max_top_k)
        truncation = parameters.get("truncation", self.settings.truncation)
        if truncation not in TRUNCATION_POLICIES:
            raise RequestError(f"truncation must be one of {list(TRUNCATION_POLICIES)}, got {truncation!r}")
        direction = parameters.get("truncation_direction", "right")
        direction = direction.lower() if isinstance(direction, str) else direction  # TEI writes "Left"/"Right"
        if direction not in TRUNCATION_DIRECTIONS:
            raise RequestError(f"truncation_direction must be one of {list(TRUNCATION_DIRECTIONS)}, got {direction!r}")
        dimensions = parameters.get("dimensions")
        if dimensions is not None:
            dimensions = _integer(dimensions, "dimensions", self.width or None)
        normalize = parameters.get("normalize")
        if normalize is not None and not isinstance(normalize, bool):
            raise RequestError(f"normalize must be true or false, got {normalize!r}")
        token_ids = parameters.get("token_ids")
        if token_ids is not None:
            token_ids = self.encoder.check_token_ids(token_ids)
        return TextRequest(text="", top_k=top_k, truncation=truncation, truncation_direction=direction,
                           prompt=self.encoder.prompt(parameters.get("prompt_name")), dimensions=dimensions,
                           normalize=normalize, token_ids=token_ids)

    # --- tokenization ----------------------------------------------------------------------------
    def tokenize(self, requests: list[TextRequest]) -> list[RequestError | None]:
        """Fill `ids` of every request; returns a per-request error (or None)."""
        return [self._check_tokens(request, truncated) for request, truncated in
                zip(requests, self.encoder.encode_requests(requests))]

    def _check_tokens(self, request: TextRequest, truncated: bool) -> RequestError | None:
        if truncated and request.truncation == "error":
            return RequestError(f"text is longer than the model's maximum of {self.settings.max_length} tokens "
                                "(send truncation=truncate (TEI: truncate=true) to cut it, or shorten it)")
        if self.settings.task == FILL_MASK and self.mask_id not in request.ids:
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
        """Sentence embeddings (B, hidden) for already tokenized requests (one ONNX run), as the model computes them."""
        (embeddings,) = self.session.run([contract.ONNX_SENTENCE_EMBEDDING], self._encoder_feeds(requests))
        return embeddings.astype(np.float32)

    def finish_embeddings(self, requests: list[TextRequest], embeddings: np.ndarray) -> list[np.ndarray | RequestError]:
        """Per request what it asked for (dimensions, normalize applied) or why it cannot have it."""
        return [self._finish(request, row) for request, row in zip(requests, embeddings)]

    def _finish(self, request: TextRequest, vector: np.ndarray) -> np.ndarray | RequestError:
        """Matryoshka: the first `dimensions` values, L2-normalised again when the model normalises (or the
        request asks); normalize=false leaves the model's own vector (a graph that normalises stays unit length)."""
        if request.dimensions is not None:
            if request.dimensions > vector.shape[0]:
                return RequestError(f"dimensions must be an integer in 1..{vector.shape[0]} (this model's width), "
                                    f"got {request.dimensions}")
            vector = vector[: request.dimensions]
        normalize = self.settings.normalize if request.normalize is None else request.normalize
        if normalize and (request.dimensions is not None or not self.settings.normalize):
            vector = (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)  # as F.normalize
        return vector

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


class TextEncoder:
    """What a served model runs on for one text: prompt + text, truncated at max_length from the right or the
    left (the model's fast tokenizer: special tokens included), or a client's token ids wrapped in the special
    tokens the tokenizer adds. The backend and the HTTP API (usage, /tokenize) share it."""

    def __init__(self, tokenizer, settings: ServingSettings):
        self.settings = settings
        self.tokenizers = {"right": tokenizer}  # "left": a copy made on first use
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        # the special tokens around a single text, e.g. [CLS] ... [SEP] or <s> ... </s>, read off the tokenizer
        probe = tokenizer.encode("a", add_special_tokens=False).ids
        full = tokenizer.encode("a").ids
        start = next((index for index in range(len(full)) if full[index:index + len(probe)] == probe), len(full))
        self.prefix, self.suffix = full[:start], full[start + len(probe):]
        self.default_prompt = self.prompt(None)

    def prompt(self, name: object) -> str:
        """The prompt text for a request's `prompt_name`: None = the model's default, "" = no prompt."""
        if name is None:
            name = self.settings.default_prompt_name or ""
        if name == "":
            return ""
        if not isinstance(name, str) or name not in self.settings.prompts:
            known = ", ".join(repr(key) for key in sorted(self.settings.prompts)) or "none"
            raise RequestError(f"prompt_name {name!r} is not one of this model's prompts ({known}); "
                               'send prompt_name="" for no prompt')
        return self.settings.prompts[name]

    def tokenizer(self, direction: str = "right"):
        if direction not in self.tokenizers:
            from tokenizers import Tokenizer

            left = Tokenizer.from_str(self.tokenizers["right"].to_str())
            left.no_padding()
            left.enable_truncation(max_length=self.settings.max_length, direction="left")
            self.tokenizers[direction] = left
        return self.tokenizers[direction]

    def check_token_ids(self, value: object) -> list[int]:
        """`token_ids` as sent (a JSON list, as text in a Triton parameter): ids of the vocabulary, at least one."""
        if isinstance(value, str):
            if len(value) > 12 * self.settings.max_text_chars:  # checked before parsing: no huge JSON is read
                raise RequestError(f"token_ids is {len(value)} characters; the limit is "
                                   f"{12 * self.settings.max_text_chars}")
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # invalid, or nested deeper than Python's parser goes
                value = None
        if (not isinstance(value, list) or not value
                or not all(isinstance(item, int) and not isinstance(item, bool) for item in value)):
            raise RequestError('token_ids must be a non-empty JSON list of integers, e.g. "[2023, 2003]"')
        if len(value) > self.settings.max_text_chars:
            raise RequestError(f"{len(value)} token ids; the limit is {self.settings.max_text_chars}")
        bad = [item for item in value if not 0 <= item < self.vocab_size]
        if bad:
            raise RequestError(f"token id {bad[0]} is outside this model's vocabulary (0..{self.vocab_size - 1})")
        return value

    def encode_requests(self, requests: list[TextRequest]) -> list[bool]:
        """Fill each request's ids and type ids; returns whether each was truncated."""
        truncated = [False] * len(requests)
        for direction in TRUNCATION_DIRECTIONS:
            members = [index for index, request in enumerate(requests)
                       if request.truncation_direction == direction and request.token_ids is None]
            if members:
                texts = [requests[index].prompt + requests[index].text for index in members]
                for index, encoding in zip(members, self.encode(texts, direction)):
                    requests[index].ids, requests[index].type_ids = encoding.ids, encoding.type_ids
                    truncated[index] = bool(encoding.overflowing)
        for index, request in enumerate(requests):
            if request.token_ids is not None:
                request.ids, truncated[index] = self.wrap_ids(request.token_ids, request.prompt,
                                                              request.truncation_direction)
                request.type_ids = [0] * len(request.ids)
        return truncated

    def encode(self, texts: list[str], direction: str = "right", add_special_tokens: bool = True) -> list:
        """tokenizers Encodings (truncated at max_length); one text: encode, not encode_batch (that one starts
        the Rust thread pool: more CPU for nothing)."""
        tokenizer = self.tokenizer(direction)
        if len(texts) == 1:
            return [tokenizer.encode(texts[0], add_special_tokens=add_special_tokens)]
        return tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)

    def wrap_ids(self, token_ids: list[int], prompt: str, direction: str) -> tuple[list[int], bool]:
        """The prompt's tokens + the client's, truncated to fit, inside the tokenizer's special tokens."""
        body = (self.tokenizers["right"].encode(prompt, add_special_tokens=False).ids if prompt else []) + token_ids
        room = self.settings.max_length - len(self.prefix) - len(self.suffix)
        truncated = len(body) > room
        if truncated:
            body = body[:room] if direction == "right" else body[len(body) - room:]
        return self.prefix + body + self.suffix, truncated


def _integer(value: object, name: str, maximum: int | None) -> int:
    """A request's positive integer parameter (an integer or its digits), at most `maximum` when known."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (maximum and value > maximum):
        limit = f"1..{maximum}" if maximum else ">= 1"
        raise RequestError(f"{name} must be an integer in {limit}, got {value!r}")
    return value


def _static_width(session) -> int:
    """The embedding width the graph declares (0 for a fill_mask graph or a symbolic width)."""
    for output in session.get_outputs():
        if output.name == contract.ONNX_SENTENCE_EMBEDDING and isinstance(output.shape[-1], int):
            return output.shape[-1]
    return 0


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
