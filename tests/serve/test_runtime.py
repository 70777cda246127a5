"""`serve.runtime` and `serve.backend` without Triton: parsing, token budget, per-request errors in a batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge import contract
from bertforge.served_model import ServedModelDir
from bertforge.tasks import EMBED, FILL_MASK
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
    return load_runtime(ServedModelDir.in_repo(served_repo, FILL_MASK).version_dir)


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


# --- embed's request options (prompt_name, dimensions, normalize, truncation_direction, token_ids) ---------------
ST_TEXTS = ["the minister spoke to parliament.", "a short one", "the committee approved the budget on tuesday."]


@pytest.fixture(scope="module")
def embed_runtime(served_repo):
    return load_runtime(ServedModelDir.in_repo(served_repo, EMBED).version_dir)


def embed(runtime, texts, **parameters) -> np.ndarray:
    """Vectors for `texts` through parse, tokenize and embed (as the backend runs them), or the first error."""
    requests = [runtime.parse(text.encode() if isinstance(text, str) else b"", dict(parameters)) for text in texts]
    errors = [error for error in runtime.tokenize(requests) if error is not None]
    if errors:
        raise errors[0]
    vectors = runtime.finish_embeddings(requests, runtime.embed(requests))
    for vector in vectors:
        if isinstance(vector, RequestError):
            raise vector
    return np.stack(vectors)


def cosine_rows(first, second) -> np.ndarray:
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return (first * second).sum(1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))


def test_prompt_name_and_dimensions_equal_sentence_transformers_encode(embed_runtime, sentence_transformer):
    plain = embed(embed_runtime, ST_TEXTS)
    assert cosine_rows(plain, sentence_transformer.encode(ST_TEXTS)).min() >= 0.999
    query = embed(embed_runtime, ST_TEXTS, prompt_name="query")
    expected = sentence_transformer.encode(ST_TEXTS, prompt_name="query")
    assert cosine_rows(query, expected).min() >= 0.999
    assert cosine_rows(query, plain).max() < 0.999  # the prompt changed the vectors: the comparison can fail
    short = embed(embed_runtime, ST_TEXTS, prompt_name="passage", dimensions=8)
    expected = sentence_transformer.encode(ST_TEXTS, prompt_name="passage", truncate_dim=8)
    assert short.shape == expected.shape == (3, 8) and cosine_rows(short, expected).min() >= 0.999
    # this model does not normalise: the first 8 values as they are, unless normalize is asked for
    np.testing.assert_allclose(short, embed(embed_runtime, ST_TEXTS, prompt_name="passage")[:, :8], atol=1e-6)
    unit = embed(embed_runtime, ST_TEXTS, dimensions=8, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert cosine_rows(unit, plain[:, :8]).min() >= 0.99999


def test_a_normalising_model_is_renormalised_after_dimensions(embed_runtime, monkeypatch):
    plain = embed(embed_runtime, ST_TEXTS)
    monkeypatch.setattr(embed_runtime.settings, "normalize", True)  # as if the graph normalised
    short = embed(embed_runtime, ST_TEXTS, dimensions=4)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    assert cosine_rows(short, plain[:, :4]).min() >= 0.99999
    raw = embed(embed_runtime, ST_TEXTS, dimensions=4, normalize=False)  # as truncate_dim: the prefix as it is
    np.testing.assert_allclose(raw, plain[:, :4], atol=1e-6)


def test_the_default_prompt_applies_unless_a_request_names_none(served_repo, tmp_path, sentence_transformer):
    from bertforge.served_model import ServedModelDir

    copy = ServedModelDir.in_repo(served_repo, "embed").copy_to(tmp_path, default_prompt_name="query")
    runtime = load_runtime(copy.version_dir)
    by_default = embed(runtime, ST_TEXTS)
    assert cosine_rows(by_default, sentence_transformer.encode(ST_TEXTS, prompt_name="query")).min() >= 0.999
    assert cosine_rows(embed(runtime, ST_TEXTS, prompt_name=""), sentence_transformer.encode(ST_TEXTS)).min() >= 0.999


def test_token_ids_are_the_texts_tokens_with_special_tokens_added(embed_runtime):
    tokenizer = embed_runtime.tokenizer
    ids = [tokenizer.encode(text, add_special_tokens=False).ids for text in ST_TEXTS]
    requests = [embed_runtime.parse(b"", {"token_ids": json.dumps(item)}) for item in ids]
    embed_runtime.tokenize(requests)
    assert [request.ids for request in requests] == [tokenizer.encode(text).ids for text in ST_TEXTS]
    from_ids = embed_runtime.embed(requests)
    np.testing.assert_allclose(from_ids, embed(embed_runtime, ST_TEXTS), atol=1e-5)
    prompted = embed_runtime.parse(b"", {"token_ids": json.dumps(ids[0]), "prompt_name": "query"})
    embed_runtime.tokenize([prompted])
    assert prompted.ids == tokenizer.encode("query: " + ST_TEXTS[0]).ids  # WordPiece: prompt tokens + text tokens


def test_truncation_direction_keeps_the_chosen_end(embed_runtime):
    from tokenizers import Tokenizer

    from tests.conftest import make_sentences

    max_length = embed_runtime.settings.max_length
    text = " ".join(make_sentences(20, seed=5))  # words of the vocabulary: distinct tokens, not [UNK]s
    right, left = (embed_runtime.parse(text.encode(), {"truncation_direction": direction})
                   for direction in ("right", "Left"))
    assert embed_runtime.tokenize([right, left]) == [None, None]
    untruncated = Tokenizer.from_str(embed_runtime.tokenizer.to_str())
    untruncated.no_truncation()
    full = untruncated.encode(text, add_special_tokens=False).ids
    assert len(full) > 2 * max_length and len(set(full)) > 20
    assert len(right.ids) == len(left.ids) == max_length and right.ids != left.ids
    assert right.ids[1:-1] == full[: max_length - 2] and left.ids[1:-1] == full[-(max_length - 2):]
    assert left.ids[0] == right.ids[0] and left.ids[-1] == right.ids[-1]  # [CLS] ... [SEP] either way
    ids = embed_runtime.parse(b"", {"token_ids": json.dumps(full), "truncation_direction": "left"})
    embed_runtime.tokenize([ids])
    assert ids.ids == left.ids
    refused = embed_runtime.parse(text.encode(), {"truncation": "error"})
    assert "longer than the model's maximum" in str(embed_runtime.tokenize([refused])[0])


BAD_EMBED_PARAMETERS = [
    ({"prompt_name": "qeury"}, "prompt_name 'qeury' is not one of this model's prompts ('passage', 'query')"),
    ({"dimensions": 0}, "dimensions must be an integer in 1..32"),
    ({"dimensions": 33}, "dimensions must be an integer in 1..32"),
    ({"dimensions": True}, "dimensions must be an integer"),
    ({"normalize": "yes"}, "normalize must be true or false"),
    ({"truncation_direction": "middle"}, "truncation_direction must be one of ['right', 'left']"),
    ({"token_ids": "[1, 2"}, "token_ids must be a non-empty JSON list of integers"),
    ({"token_ids": "[]"}, "token_ids must be a non-empty JSON list of integers"),
    ({"token_ids": "[1, 99999]"}, "token id 99999 is outside this model's vocabulary"),
    ({"top_k": 3}, "unknown parameter(s) ['top_k'] for embed"),
]


@pytest.mark.parametrize("parameters, message", BAD_EMBED_PARAMETERS, ids=[str(row[0]) for row in BAD_EMBED_PARAMETERS])
def test_bad_embed_parameters_are_refused_with_what_to_send(embed_runtime, parameters, message):
    with pytest.raises(RequestError) as raised:
        embed_runtime.parse(b"hello", parameters)
    assert message in str(raised.value)
    with pytest.raises(RequestError, match="either a text or token_ids"):
        embed_runtime.parse(b"hello", {"token_ids": "[5]"})


def test_token_ids_get_the_special_tokens_of_a_roberta_style_tokenizer():
    """Byte-level BPE with <s> ... </s> (RoBERTa, XLM-R, ModernBERT style): the special tokens are read off the
    tokenizer, not assumed to be BERT's [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    from bertforge.served_model import ServingSettings
    from serve.text import TextEncoder, TextRequest
    from tests.conftest import make_sentences

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer.train_from_iterator(make_sentences(200, seed=4), trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    text = "The minister approved the report on monday after a long debate. " * 3
    token_ids = tokenizer.encode(text, add_special_tokens=False).ids  # before truncation is enabled: all of them
    assert len(token_ids) > 16
    tokenizer.enable_truncation(max_length=16)
    encoder = TextEncoder(tokenizer, ServingSettings(task="embed", max_length=16))
    assert (encoder.prefix, encoder.suffix) == ([0], [2])
    requests = [TextRequest(text=text, top_k=1, truncation="truncate", truncation_direction=direction,
                            token_ids=None if kind == "text" else token_ids)
                for kind in ("text", "ids") for direction in ("right", "left")]
    assert encoder.encode_requests(requests) == [True] * 4
    assert requests[0].ids == requests[2].ids and requests[1].ids == requests[3].ids != requests[0].ids
    assert [len(request.ids) for request in requests] == [16] * 4 and requests[1].ids[0] == 0
