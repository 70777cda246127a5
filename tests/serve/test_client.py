"""`serve.client` without a server: only UNAVAILABLE is retried, other errors surface at once with their index."""

from __future__ import annotations

import asyncio

import pytest
from tritonclient.utils import InferenceServerException

from serve.client import AsyncBertforgeClient, BertforgeClient, ServingError
from serve.launcher import free_port


def unavailable():
    return InferenceServerException("connection refused", status="StatusCode.UNAVAILABLE")


def invalid():
    return InferenceServerException("text is empty", status="StatusCode.INVALID_ARGUMENT")


def test_sync_client_retries_unavailable_then_succeeds(monkeypatch):
    client = BertforgeClient(f"127.0.0.1:{free_port()}", retries=3, backoff_s=0.001)
    rounds = []

    def send_round(model, texts, pending, parameters, results):
        rounds.append(list(pending))
        if len(rounds) < 3:
            return {index: unavailable() for index in pending}
        for index in pending:
            results[index] = f"answer {index}"
        return {}

    monkeypatch.setattr(client, "_send_round", send_round)
    assert client._infer_all("embed", ["a", "b"], [{}, {}]) == ["answer 0", "answer 1"]
    assert rounds == [[0, 1], [0, 1], [0, 1]]


def test_sync_client_does_not_retry_other_errors(monkeypatch):
    client = BertforgeClient(f"127.0.0.1:{free_port()}", retries=3, backoff_s=0.001)
    rounds = []
    monkeypatch.setattr(client, "_send_round", lambda *args: rounds.append(1) or {1: invalid()})
    with pytest.raises(ServingError, match="text 1: text is empty") as caught:
        client._infer_all("embed", ["a", ""], [{}, {}])
    assert rounds == [1] and "INVALID_ARGUMENT" in caught.value.status


def test_sync_client_gives_up_on_an_absent_server():
    with BertforgeClient(f"127.0.0.1:{free_port()}", timeout_s=2, retries=1, backoff_s=0.01) as client:
        with pytest.raises(ServingError, match="unavailable after 1 retries") as caught:
            client.embed("hello")
        assert caught.value.status == "UNAVAILABLE"
        assert client.health()["ready"] is False


def test_async_client_retries_only_unavailable(monkeypatch):
    async def scenario():
        client = AsyncBertforgeClient(f"127.0.0.1:{free_port()}", retries=2, backoff_s=0.001)
        calls = []

        async def infer(model, inputs, **kwargs):
            calls.append(model)
            if len(calls) == 1:
                raise unavailable()
            raise invalid()

        monkeypatch.setattr(client._client, "infer", infer)
        with pytest.raises(ServingError, match="text 0: text is empty"):
            await client.embed("")
        await client.close()
        return calls

    assert asyncio.run(scenario()) == ["embed", "embed"]  # one retry for UNAVAILABLE, none for INVALID_ARGUMENT
