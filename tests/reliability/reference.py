"""An independent in-process ONNX Runtime reference for served answers (one text per run, no batching code of ours)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.served_model import ServedModelDir


class OrtReference:
    """Runs `<repo>/<model>/1/model.onnx` on one text at a time with the exported tokenizer.

    Loads the files into memory at construction, so it keeps answering for the model that was on disk then
    (the repository-write test relies on that)."""

    def __init__(self, repo: Path, model: str):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = ServedModelDir.in_repo(repo, model)
        settings = json.loads(folder.serving_file.read_text())["settings"]
        self.max_length = settings["max_length"]
        self.tokenizer = Tokenizer.from_str((folder.tokenizer_dir / "tokenizer.json").read_text())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.mask_id = self.tokenizer.token_to_id(contract.MASK_TOKEN)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(folder.onnx_file.read_bytes(), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = {node.name for node in self.session.get_inputs()}
        self.fingerprint = os.stat(folder.onnx_file).st_size

    def feeds(self, text: str) -> dict[str, np.ndarray]:
        encoding = self.tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)  # (1, T)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "token_type_ids": np.array([encoding.type_ids], dtype=np.int64)}
        return {name: value for name, value in feeds.items() if name in self.input_names}

    def embed(self, text: str) -> np.ndarray:
        (embedding,) = self.session.run([contract.ONNX_SENTENCE_EMBEDDING], self.feeds(text))
        return embedding[0]  # (hidden,)

    def fill_mask(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(top_ids, top_probs), each (num_masks, max_top_k), for the masks within the first max_length tokens."""
        feeds = self.feeds(text)
        feeds[contract.ONNX_MASK_POSITIONS] = np.flatnonzero(feeds["input_ids"][0] == self.mask_id).astype(np.int64)
        top_ids, top_probs = self.session.run([contract.ONNX_TOP_IDS, contract.ONNX_TOP_PROBS], feeds)
        return top_ids, top_probs


def assert_fill_mask_matches(served, reference: tuple[np.ndarray, np.ndarray], top_k: int, context: str) -> None:
    """Served [mask][rank] predictions equal the reference's top-k (ids may swap only within a tie)."""
    top_ids, top_probs = reference
    assert len(served) == len(top_ids), f"{context}: {len(served)} mask rows, expected {len(top_ids)}"
    for predictions, ids, probs in zip(served, top_ids, top_probs):
        assert len(predictions) == top_k, f"{context}: {len(predictions)} predictions, expected {top_k}"
        scores = np.array([prediction.score for prediction in predictions])
        np.testing.assert_allclose(scores, probs[:top_k], atol=1e-5, err_msg=context)
        probability_of = dict(zip(ids.tolist(), probs.tolist()))
        for prediction in predictions:
            assert prediction.token_id in probability_of, f"{context}: id {prediction.token_id} not in the reference top-k"
            assert abs(probability_of[prediction.token_id] - prediction.score) <= 1e-5, context


def assert_embedding_matches(served: np.ndarray, expected: np.ndarray, context: str) -> None:
    assert served.shape == expected.shape and served.dtype == np.float32, context
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-4, err_msg=context)
