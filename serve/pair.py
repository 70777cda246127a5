"""Requests of two texts: `rerank` (query and document) and `classify` (a text and its optional pair), tokenized
together as the model's tokenizer pairs them and cut from the second text only ("only_second": the query is never
truncated); the answer is the head's logits. Pure Python + tokenizers + ONNX Runtime, no Triton (serve/backend.py
adapts it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.served_model import ServingSettings, load_served_tokenizer, special_tokens
from bertforge.tasks import RERANK
from serve.runtime import RequestError, Runtime, decode_text, truncation_policy


@dataclass
class PairRequest:
    """One validated request: its text, its pair (None: a single text) and (after tokenization) the model's ids."""

    text: str
    pair: str | None
    truncation: str
    ids: list[int] = field(default_factory=list)
    type_ids: list[int] = field(default_factory=list)


class PairRuntime(Runtime):
    def __init__(self, settings: ServingSettings, tokenizer_dir: Path, onnx_path: Path, device_id: int | None = None):
        super().__init__(settings, tokenizer_dir, onnx_path, device_id)
        self.tokenizer, self.pair_tokenizer = pair_tokenizers(self.tokenizer_dir / "tokenizer.json", settings.max_length)
        pad_token = special_tokens(self.tokenizer_dir)["pad_token"]  # [PAD] for BERT, <pad> for XLM-R, ...
        self.pad_id = self.tokenizer.token_to_id(pad_token) or 0

    # --- request parsing -------------------------------------------------------------------------
    def parse(self, text: object, pair: object, parameters: dict) -> PairRequest:
        """Check one request's texts and parameters; raises RequestError with what to fix."""
        self.check_parameters(parameters)
        truncation = truncation_policy(parameters, self.settings)
        if pair is None and self.settings.task == RERANK:
            raise RequestError(f"rerank needs a query ({contract.TEXT_INPUT}) and a document ({contract.TEXT_PAIR_INPUT})")
        first = decode_text(text, self.settings, "query" if self.settings.task == RERANK else "text")
        second = None if pair is None else decode_text(pair, self.settings, "document" if self.settings.task == RERANK
                                                       else "text pair")
        return PairRequest(text=first, pair=second, truncation=truncation)

    # --- tokenization ----------------------------------------------------------------------------
    def tokenize(self, requests: list[PairRequest]) -> list[RequestError | None]:
        """Fill `ids` of every request; returns a per-request error (or None)."""
        return [self._tokenize(request) for request in requests]

    def _tokenize(self, request: PairRequest) -> RequestError | None:
        if request.pair is None:
            encoding = self.tokenizer.encode(request.text)
        else:
            try:
                encoding = self.pair_tokenizer.encode(request.text, request.pair)
            except Exception:  # tokenizers: "Second sequence not long enough to be truncated"
                query = len(self.tokenizer.encode(request.text, add_special_tokens=False).ids)
                return RequestError(f"the query is {query} tokens; with the document it must fit the model's "
                                    f"{self.settings.max_length} tokens and only the document is cut: shorten the query")
        request.ids, request.type_ids = encoding.ids, encoding.type_ids
        if encoding.overflowing and request.truncation == "error":
            return RequestError(f"the texts are longer than the model's maximum of {self.settings.max_length} tokens "
                                "(send truncation=truncate (TEI: truncate=true) to cut the document, or shorten it)")
        return None

    # --- inference ------------------------------------------------------------------------------
    def answer(self, requests: list[PairRequest]) -> list[dict[str, np.ndarray]]:
        """LOGITS (num_labels,) per request."""
        return [{contract.LOGITS_OUTPUT: row} for row in self.logits(requests)]

    def logits(self, requests: list[PairRequest]) -> np.ndarray:
        """The head's logits (B, num_labels) for already tokenized requests (one ONNX run)."""
        (logits,) = self.session.run([contract.ONNX_LOGITS], self.encoder_feeds(requests, self.pad_id))
        return logits.astype(np.float32)


def pair_tokenizers(tokenizer_file: Path, max_length: int):
    """(single-text tokenizer, pair tokenizer that truncates only the second text), both as the server runs them."""
    from tokenizers import Tokenizer

    single = load_served_tokenizer(tokenizer_file, max_length)
    pair = Tokenizer.from_str(single.to_str())
    pair.no_padding()
    pair.enable_truncation(max_length=max_length, strategy="only_second")
    return single, pair


