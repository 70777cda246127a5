"""`serve.health`: the probe text from the task registry (the model's own mask token), one probe per task."""

from __future__ import annotations

import json

import pytest

from bertforge.served_model import ServedModelDir, ServingSettings
from bertforge.tasks import CLASSIFY, EMBED, EMBED_SPARSE, FILL_MASK, RERANK, TASKS
from serve.health import probe, probe_text, probed_models


class RecordingClient:
    """Records which client call a probe makes (BertforgeClient's method names)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, method):
        return lambda *args, **kwargs: self.calls.append((method, args, kwargs)) or method


def test_every_task_has_a_probe_through_each_of_its_inputs():
    for name, task in TASKS.items():
        client = RecordingClient()
        probe(client, name, name, "health check")
        item = ("health check", "health check") if task.pair else "health check"
        assert client.calls == [("infer", (name, [item]), {})], name
    with pytest.raises(ValueError, match="unknown task 'other'"):
        probe(RecordingClient(), "other", "other", "x")


def test_probes_ask_the_named_model():
    client = RecordingClient()
    probe(client, "rerank-b", RERANK, "t")
    probe(client, "sparse", EMBED_SPARSE, "t")
    probe(client, "mask", FILL_MASK, "t [MASK]")
    assert client.calls == [("infer", ("rerank-b", [("t", "t")]), {}), ("infer", ("sparse", ["t"]), {}),
                            ("infer", ("mask", ["t [MASK]"]), {})]


def test_probe_text_comes_from_the_registry_with_the_models_mask_token(tmp_path):
    tokenizer = ServedModelDir.in_repo(tmp_path, "roberta_mask").tokenizer_dir
    tokenizer.mkdir(parents=True)
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({"mask_token": "<mask>"}))
    assert probe_text(tmp_path, "roberta_mask", FILL_MASK) == "health <mask> check"
    assert probe_text(tmp_path, "absent", EMBED) == TASKS[EMBED].health_text  # no {mask}: the tokenizer is not read
    assert probe_text(tmp_path, "absent", CLASSIFY) == "health check"


def test_probed_models_are_the_exported_ones_with_their_task(tmp_path):
    ServedModelDir.in_repo(tmp_path, EMBED).write(ServingSettings(task=EMBED))
    ServedModelDir.in_repo(tmp_path, "rerank-b").write(ServingSettings(task=RERANK, name="rerank-b"))
    skeleton = ServedModelDir.in_repo(tmp_path, FILL_MASK)
    skeleton.path.mkdir()
    skeleton.config_file.write_text("")  # a committed skeleton: no serving.json
    assert probed_models(tmp_path) == {EMBED: EMBED, "rerank-b": RERANK}
