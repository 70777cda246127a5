"""`bertforge export` into the repository of a running server: the folder is at every moment the complete old
or the complete new model, the running server keeps answering with the old model (model control is off),
and a restarted server answers with the new one."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bertforge.tasks import EMBED, FILL_MASK
from tests.conftest import build_tiny_bert, make_sentences
from tests.reliability.conftest import MAX_TOP_K
from tests.reliability.reference import OrtReference, assert_embedding_matches, assert_fill_mask_matches

pytestmark = pytest.mark.slow  # two exports and two tritonserver starts

MODELS = (FILL_MASK, EMBED)
FILL_TEXT = "the committee [MASK] the new budget [MASK] monday."


def test_export_into_a_running_repository_never_exposes_a_partial_model(repo_copy, tmp_path, tiny_tokenizer_dir,
                                                                         references):
    from export import export_to_repository
    from serve.launcher import running_server

    new_model = build_tiny_bert(tmp_path / "new_bert", tiny_tokenizer_dir, seed=1)
    old = {model: snapshot(repo_copy / model) for model in MODELS}
    texts = make_sentences(6, seed=21)
    with running_server(repo_copy, grpc_port=0, http_port=0, metrics_port=0) as server:
        watcher = RepositoryWatcher(repo_copy)
        sender = AnswerCollector(server.endpoints.grpc_url, texts)
        watcher.start(), sender.start()
        try:
            export_to_repository(new_model, repo_copy, precision="fp32", max_top_k=MAX_TOP_K, progress=False)
            time.sleep(1.0)  # keep asking the running server after the swap
        finally:
            watcher.stop(), sender.stop()
        new = {model: snapshot(repo_copy / model) for model in MODELS}

        # On disk: every observation was the complete old or the complete new model, never missing or mixed
        for model in MODELS:
            assert new[model] != old[model], f"{model}: the export did not change the files"
            seen = watcher.states[model]
            assert not watcher.missing[model], f"{model}: folder missing {watcher.missing[model]} times during the write"
            assert seen <= {old[model], new[model]}, f"{model}: {len(seen - {old[model], new[model]})} partial states seen"
            assert old[model] in seen and new[model] in seen, f"{model}: the watcher did not see the swap"
        # The running server kept answering, always with the old model
        assert not sender.errors, sender.errors[:3]
        assert len(sender.answers) >= 10, "too few answers during the export"
        for masks, embeddings in sender.answers:
            assert_fill_mask_matches(masks, references[FILL_MASK].fill_mask(FILL_TEXT), 5, "during export")
            for text, embedding in zip(texts, embeddings):
                assert_embedding_matches(embedding, references[EMBED].embed(text), text)

    # A restarted server serves the new model
    new_embed = OrtReference(repo_copy, EMBED)
    new_fill = OrtReference(repo_copy, FILL_MASK)
    with running_server(repo_copy, grpc_port=0, http_port=0, metrics_port=0) as server:
        masks, embeddings = AnswerCollector(server.endpoints.grpc_url, texts).ask_once()
    assert_fill_mask_matches(masks, new_fill.fill_mask(FILL_TEXT), 5, "after restart")
    for text, embedding in zip(texts, embeddings):
        assert_embedding_matches(embedding, new_embed.embed(text), text)
        assert not np.allclose(embedding, references[EMBED].embed(text), atol=1e-3), "still the old model"


def snapshot(model_dir: Path, dir_fd: int | None = None) -> frozenset[tuple[str, str]]:
    """{(relative path, sha1)} of every file under `model_dir` (or under an already opened folder), except the
    `__pycache__` the python backend writes next to model.py when it loads it."""
    own = dir_fd is None
    fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY) if own else dir_fd
    try:
        files = set()
        for folder, subfolders, names, folder_fd in os.fwalk(".", dir_fd=fd):
            subfolders[:] = [name for name in subfolders if name != "__pycache__"]  # the python backend's own cache
            for name in names:
                file_fd = os.open(name, os.O_RDONLY, dir_fd=folder_fd)
                with os.fdopen(file_fd, "rb") as handle:
                    files.add((os.path.normpath(os.path.join(folder, name)), hashlib.sha1(handle.read()).hexdigest()))
        return frozenset(files)
    finally:
        if own:
            os.close(fd)


class BackgroundLoop:
    """A daemon thread running `self._run` until `stop()`."""

    join_timeout_s = 30

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.join_timeout_s)


class RepositoryWatcher(BackgroundLoop):
    """Polls each model folder: what is at its path right now (a snapshot taken while the path kept pointing
    at the same folder), or that it is missing."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.states: dict[str, set] = {model: set() for model in MODELS}
        self.missing = dict.fromkeys(MODELS, 0)
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            for model in MODELS:
                path = self.repo / model
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                except FileNotFoundError:
                    self.missing[model] += 1
                    continue
                try:
                    state = snapshot(path, fd)
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:  # else a swap happened meanwhile: look again
                        self.states[model].add(state)
                except FileNotFoundError:  # the swapped-out old folder is being deleted under us
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:
                        self.missing[model] += 1  # ...but it was still the live folder: a file vanished from it
                finally:
                    os.close(fd)
            time.sleep(0.002)


class AnswerCollector(BackgroundLoop):
    """Asks fill_mask and embed in a loop from a thread; keeps every answer and every error."""

    join_timeout_s = 60

    def __init__(self, url: str, texts: list[str]):
        self.url, self.texts = url, texts
        self.answers: list = []
        self.errors: list = []
        super().__init__()

    def ask_once(self):
        from serve.client import BertforgeClient

        with BertforgeClient(self.url, timeout_s=30, retries=0) as client:
            return client.fill_mask(FILL_TEXT, top_k=5)[0], client.embed(self.texts)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(self.ask_once())
            except Exception as error:  # noqa: BLE001 - the test asserts there are none
                self.errors.append(repr(error))
