"""What a `rerank` or `classify` model does with a batch of requests: two texts each (query and document, or a
text and its optional pair), tokenized together as the model's tokenizer pairs them, cut from the second text only
("only_second": the query is never truncated), split by token budget and run; the answer is the head's logits.

Pure Python + tokenizers + ONNX Runtime, no Triton: `serve/pair_backend.py` adapts it to the python backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.served_model import ServingSettings, load_served_tokenizer
from bertforge.tasks import RERANK, TASKS
from serve.runtime import RequestError, _create_session, decode_text, plan_batches, served_model_of


@dataclass
class PairRequest:
    """One validated request: its text, its pair (None: a single text) and (after tokenization) the model's ids."""

    text: str
    pair: str | None
    truncation: str
    ids: list[int] = field(default_factory=list)
    type_ids: list[int] = field(default_factory=list)


def load_pair_runtime(version_dir: Path, device_id: int | None = None) -> PairRuntime:
    """The runtime of `<repo>/<model>/1` for a rerank or classify model."""
    model = served_model_of(version_dir)
    return PairRuntime(model.settings(), model.tokenizer_dir, model.onnx_file, device_id)


class PairRuntime:
    def __init__(self, settings: ServingSettings, tokenizer_dir: Path, onnx_path: Path, device_id: int | None = None):
        self.settings = settings
        self.tokenizer, self.pair_tokenizer = pair_tokenizers(Path(tokenizer_dir) / "tokenizer.json", settings.max_length)
        self.pad_id = self.tokenizer.token_to_id(contract.PAD_TOKEN) or 0
        self.session, self.providers = _create_session(onnx_path, settings, device_id)
        self.input_names = {node.name for node in self.session.get_inputs()}

    # --- request parsing -------------------------------------------------------------------------
    def parse(self, text: object, pair: object, parameters: dict) -> PairRequest:
        """Check one request's texts and parameters; raises RequestError with what to fix."""
        unknown = sorted(key for key in parameters if key not in TASKS[RERANK].parameters)
        if unknown:
            raise RequestError(f"unknown parameter(s) {unknown} for {self.settings.model_name}; valid: "
                               f"{list(TASKS[RERANK].parameters)}")
        truncation = parameters.get("truncation", self.settings.truncation)
        if truncation not in contract.TRUNCATION_POLICIES:
            raise RequestError(f"truncation must be one of {list(contract.TRUNCATION_POLICIES)}, got {truncation!r}")
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

    # --- batching and inference ------------------------------------------------------------------
    def plan_batches(self, requests: list[PairRequest]) -> list[list[int]]:
        """Group request indices so each padded batch stays within max_batch_tokens (short pairs first)."""
        return plan_batches([len(request.ids) for request in requests], self.settings.max_batch_tokens,
                            self.settings.min_batch_fill)

    def logits(self, requests: list[PairRequest]) -> np.ndarray:
        """The head's logits (B, num_labels) for already tokenized requests (one ONNX run)."""
        longest = max(len(request.ids) for request in requests)
        input_ids = np.full((len(requests), longest), self.pad_id, dtype=np.int64)  # (B, T)
        attention_mask = np.zeros_like(input_ids)
        token_type_ids = np.zeros_like(input_ids)
        for row, request in enumerate(requests):
            input_ids[row, : len(request.ids)] = request.ids
            attention_mask[row, : len(request.ids)] = 1
            token_type_ids[row, : len(request.ids)] = request.type_ids
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        (logits,) = self.session.run([contract.ONNX_LOGITS], {k: v for k, v in feeds.items() if k in self.input_names})
        return logits.astype(np.float32)


def pair_tokenizers(tokenizer_file: Path, max_length: int):
    """(single-text tokenizer, pair tokenizer that truncates only the second text), both as the server runs them."""
    from tokenizers import Tokenizer

    single = load_served_tokenizer(tokenizer_file, max_length)
    pair = Tokenizer.from_str(single.to_str())
    pair.no_padding()
    pair.enable_truncation(max_length=max_length, strategy="only_second")
    return single, pair


