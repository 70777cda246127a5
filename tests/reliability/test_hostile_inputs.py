"""A catalogue of hostile inputs sent to a real tritonserver: each gets its expected gRPC status and message
(or, for text that must work, the right answer), and afterwards the same server still answers correctly."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from bertforge import contract
from bertforge.tasks import EMBED, FILL_MASK
from serve.client import parse_fill_mask
from tests.reliability.reference import assert_embedding_matches, assert_fill_mask_matches

pytestmark = pytest.mark.slow  # starts tritonserver

FILL, EMBED = FILL_MASK, EMBED
OK = "OK"


@dataclass
class Case:
    """One hostile request. `payload`: a text (str/bytes) sent as TEXT [1, 1]; ("tensor", name, datatype, array);
    or ("raw", bytes) for a serialized ModelInferRequest sent over a raw gRPC channel."""

    model: str
    payload: Any
    parameters: dict = field(default_factory=dict)
    status: str = "INVALID_ARGUMENT"
    message: str = ""
    expected_text: str | None = None  # OK cases: the served answer equals the reference for this text
    top_k: int = contract.DEFAULT_TOP_K


def text_tensor(text: str | bytes, rows: int = 1, columns: int = 1):
    data = text if isinstance(text, bytes) else text.encode()
    return np.array([[data] * columns] * rows, dtype=np.object_)


def infer_request(model: str, content: bytes, shape=(1, 1)) -> bytes:
    """A serialized ModelInferRequest carrying `content` as TEXT's raw (length-prefixed BYTES) contents."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    if content is not None:
        tensor = request.inputs.add(name=contract.TEXT_INPUT, datatype="BYTES")
        tensor.shape.extend(shape)
        request.raw_input_contents.append(content)
    return request.SerializeToString()


GOOD = infer_request(EMBED, struct.pack("<I", 11) + b"hello world")
MAX_BATCH = 64  # ServingOptions.max_batch_size, what the exporter writes (checked below)

CATALOGUE: dict[str, Case] = {
    # text content and size (checked by serve.runtime before tokenization)
    "empty": Case(FILL, "", message="text is empty"),
    "whitespace-only": Case(EMBED, " \t\n\u3000 ", message="text is empty"),
    "1 MB text": Case(EMBED, "a" * 1_000_000, message="text is 1000000 bytes; the limit is 65536 bytes"),
    "10,000 masks": Case(FILL, contract.MASK_TOKEN * 10_000,
                         message="text is 60000 characters; the limit is 32768 characters"),
    "1,000 masks (within limits): one row per mask kept after truncation":
        Case(FILL, "[MASK] " * 1000, status=OK, expected_text="[MASK] " * 1000),
    "invalid UTF-8": Case(FILL, b"caf\xe9 [MASK]", message="text is not valid UTF-8 (invalid continuation byte at byte 3)"),
    "UTF-8 surrogate": Case(FILL, b"\xed\xa0\x80 [MASK]", message="text is not valid UTF-8"),
    "NUL bytes (cleaned like BERT's normalizer)":
        Case(FILL, "the \x00minister [MASK]\x00 the report.", status=OK, expected_text="the minister [MASK] the report."),
    "control characters (cleaned)":
        Case(FILL, "the \x01\x07\x1b minister [MASK] the\x7f report.", status=OK,
             expected_text="the minister [MASK] the report."),
    "emoji (must work)": Case(FILL, "I love 🍕🎉 [MASK] 👍🏽 today", status=OK, expected_text="I love 🍕🎉 [MASK] 👍🏽 today"),
    "non-Latin scripts (must work)": Case(EMBED, "Министр 東京 مرحبا नमस्ते Ωμέγα", status=OK,
                                          expected_text="Министр 東京 مرحبا नमस्ते Ωμέγα"),
    "no [MASK] for fill_mask": Case(FILL, "no mask in this text", message="text has no [MASK] token"),
    "too long with truncation=error": Case(EMBED, "budget " * 100, {"truncation": "error"},
                                           message="longer than the model's maximum of 64 tokens"),
    # tensors and batches (checked by Triton against config.pbtxt, or by serve.backend)
    "wrong dtype": Case(FILL, ("tensor", "TEXT", "INT64", np.zeros((1, 1), np.int64)),
                        message="data-type is 'INT64', but model 'fill_mask' expects 'BYTES'"),
    "wrong shape": Case(FILL, ("tensor", "TEXT", "BYTES", text_tensor("the [MASK]", columns=2)),
                        message="unexpected shape for input 'TEXT' for model 'fill_mask'"),
    "wrong input name": Case(FILL, ("tensor", "TEXTS", "BYTES", text_tensor("the [MASK]")),
                             message="unexpected inference input 'TEXTS'"),
    "batch above the limit": Case(FILL, ("tensor", "TEXT", "BYTES", text_tensor("the [MASK]", rows=MAX_BATCH + 1)),
                                  message=f"batch-size must be <= {MAX_BATCH}"),
    "two texts in one request": Case(EMBED, ("tensor", "TEXT", "BYTES", text_tensor("hello", rows=2)),
                                     message="send exactly one text per request"),
    "unknown model": Case("summarize", "hello", status="NOT_FOUND", message="unknown model: 'summarize'"),
    # parameters
    "unknown parameter": Case(EMBED, "hello", {"colour": "red"}, message="unknown parameter(s) ['colour']"),
    "negative top_k": Case(FILL, "the [MASK]", {"top_k": -1}, message="top_k must be an integer in 1..20, got -1"),
    "huge top_k": Case(FILL, "the [MASK]", {"top_k": 2**62}, message=f"top_k must be an integer in 1..20, got {2**62}"),
    "non-integer top_k": Case(FILL, "the [MASK]", {"top_k": "five"}, message="top_k must be an integer in 1..20, got 'five'"),
    "bad truncation": Case(EMBED, "hello", {"truncation": "sometimes"}, message="truncation must be one of"),
    "unknown prompt_name": Case(EMBED, "hello", {"prompt_name": "nope"}, message="prompt_name 'nope' is not one"),
    "non-string prompt_name": Case(EMBED, "hello", {"prompt_name": 5}, message="prompt_name 5 is not one"),
    "huge dimensions": Case(EMBED, "hello", {"dimensions": 2**62}, message="dimensions must be an integer in 1.."),
    "token_ids not a list": Case(EMBED, "", {"token_ids": '{"a": 1}'}, message="token_ids must be a non-empty JSON"),
    "token_ids nested 100,000 deep": Case(EMBED, "", {"token_ids": "[" * 100_000 + "]" * 100_000},
                                          message="token_ids must be a non-empty JSON"),
    "token_ids of 1 MB": Case(EMBED, "", {"token_ids": "[" + "1," * 500_000 + "1]"},
                              message="token_ids is 1000003 characters; the limit is"),
    "token id beyond the vocabulary": Case(EMBED, "", {"token_ids": f"[{2**62}]"},
                                           message="outside this model's vocabulary"),
    "token_ids and a text": Case(EMBED, "hello", {"token_ids": "[5]"}, message="either a text or token_ids"),
    # malformed wire data (raw gRPC, bypassing tritonclient's encoder)
    "truncated gRPC message": Case(EMBED, ("raw", GOOD[: len(GOOD) // 2]), status="INTERNAL",
                                   message="Unable to parse request"),
    "BYTES length prefix overruns": Case(EMBED, ("raw", infer_request(EMBED, struct.pack("<I", 1000) + b"hello")),
                                         message="expecting string of length 1000 but only 5 bytes available"),
    "BYTES length prefix cut": Case(EMBED, ("raw", infer_request(EMBED, b"\x05\x00")),
                                    message="expecting 4 bytes but only 2 bytes available"),
    "no input tensor": Case(EMBED, ("raw", infer_request(EMBED, None)), message="missing required input(s) ['TEXT']"),
}


@pytest.fixture(scope="module")
def server_pid(reliability_server, reliability_repo):
    from bertforge.served_model import ServedModelDir

    assert ServedModelDir.in_repo(reliability_repo, FILL).settings().max_batch_size == MAX_BATCH
    return reliability_server.pid


def send(url: str, case: Case) -> tuple[str, str, Any]:
    """(status name, message, result) for one case; status is 'OK' when the server answered."""
    import grpc
    import tritonclient.grpc as grpcclient

    if isinstance(case.payload, tuple) and case.payload[0] == "raw":
        with grpc.insecure_channel(url) as channel:
            method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
            try:
                return OK, "", method(case.payload[1], timeout=30)
            except grpc.RpcError as error:
                return error.code().name, error.details(), None
    if isinstance(case.payload, tuple):
        _, name, datatype, array = case.payload
    else:
        name, datatype, array = contract.TEXT_INPUT, "BYTES", text_tensor(case.payload)
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with grpcclient.InferenceServerClient(url) as client:
        try:
            return OK, "", client.infer(case.model, [tensor], parameters=case.parameters, client_timeout=30)
        except grpcclient.InferenceServerException as error:
            return str(error.status()).removeprefix("StatusCode."), error.message(), None


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_hostile_input_gets_its_expected_answer(name, reliability_server, server_pid, references):
    case = CATALOGUE[name]
    status, message, result = send(reliability_server.endpoints.grpc_url, case)
    assert status == case.status and case.message in message, \
        f"{name}: got {status} {message!r}, expected {case.status} containing {case.message!r}"
    if case.status == OK:
        reference = references[case.model]
        if case.model == FILL:
            assert_fill_mask_matches(parse_fill_mask(result), reference.fill_mask(case.expected_text), case.top_k, name)
        else:
            assert_embedding_matches(result.as_numpy(contract.EMBEDDING_OUTPUT)[0], reference.embed(case.expected_text), name)
    assert reliability_server.process.poll() is None, f"tritonserver died on {name!r}"


def test_catalogue_is_complete():
    assert len(CATALOGUE) >= 15
    assert sum(case.status == OK for case in CATALOGUE.values()) >= 4  # text that must work is in the table too


def test_server_answers_correctly_after_the_catalogue(reliability_server, server_pid, references):
    from serve.client import BertforgeClient

    assert reliability_server.pid == server_pid and reliability_server.process.poll() is None
    text = "the committee [MASK] the trade deal on [MASK]."
    with BertforgeClient(reliability_server.endpoints.grpc_url, timeout_s=30) as client:
        assert client.health() == {"live": True, "ready": True, "models": {FILL: True, EMBED: True}}
        (masks,) = client.fill_mask(text, top_k=5)
        (embedding,) = client.embed("the minister announced a housing plan.")
    assert_fill_mask_matches(masks, references[FILL].fill_mask(text), 5, text)
    assert_embedding_matches(embedding, references[EMBED].embed("the minister announced a housing plan."), "embed")
