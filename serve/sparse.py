"""Requests of `embed_sparse`: one text each, tokenized as `embed`'s are (serve/text.py); the graph answers a weight
per vocabulary entry (B, vocab) and each request gets its non-zero entries, ascending by vocabulary id."""

from __future__ import annotations

import numpy as np

from bertforge import contract
from serve.text import TextRequest, TextRuntime


class SparseRuntime(TextRuntime):
    def answer(self, requests: list[TextRequest]) -> list[dict[str, np.ndarray]]:
        """SPARSE_INDICES (int64, ascending) and SPARSE_VALUES (float32) of each request's non-zero weights."""
        return [{contract.SPARSE_INDICES_OUTPUT: indices, contract.SPARSE_VALUES_OUTPUT: values}
                for indices, values in self.sparse(requests)]

    def sparse(self, requests: list[TextRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per request (indices, values) of its non-zero vocabulary weights (one ONNX run)."""
        (weights,) = self.session.run([contract.ONNX_SPARSE_EMBEDDING], self._encoder_feeds(requests))  # (B, V)
        answers = []
        for row in weights:
            (indices,) = np.nonzero(row > 0)
            answers.append((indices.astype(np.int64), row[indices].astype(np.float32)))
        return answers
