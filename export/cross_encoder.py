"""`rerank` (a one-label `*ForSequenceClassification` folder, a cross-encoder) and `classify` (several labels).

The graph is Optimum's "text-classification" export (input ids -> `logits`, [batch, num_labels]). The gate runs
query/document pairs cut from the gate texts through PyTorch fp32 (AutoModelForSequenceClassification, pairs tokenized
as the server does: only the document is truncated) and the variant: fp32 must match the logits near exactly; lossy
variants are judged on what a reranker is used for, the ranking (Spearman per query, top-1 agreement) and, for
classify, the label (gates.int8_rerank_*, gates.int8_label_agreement).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.tasks import RERANK
from export.config import ParityGates
from export.task_exporter import TaskExporter

QUERIES, DOCUMENTS_PER_QUERY = 8, 16  # gate pairs: 8 queries x 16 documents from the gate texts
QUERY_WORDS, DOCUMENT_WORDS = 8, 80


class CrossEncoderExporter(TaskExporter):
    def serving_fields(self) -> dict:
        return {"family": self.context.info.family.model_type, "labels": self.context.info.labels}

    def gate_inputs(self) -> dict:
        return {"queries": QUERIES, "documents_per_query": DOCUMENTS_PER_QUERY}

    def fp32_graph(self, kind: str, folder: Path) -> Path:
        import warnings

        from optimum.exporters.onnx import main_export

        self.context.progress.step(f"optimum export of {self.context.info.folder} (text-classification, opset "
                                   f"{self.context.config.opset})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(str(self.context.info.folder), str(folder / "optimum"), task="text-classification",
                        opset=self.context.config.opset, device="cpu", do_validation=False)
        return folder / "optimum" / "model.onnx"

    @cached_property
    def features(self) -> list[dict[str, np.ndarray]]:
        """Per query, the query with each document as the server tokenizes them."""
        queries, documents = gate_pairs(self.context.texts)
        return [pair_features(self.context.tokenizer, query, documents, self.context.max_length) for query in queries]

    def calibration_feeds(self, kind: str) -> list[dict]:
        return self.features

    def timing_feeds(self, kind: str) -> dict:
        return self.features[0]

    @cached_property
    def references(self) -> list[np.ndarray]:
        """AutoModelForSequenceClassification's logits in PyTorch fp32, per query (documents, num_labels)."""
        import torch
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(self.context.info.folder, use_safetensors=True).eval()
        with torch.inference_mode():
            return [model(**{name: torch.from_numpy(value) for name, value in feeds.items()}).logits.float().numpy()
                    for feeds in self.features]

    def compare(self, session, kind: str) -> dict:
        names = {node.name for node in session.get_inputs()}
        logits = [session.run([contract.ONNX_LOGITS], {k: v for k, v in feeds.items() if k in names})[0]
                  for feeds in self.features]
        return compare_logits(logits, self.references, self.task)

    def failures(self, metrics: dict, name: str, precision: str, gates: ParityGates) -> list[str]:
        return gate_failures(metrics, precision, self.task, gates, name=name)

    def error(self, metrics: dict) -> float:
        return 1.0 - (metrics["mean_spearman"] if metrics["min_spearman"] is not None else metrics["label_agreement"])

    @classmethod
    def summary(cls, metrics: dict, precision: str) -> str:
        ranking = (f"Spearman mean {metrics['mean_spearman']:.4f} min {metrics['min_spearman']:.4f}, "
                   if metrics.get("min_spearman") is not None else f"label agreement {metrics['label_agreement']:.4f}, ")
        return (f"{ranking}top-1 {metrics['top1_agreement']:.3f}, max |d logit| {metrics['max_abs_diff']:.2e} "
                f"on {metrics['pairs']} pairs")


def gate_pairs(texts: list[str]) -> tuple[list[str], list[str]]:
    """Queries (the first words of some gate texts) and documents (windows of others)."""
    texts = [text for text in texts if len(text.split()) >= 4]
    if len(texts) < QUERIES + DOCUMENTS_PER_QUERY:
        texts = (texts * (QUERIES + DOCUMENTS_PER_QUERY))[: QUERIES + DOCUMENTS_PER_QUERY]
    queries = [" ".join(text.split()[:QUERY_WORDS]) for text in texts[:QUERIES]]
    documents = [" ".join(text.split()[:DOCUMENT_WORDS]) for text in texts[QUERIES: QUERIES + DOCUMENTS_PER_QUERY]]
    # each query's own text as a document too, so there is a clearly relevant document to rank first
    documents[: len(queries)] = [" ".join(text.split()[:DOCUMENT_WORDS]) for text in texts[:len(queries)]]
    return queries, documents


def pair_features(tokenizer, query: str, documents: list[str], max_length: int) -> dict[str, np.ndarray]:
    """One query with each document as the server tokenizes them: the document is cut, never the query."""
    encoded = tokenizer([query] * len(documents), documents, truncation="only_second", max_length=max_length,
                        padding=True, return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in contract.ONNX_ENCODER_INPUTS if name in encoded}


def compare_logits(logits: list[np.ndarray], reference: list[np.ndarray], task: str) -> dict:
    """Per query (rows: documents): max |d logit|, Spearman of the ranking, same best document, same label."""
    spearman = [_spearman(got[:, 0], want[:, 0]) for got, want in zip(logits, reference)] if task == RERANK else []
    top1 = [int(np.argmax(got[:, 0]) == np.argmax(want[:, 0])) for got, want in zip(logits, reference)]
    labels = [float(np.mean(got.argmax(1) == want.argmax(1))) for got, want in zip(logits, reference)]
    return {"pairs": int(sum(len(want) for want in reference)),
            "max_abs_diff": float(max(np.abs(got - want).max() for got, want in zip(logits, reference))),
            "min_spearman": float(min(spearman)) if spearman else None,
            "mean_spearman": float(np.mean(spearman)) if spearman else None,
            "top1_agreement": float(np.mean(top1)), "label_agreement": float(np.mean(labels))}


def gate_failures(metrics: dict, precision: str, task: str, gates: ParityGates, name: str | None = None) -> list[str]:
    """fp32: the logits near exactly; lossy variants: the ranking (rerank) or the label (classify)."""
    name = f"{name or task} {precision}"
    if precision == "fp32":
        if metrics["max_abs_diff"] > gates.fp32_max_abs_diff:
            return [f"{name}: max |d logit| {metrics['max_abs_diff']:.2e} > {gates.fp32_max_abs_diff:.0e} vs "
                    "PyTorch fp32"]
        return []
    failures = []
    if task == RERANK:
        spearman, lowest = gates.int8_rerank_spearman, gates.int8_rerank_spearman - 0.05
        if metrics["mean_spearman"] < spearman or metrics["min_spearman"] < lowest:
            failures.append(f"{name}: Spearman mean {metrics['mean_spearman']:.4f} / min {metrics['min_spearman']:.4f} "
                            f"below {spearman} / {lowest:.2f}")
        if metrics["top1_agreement"] < gates.int8_rerank_top1:
            failures.append(f"{name}: top-1 agreement {metrics['top1_agreement']:.3f} < {gates.int8_rerank_top1}")
    elif metrics["label_agreement"] < gates.int8_label_agreement:
        failures.append(f"{name}: label agreement {metrics['label_agreement']:.3f} < {gates.int8_label_agreement}")
    return failures


def _spearman(first: np.ndarray, second: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(values)).astype(np.float64) for values in (first, second)]
    if ranks[0].std() == 0 or ranks[1].std() == 0:
        return 1.0
    return float(np.corrcoef(*ranks)[0, 1])
