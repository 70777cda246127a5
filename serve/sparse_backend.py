"""The Triton python-backend side of `embed_sparse`: SPLADE vectors of an MLM folder, non-zeros only.

Requests, tokenization, truncation and batching are the `embed` model's (`serve.runtime.ModelRuntime`,
`serve.backend.ServedModel`); the graph answers (B, vocab) and each request gets its non-zero entries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.tasks import EMBED_SPARSE, TASKS
from serve.backend import ServedModel
from serve.runtime import ModelRuntime, RequestError, TextRequest, served_model_of

SPARSE_PARAMETERS = TASKS[EMBED_SPARSE].parameters


class SparseRuntime(ModelRuntime):
    def _parse_parameters(self, parameters: dict) -> TextRequest:
        unknown = sorted(key for key in parameters if key not in SPARSE_PARAMETERS)
        if unknown:
            raise RequestError(f"unknown parameter(s) {unknown} for embed_sparse; valid: {list(SPARSE_PARAMETERS)}")
        return super()._parse_parameters(parameters)

    def sparse(self, requests: list[TextRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per request (indices int64 ascending, values float32) of its non-zero vocabulary weights (one ONNX run)."""
        (weights,) = self.session.run([contract.ONNX_SPARSE_EMBEDDING], self._encoder_feeds(requests))  # (B, V)
        answers = []
        for row in weights:
            (indices,) = np.nonzero(row > 0)
            answers.append((indices.astype(np.int64), row[indices].astype(np.float32)))
        return answers


def load_sparse_runtime(version_dir: Path, device_id: int | None = None) -> SparseRuntime:
    model = served_model_of(version_dir)
    return SparseRuntime(model.settings(), model.tokenizer_dir, model.onnx_file, device_id)


class SparseServedModel(ServedModel):
    load_runtime = staticmethod(load_sparse_runtime)

    def _run(self, text_requests: list[TextRequest]) -> list:
        Tensor, Response = self.pb_utils.Tensor, self.pb_utils.InferenceResponse
        return [Response(output_tensors=[Tensor(contract.SPARSE_INDICES_OUTPUT, indices[None]),  # (1, non_zeros)
                                         Tensor(contract.SPARSE_VALUES_OUTPUT, values[None])])
                for indices, values in self.runtime.sparse(text_requests)]
