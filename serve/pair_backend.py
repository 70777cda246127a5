"""The Triton python-backend side of `rerank` and `classify` (called from each model's 1/model.py).

The request flow is `serve.backend.ServedModel`'s (validate each request alone, tokenize the good ones,
token-budgeted sub-batches, one response each); only parsing (TEXT + TEXT_PAIR) and the answer (LOGITS) differ.
"""

from __future__ import annotations

import json
from typing import Any

from bertforge import contract
from serve.backend import ServedModel
from serve.pair_runtime import PairRequest, load_pair_runtime
from serve.runtime import RequestError


class PairServedModel(ServedModel):
    load_runtime = staticmethod(load_pair_runtime)

    def _parse(self, request: Any) -> PairRequest:
        texts = []
        for name in (contract.TEXT_INPUT, contract.TEXT_PAIR_INPUT):
            tensor = self.pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                texts.append(None)
                continue
            array = tensor.as_numpy()
            if array.size != 1:
                raise RequestError(f"send exactly one {name} per request (shape [1, 1], got {list(array.shape)}); "
                                   "Triton batches concurrent requests itself")
            texts.append(array.reshape(-1)[0])
        if texts[0] is None:
            raise RequestError(f"missing input {contract.TEXT_INPUT}")
        try:
            parameters = json.loads(request.parameters() or "{}")
        except json.JSONDecodeError as error:
            raise RequestError(f"request parameters are not valid JSON: {error}") from None
        return self.runtime.parse(texts[0], texts[1], parameters)

    def _run(self, pair_requests: list[PairRequest]) -> list:
        Tensor, Response = self.pb_utils.Tensor, self.pb_utils.InferenceResponse
        return [Response(output_tensors=[Tensor(contract.LOGITS_OUTPUT, row[None, :])])  # (1, num_labels)
                for row in self.runtime.logits(pair_requests)]
