"""Requests of one text: `fill_mask` and `embed` (and, through serve/sparse.py, `embed_sparse`).

Each request is a text (or, for embed, the token ids of one) and parameters; the text is prompted, tokenized and
truncated as the model's tokenizer does (either end), and the graph's answer is cut to what the request asked for.
Pure Python + tokenizers + ONNX Runtime, no Triton (serve/backend.py adapts it); the HTTP API shares `TextEncoder`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.served_model import ServingSettings, load_served_tokenizer, special_tokens
from serve.runtime import RequestError, Runtime, decode_text, truncation_policy

TRUNCATION_DIRECTIONS = contract.TRUNCATION_DIRECTIONS


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


class TextRuntime(Runtime):
    """One text per request (TEXT, or token ids in a parameter), tokenized as the model's tokenizer does, prompts and
    truncation from either end included; subclasses run the graph and answer."""

    def __init__(self, settings: ServingSettings, tokenizer_dir: Path, onnx_path: Path, device_id: int | None = None):
        super().__init__(settings, tokenizer_dir, onnx_path, device_id)
        self.tokenizer = load_served_tokenizer(self.tokenizer_dir / "tokenizer.json", settings.max_length)
        # the tokenizer's own padding and mask tokens ([PAD]/[MASK] for BERT, <pad>/<mask> for RoBERTa, ...)
        tokens = special_tokens(self.tokenizer_dir)
        self.mask_token = tokens["mask_token"]
        self.pad_id = self._special_id(tokens["pad_token"])
        self.mask_id = self.tokenizer.token_to_id(self.mask_token)
        self.encoder = TextEncoder(self.tokenizer, settings)
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
        self.check_parameters(parameters)
        top_k = _integer(parameters.get("top_k", self.settings.default_top_k), "top_k", self.settings.max_top_k)
        truncation = truncation_policy(parameters, self.settings)
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
        return None

    def _encoder_feeds(self, requests: list[TextRequest]) -> dict[str, np.ndarray]:
        return self.encoder_feeds(requests, self.pad_id)

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token} token; re-export the model so its tokenizer is copied whole")
        return token_id


class FillMaskRuntime(TextRuntime):
    """`fill_mask`: at least one mask token per text; the graph's top-k at each, with the tokens decoded."""

    def __init__(self, settings: ServingSettings, tokenizer_dir: Path, onnx_path: Path, device_id: int | None = None):
        super().__init__(settings, tokenizer_dir, onnx_path, device_id)
        self.mask_id = self._special_id(self.mask_token)
        self._decoded: dict[int, str] = {}

    def _check_tokens(self, request: TextRequest, truncated: bool) -> RequestError | None:
        error = super()._check_tokens(request, truncated)
        if error is None and self.mask_id not in request.ids:
            where = f" within the first {self.settings.max_length} tokens" if truncated else ""
            return RequestError(f"text has no {self.mask_token} token{where}; fill_mask needs at least one")
        return error

    def answer(self, requests: list[TextRequest]) -> list[dict[str, np.ndarray]]:
        """TOKENS (UTF-8), TOKEN_IDS, SCORES: (masks, k) per request."""
        return [{contract.TOKENS_OUTPUT: np.array([[token.encode() for token in row] for row in result.tokens],
                                                  dtype=np.object_).reshape(result.token_ids.shape),
                 contract.TOKEN_IDS_OUTPUT: result.token_ids, contract.SCORES_OUTPUT: result.scores}
                for result in self.fill_mask(requests)]

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

    def decode(self, token_id: int) -> str:
        if token_id not in self._decoded:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._decoded[token_id] = text or self.tokenizer.id_to_token(token_id) or ""
        return self._decoded[token_id]


class EmbedRuntime(TextRuntime):
    """`embed`: the graph's pooled vector per text, then what the request asked for (dimensions, normalize)."""

    def answer(self, requests: list[TextRequest]) -> list[dict[str, np.ndarray] | RequestError]:
        """EMBEDDING (width or the dimensions asked for) per request, or why it cannot have it."""
        return [row if isinstance(row, RequestError) else {contract.EMBEDDING_OUTPUT: row}
                for row in self.finish_embeddings(requests, self.embed(requests))]

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
