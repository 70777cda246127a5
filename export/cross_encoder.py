"""Export a `*ForSequenceClassification` folder: `rerank` (one label, a cross-encoder) or `classify` (several).

    task = sequence_classification_task(folder)        # "rerank" | "classify" | None (not such a folder)
    report = export_sequence_classifier(config)        # the served model <repo>/<rerank|classify>, gated

The graph is Optimum's "text-classification" export (input ids -> `logits`, [batch, num_labels]), fused like the
encoder graphs. The gate runs query/document pairs cut from the gate texts through PyTorch fp32
(AutoModelForSequenceClassification, pairs tokenized as the server does: only the document is truncated) and the
variant: fp32 must match the logits near exactly; int8 is judged on what a reranker is used for, the ranking
(Spearman per query, top-1 agreement) and, for classify, the label. `auto` serves int8 only when it passed and is
faster, else fp32.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.tasks import CLASSIFY, DEFAULT_TASKS, RERANK
from export.config import AUTO, ExportConfig, ParityGates
from export.errors import ExportError, ParityError
from export.layer_norm import choose_layer_norm_form
from export.progress import ExportProgress
from export.report import Choice, ExportReport, TargetReport, VariantReport
from export.task_models import model_max_length, task_settings, write_task_model

SEQUENCE_CLASSIFICATION = "ForSequenceClassification"  # the architectures suffix that marks the head
QUERIES, DOCUMENTS_PER_QUERY = 8, 16  # gate pairs: 8 queries x 16 documents from the gate texts
QUERY_WORDS, DOCUMENT_WORDS = 8, 80


def sequence_classification_task(folder: str | Path) -> str | None:
    """"rerank" for a one-label `*ForSequenceClassification` folder, "classify" for several, else None."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    if not any(str(name).endswith(SEQUENCE_CLASSIFICATION) for name in config.get("architectures") or []):
        return None
    return RERANK if len(_labels(config)) == 1 else CLASSIFY


def export_sequence_classifier(config: ExportConfig, progress: ExportProgress) -> ExportReport:
    """Export, gate and write the rerank/classify model of `config.model` into `config.repo`; returns the report."""
    from transformers import AutoTokenizer

    from export.model_folder import inspect_model_folder
    from export.writer import prepare_destination

    started = time.perf_counter()
    info = inspect_model_folder(config.model)
    task = sequence_classification_task(config.model)
    precision = _check_request(config, task)
    prepare_destination(config.repo)
    labels = _labels(info.config)
    progress.outcome(f"{info.folder} has a sequence-classification head with {len(labels)} label(s): exporting "
                     f"task {task} (model {task})")
    tokenizer = AutoTokenizer.from_pretrained(info.folder)
    max_length = model_max_length(info, tokenizer, config)
    settings = _settings(config, task, "fp32", max_length, labels)  # fails before the export if they do not fit
    report = ExportReport(model=str(config.model), destination=str(config.repo), task=task, labels=list(labels),
                          max_length=max_length, tasks={task: TargetReport(task=task)})
    with tempfile.TemporaryDirectory(prefix="bertforge-export-") as scratch:
        scratch = Path(scratch)
        # 1. Optimum's text-classification graph, fused
        progress.step(f"optimum export of {info.folder} (text-classification, opset {config.opset})")
        fused = _fused_graph(info, scratch, config)
        # 2. gate pairs and the PyTorch fp32 reference
        queries, documents = gate_pairs(config)
        features = [pair_features(tokenizer, query, documents, max_length) for query in queries]
        # 3. the residual LayerNorm in the form that is faster on this CPU (every precision here runs on CPU)
        fused, report.target.layer_norm = choose_layer_norm_form(fused, features[0])
        reference = _torch_logits(info.folder, features)
        report.gate_inputs = {"queries": len(queries), "documents_per_query": len(documents)}
        # 4. each candidate precision: build, run, gate
        candidates = ["fp32", "int8"] if precision == AUTO else [precision]
        paths = {}
        for candidate in candidates:
            if candidate == "int8":  # the recipe search, as for embeddings: judged on the ranking / the label
                path, report.target.variants[candidate] = _search_int8(fused, scratch, features, reference, task,
                                                                       config, progress)
                if path is not None:
                    paths[candidate] = path
                continue
            path = scratch / candidate / "model.onnx"
            from export.variants import build_variant

            details = build_variant(fused, candidate, path)
            metrics = compare_logits(_onnx_logits(path, features), reference, task)
            failures = gate_failures(metrics, candidate, task, config.gates)
            report.target.variants[candidate] = VariantReport.gated(details, metrics, failures)
            progress.outcome(f"{task} {candidate}: {'PASS' if not failures else 'FAIL'} {summary(metrics, task)}")
            if not failures:
                paths[candidate] = path
        chosen, reason = _choose(paths, precision, features)
        report.target.chosen = Choice(requested=precision, precision=chosen, reason=reason)
        report.passed = chosen is not None
        report.seconds = round(time.perf_counter() - started, 1)
        if chosen is None:
            raise ParityError(report.failures, report)
        progress.outcome(f"{task}: serving {chosen} ({reason})")
        # 5. write <repo>/<model> whole (a running server never sees half a model), then this model's report
        settings = _settings(config, task, chosen, max_length, labels)
        write_task_model(Path(config.repo), settings, paths[chosen], info.folder, report)
    progress.outcome(f"wrote {Path(config.repo) / settings.model_name} in {report.seconds} s")
    return report


def gate_pairs(config: ExportConfig) -> tuple[list[str], list[str]]:
    """Queries (the first words of some gate texts) and documents (windows of others)."""
    from export.texts import parity_texts

    texts = [text for text in parity_texts(config) if len(text.split()) >= 4]
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


def gate_failures(metrics: dict, precision: str, task: str, gates: ParityGates) -> list[str]:
    name = f"{task} {precision}"
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


def summary(metrics: dict, task: str) -> str:
    ranking = (f"Spearman mean {metrics['mean_spearman']:.4f} min {metrics['min_spearman']:.4f}, "
               if task == RERANK else f"label agreement {metrics['label_agreement']:.4f}, ")
    return (f"{ranking}top-1 {metrics['top1_agreement']:.3f}, max |d logit| {metrics['max_abs_diff']:.2e} "
            f"on {metrics['pairs']} pairs")


def _check_request(config: ExportConfig, task: str) -> str:
    """The precision to export; refuses what this exporter does not do for a classification head."""
    if config.output is not None:
        raise ExportError(f"{config.model} is a {task} model: export it into a repository (--repo DIR); --output "
                          "writes fill_mask/embed variants only")
    asked = set(config.tasks)
    if asked != set(DEFAULT_TASKS) and asked != {task}:  # the default tasks mean "what the folder has"
        raise ExportError(f"{config.model} has a sequence-classification head with "
                          f"{'one label' if task == RERANK else 'several labels'}: it exports task {task!r} only, "
                          f"not {sorted(asked)}; pass --tasks {task}")
    precision = config.requested_precision.single
    if precision not in (AUTO, "fp32", "int8"):
        raise ExportError(f"precision {precision!r} is not available for {task}; use auto, fp32 or int8")
    return precision


def _labels(config: dict) -> tuple[str, ...]:
    id2label = config.get("id2label") or {}
    if id2label:
        return tuple(str(id2label[key]) for key in sorted(id2label, key=int))
    return tuple(f"LABEL_{index}" for index in range(int(config.get("num_labels", 2))))


def _settings(config: ExportConfig, task: str, precision: str, max_length: int, labels: tuple[str, ...]):
    return task_settings(config, task=task, precision=precision, max_length=max_length, labels=labels)


def _fused_graph(info, scratch: Path, config: ExportConfig) -> Path:
    import warnings

    from optimum.exporters.onnx import main_export

    from export.variants import fuse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(info.folder), str(scratch / "optimum"), task="text-classification", opset=config.opset,
                    device="cpu", do_validation=False)
    return fuse(scratch / "optimum" / "model.onnx", scratch / "model.fused.onnx", num_heads=info.num_heads,
                hidden_size=info.hidden_size, optimize=config.optimize)


def _torch_logits(folder: Path, features: list[dict]) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()
    with torch.inference_mode():
        return [model(**{name: torch.from_numpy(value) for name, value in feeds.items()}).logits.float().numpy()
                for feeds in features]


def _search_int8(fused: Path, scratch: Path, features: list[dict], reference: list[np.ndarray], task: str,
                 config: ExportConfig, progress: ExportProgress) -> tuple[Path | None, VariantReport]:
    """int8 through export.int8_search (per-channel, SmoothQuant, static, then the most sensitive nodes kept
    fp32), each recipe gated on the ranking (rerank) or the label (classify) of the gate pairs."""
    from export.int8_search import search_int8
    from export.variants import describe

    def evaluate(path: Path) -> tuple[dict, list[str], float]:
        metrics = compare_logits(_onnx_logits(path, features), reference, task)
        agreement = metrics["mean_spearman"] if task == RERANK else metrics["label_agreement"]
        return metrics, gate_failures(metrics, "int8", task, config.gates), 1.0 - agreement

    result = search_int8(fused, scratch / "int8-search", evaluate, features, features[0], seconds=config.search_seconds,
                         candidates=config.search_candidates, progress=progress, label=f"{task} int8",
                         portable=config.int8_portable)
    if result.path is None:
        failures = [f"{task} int8: no recipe passed the gate ({len(result.candidates)} tried in {result.seconds:.0f} s); "
                    f"closest: {result.closest_failures()}"]
        progress.outcome(failures[0])
        return None, VariantReport.gated({"precision": "int8"}, (result.closest() or {}).get("parity", {}), failures,
                                         search=result.summary())
    winner = next(c for c in result.candidates if c.get("name") == result.recipe.name and c.get("passed"))
    progress.outcome(f"{task} int8: PASS with recipe {result.recipe.name}: {summary(winner['parity'], task)}")
    return result.path, VariantReport.gated(describe(result.path, "int8"), winner["parity"], [],
                                            recipe=result.recipe.summary(), search=result.summary())


def _onnx_logits(path: Path, features: list[dict]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {node.name for node in session.get_inputs()}
    return [session.run([contract.ONNX_LOGITS], {k: v for k, v in feeds.items() if k in names})[0] for feeds in features]


def _choose(paths: dict[str, Path], precision: str, features: list[dict]) -> tuple[str | None, str]:
    if precision != AUTO:
        return (precision, "requested") if precision in paths else (None, f"{precision} missed the gate")
    if "int8" not in paths:
        return ("fp32", "int8 missed the gate") if "fp32" in paths else (None, "fp32 missed the gate")
    from export.int8_search import paired_latency

    times = paired_latency(paths, features[0])
    if times["int8"] < times["fp32"]:
        return "int8", f"int8 passed the gate and runs {times['int8']:.2f} ms vs fp32 {times['fp32']:.2f} ms"
    return "fp32", f"int8 passed but is not faster ({times['int8']:.2f} ms vs fp32 {times['fp32']:.2f} ms)"


def _spearman(first: np.ndarray, second: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(values)).astype(np.float64) for values in (first, second)]
    if ranks[0].std() == 0 or ranks[1].std() == 0:
        return 1.0
    return float(np.corrcoef(*ranks)[0, 1])
