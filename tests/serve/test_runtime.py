"""`serve.runtime` and `serve.backend` without Triton: parsing, token budget, per-request errors in a batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge import contract
from serve.backend import ServedModel
from serve.runtime import PROVIDERS_ENV, RequestError, choose_providers, load_runtime, plan_batches


def test_plan_batches_respects_token_budget_and_puts_short_texts_first():
    lengths = [100, 5, 7, 60, 6, 100]
    batches = plan_batches(lengths, max_batch_tokens=128)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[index] for index in batch) <= 128
    assert batches[0] == [1, 4, 2]  # the short ones run first, together
    assert plan_batches([10] * 8, max_batch_tokens=4096) == [list(range(8))]


def test_plan_batches_can_limit_padding_waste():
    lengths = [10, 11, 12, 40, 41, 120]
    assert plan_batches(lengths, 4096) == [list(range(6))]
    batches = plan_batches(lengths, 4096, min_batch_fill=0.7)
    assert batches == [[0, 1, 2], [3, 4], [5]]
    for batch in batches:
        assert sum(lengths[i] for i in batch) >= 0.7 * len(batch) * max(lengths[i] for i in batch)


def test_choose_providers_prefers_available_ones_and_honours_the_environment(monkeypatch):
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.delenv(PROVIDERS_ENV, raising=False)
    assert choose_providers(("TensorrtExecutionProvider", "CUDAExecutionProvider"), available) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(("CUDAExecutionProvider",), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    monkeypatch.setenv(PROVIDERS_ENV, "CPUExecutionProvider")
    assert choose_providers(("CUDAExecutionProvider",), available) == ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def fill_mask_runtime(served_repo):
    return load_runtime(served_repo / contract.FILL_MASK_MODEL / "1")


def test_parse_rejects_bad_parameters(fill_mask_runtime):
    with pytest.raises(RequestError, match="top_k"):
        fill_mask_runtime.parse(b"the [MASK]", {"top_k": True})
    assert fill_mask_runtime.parse(b"the [MASK]", {"top_k": "3"}).top_k == 3
    assert fill_mask_runtime.parse(np.array([b"the [MASK]"], dtype=np.object_), {}).top_k == contract.DEFAULT_TOP_K


def test_batch_is_padded_to_its_longest_text_not_to_max_length(fill_mask_runtime):
    requests = [fill_mask_runtime.parse(text.encode(), {}) for text in ("a [MASK]", "the minister [MASK] it today")]
    fill_mask_runtime.tokenize(requests)
    feeds = fill_mask_runtime._encoder_feeds(requests)
    longest = max(len(request.ids) for request in requests)
    assert feeds["input_ids"].shape == (2, longest) < (2, fill_mask_runtime.settings.max_length)
    assert feeds["attention_mask"].sum() == sum(len(request.ids) for request in requests)


class FakeTriton:
    """Just enough of triton_python_backend_utils to drive ServedModel.execute in-process."""

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class TritonError(Exception):
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code=None):
            super().__init__(message)
            self.code = code

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs = {tensor.name: tensor.array for tensor in output_tensors}
            self.error = error

    class Request:
        def __init__(self, text, parameters=None):
            self.tensor = FakeTriton.Tensor(contract.TEXT_INPUT, np.array([[text]], dtype=np.object_))
            self._parameters = json.dumps(parameters or {})

        def parameters(self):
            return self._parameters

    class Logger:
        @staticmethod
        def log_error(message):
            pass

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request.tensor if name == contract.TEXT_INPUT else None


def test_bad_requests_in_a_batch_fail_alone_and_answers_keep_request_order(fill_mask_runtime):
    model = ServedModel(fill_mask_runtime, FakeTriton)
    texts = [b"the [MASK] said.", b"", b"no mask", b"\xff [MASK]", b"a long " * 12 + b"[MASK] text", b"[MASK] [MASK]"]
    responses = model.execute([FakeTriton.Request(text, {"top_k": 2}) for text in texts])
    assert [response.error is None for response in responses] == [True, False, False, False, True, True]
    assert all(response.error.code == "INVALID_ARG" for response in responses if response.error)
    assert [response.outputs[contract.TOKEN_IDS_OUTPUT].shape for response in responses if not response.error] == [
        (1, 1, 2), (1, 1, 2), (1, 2, 2)]
    # each answer equals the answer for that text alone
    alone = model.execute([FakeTriton.Request(texts[5], {"top_k": 2})])[0]
    np.testing.assert_array_equal(alone.outputs[contract.TOKEN_IDS_OUTPUT], responses[5].outputs[contract.TOKEN_IDS_OUTPUT])
    np.testing.assert_allclose(alone.outputs[contract.SCORES_OUTPUT], responses[5].outputs[contract.SCORES_OUTPUT],
                               atol=1e-6)


def test_inference_failure_fails_its_sub_batch_with_internal_error(fill_mask_runtime, monkeypatch):
    model = ServedModel(fill_mask_runtime, FakeTriton)
    monkeypatch.setattr(fill_mask_runtime, "fill_mask", lambda requests: 1 / 0)
    (response,) = model.execute([FakeTriton.Request(b"the [MASK]")])
    assert response.error.code == "INTERNAL" and "inference failed" in str(response.error)


class FakeTritonWithSenders(FakeTriton):
    """Like FakeTriton, plus the non-decoupled response sender of Triton >= 24.x (records send order)."""

    TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    sent: list = []

    class Request(FakeTriton.Request):
        def get_response_sender(self):
            request = self

            class Sender:
                def send(self, response, flags=0):
                    assert flags == FakeTritonWithSenders.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                    FakeTritonWithSenders.sent.append((request, response))

            return Sender()


def test_short_texts_are_answered_before_a_long_sub_batch_runs(fill_mask_runtime, monkeypatch):
    model = ServedModel(fill_mask_runtime, FakeTritonWithSenders)
    monkeypatch.setattr(fill_mask_runtime.settings, "max_batch_tokens", 64)  # one 64-token text per sub-batch
    long_text = b"the committee " * 20 + b"[MASK]"
    requests = [FakeTritonWithSenders.Request(text) for text in (long_text, b"a [MASK]", b"the [MASK] said", b"")]
    FakeTritonWithSenders.sent.clear()
    assert model.execute(requests) is None  # answers went through the senders
    order = [requests.index(request) for request, _ in FakeTritonWithSenders.sent]
    assert sorted(order) == [0, 1, 2, 3]  # exactly one response per request
    assert order.index(0) == 3  # the long text comes last, after the error and the short ones
