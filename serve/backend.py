"""The Triton python-backend side of every served model (each model's 1/model.py builds `ServedModel`).

`execute` receives the requests Triton's dynamic batcher merged. Every request is validated on its own (a bad one
gets an error response; the others still run), the valid ones are tokenized together, split by token budget and
run through ONNX Runtime, shortest first. Each request gets exactly one response, sent as soon as its sub-batch is
done, so one long text does not hold up short ones. What a request is and what it gets back is its task's runtime
(serve.runtime.load_runtime: the registry's `Task.runtime`); this class only moves tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bertforge import contract
from serve.runtime import RequestError, Runtime, load_runtime


class ServedModel:
    def __init__(self, runtime: Runtime, pb_utils: Any):
        self.runtime = runtime
        self.pb_utils = pb_utils

    @classmethod
    def from_triton_args(cls, args: dict, pb_utils: Any) -> ServedModel:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        device_id = int(args["model_instance_device_id"]) if args.get("model_instance_kind") == "GPU" else None
        runtime = load_runtime(version_dir, device_id)
        pb_utils.Logger.log_info(f"bertforge {args['model_name']}: task={runtime.settings.task} "
                                 f"precision={runtime.settings.precision} providers={runtime.providers}")
        return cls(runtime, pb_utils)

    def execute(self, requests: list) -> list | None:
        """Answer each request as soon as its sub-batch is done (response sender), else return them in order."""
        senders = self._response_senders(requests)
        responses: list[Any] = [None] * len(requests)

        def deliver(index: int, response: Any) -> None:
            responses[index] = response
            if senders:
                senders[index].send(response, flags=self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        try:
            self._answer(requests, deliver)
        except Exception as error:  # a bug here must not leave requests unanswered or kill the model
            self.pb_utils.Logger.log_error(f"bertforge execute failed: {error!r}")
        for index, response in enumerate(responses):
            if response is None:
                deliver(index, self._error("internal server error; see the tritonserver log", "INTERNAL"))
        return None if senders else responses

    def _answer(self, requests: list, deliver: Any) -> None:
        # Validate each request alone; keep the good ones
        valid: list[tuple[int, Any]] = []
        for index, request in enumerate(requests):
            try:
                valid.append((index, self._parse(request)))
            except RequestError as error:
                deliver(index, self._error(str(error)))
        if not valid:
            return
        # Tokenize the good ones together; tokens can still reject a request (too long, no [MASK])
        errors = self.runtime.tokenize([text_request for _, text_request in valid])
        for (index, _), error in zip(valid, errors):
            if error is not None:
                deliver(index, self._error(str(error)))
        valid = [item for item, error in zip(valid, errors) if error is None]
        # Token-budgeted sub-batches, shortest texts first: short requests are answered before long ones run
        for group in self.runtime.plan_batches([text_request for _, text_request in valid]) if valid else []:
            members = [valid[position] for position in group]
            try:
                answers = self._run([text_request for _, text_request in members])
            except Exception as error:  # an ORT failure fails this sub-batch only, never the server
                self.pb_utils.Logger.log_error(f"bertforge inference failed: {error!r}")
                answers = [self._error(f"inference failed: {error}", "INTERNAL")] * len(members)
            for (index, _), answer in zip(members, answers):
                deliver(index, answer)

    def _response_senders(self, requests: list) -> list | None:
        """Per-request senders when this python backend lets a non-decoupled model use them (Triton >= 24.x)."""
        if not hasattr(self.pb_utils, "TRITONSERVER_RESPONSE_COMPLETE_FINAL"):
            return None
        if not all(hasattr(request, "get_response_sender") for request in requests):
            return None
        return [request.get_response_sender() for request in requests]

    def close(self) -> None:
        self.runtime = None

    def _parse(self, request: Any) -> Any:
        """The task's inputs (one string each; None for an absent optional one) and parameters -> its runtime's request."""
        texts = []
        for tensor_spec in self.runtime.task.inputs:
            tensor = self.pb_utils.get_input_tensor_by_name(request, tensor_spec.name)
            if tensor is None:
                if not tensor_spec.optional:
                    raise RequestError(f"missing input {tensor_spec.name}")
                texts.append(None)
                continue
            array = tensor.as_numpy()  # (n, 1) object array of bytes
            if array.size != 1:
                what = "text" if tensor_spec.name == contract.TEXT_INPUT else tensor_spec.name
                raise RequestError(f"send exactly one {what} per request (shape [1, 1], got {list(array.shape)}); "
                                   "Triton batches concurrent requests itself")
            texts.append(array.reshape(-1)[0])
        try:
            parameters = json.loads(request.parameters() or "{}")
        except json.JSONDecodeError as error:
            raise RequestError(f"request parameters are not valid JSON: {error}") from None
        return self.runtime.parse(*texts, parameters)

    def _run(self, requests: list) -> list:
        """One ONNX run for the sub-batch; each request's output tensors (a batch axis of 1 added) or its error."""
        Tensor, Response = self.pb_utils.Tensor, self.pb_utils.InferenceResponse
        return [self._error(str(outputs)) if isinstance(outputs, RequestError)
                else Response(output_tensors=[Tensor(name, value[None]) for name, value in outputs.items()])
                for outputs in self.runtime.answer(requests)]

    def _error(self, message: str, code: str = "INVALID_ARG") -> Any:
        """An error response for one request (INVALID_ARG: the client's input; INTERNAL: ours)."""
        error_type = self.pb_utils.TritonError
        error = error_type(message, getattr(error_type, code)) if hasattr(error_type, code) else error_type(message)
        return self.pb_utils.InferenceResponse(output_tensors=[], error=error)
