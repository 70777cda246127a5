"""Export `embed_sparse` from an MLM folder: SPLADE weights, max over positions of log(1 + ReLU(MLM logits)).

    report = export_sparse(config, progress)     # <repo>/embed_sparse, gated against PyTorch fp32

The graph is the encoder with the MLM head over every position (export.graphs.add_logits_head), then
log(1 + ReLU(logits)) zeroed at padding and reduced by max over positions -> `sparse_embedding` (B, vocab).
The gate compares it with the same formula on BertForMaskedLM's logits over the gate texts: fp32 must match
near exactly, and per text the top-32 vocabulary ids must overlap and the values' cosine must hold. Served in fp32
(no int8 search for this task yet: `auto` means fp32 here).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.tasks import EMBED_SPARSE
from export.config import AUTO, ExportConfig
from export.errors import ExportError, ParityError
from export.progress import ExportProgress
from export.report import Choice, ExportReport, TargetReport, VariantReport
from export.task_models import model_max_length, task_settings, write_task_model

TOP_K = 32
MIN_TOP_OVERLAP = 0.95  # mean over texts of |top-32 ids in both| / 32
MIN_COSINE = 0.99  # lowest per-text cosine of the full vectors
BATCH = 16


def export_sparse(config: ExportConfig, progress: ExportProgress) -> ExportReport:
    """Export, gate and write `<repo>/embed_sparse` from the MLM folder `config.model`; returns the report."""
    from transformers import AutoTokenizer

    from export.model_folder import inspect_model_folder
    from export.writer import prepare_destination

    started = time.perf_counter()
    info = inspect_model_folder(config.model)
    if not info.has_mlm_head:
        raise ExportError(f"embed_sparse needs the MLM head (cls.predictions.*); {info.folder} has none: export a "
                          "BertForMaskedLM folder (bertforge's own runs are)")
    if config.output is not None or config.requested_precision.single not in (AUTO, "fp32"):
        raise ExportError("embed_sparse is exported into a repository (--repo) in fp32 (precision auto or fp32)")
    prepare_destination(config.repo)
    tokenizer = AutoTokenizer.from_pretrained(info.folder)
    max_length = model_max_length(info, tokenizer, config)
    settings = task_settings(config, task=EMBED_SPARSE, precision="fp32", max_length=max_length)
    report = ExportReport(model=str(config.model), destination=str(config.repo), task=EMBED_SPARSE,
                          max_length=max_length, tasks={EMBED_SPARSE: TargetReport(task=EMBED_SPARSE)})
    with tempfile.TemporaryDirectory(prefix="bertforge-export-") as scratch:
        scratch = Path(scratch)
        progress.step(f"embed_sparse: optimum export of {info.folder}")
        path, details, torch_model = _build(info, scratch, config)
        features = _features(tokenizer, config, max_length)
        metrics = compare_sparse(_onnx_weights(path, features), torch_sparse(torch_model, features))
        failures = gate_failures(metrics, config.gates.fp32_max_abs_diff)
        report.target.variants["fp32"] = VariantReport.gated(details, metrics, failures)
        report.target.chosen = Choice(requested=config.precision, precision="fp32",
                                      reason="embed_sparse is served in fp32 (no int8 search for it yet)")
        report.passed, report.seconds = not failures, round(time.perf_counter() - started, 1)
        progress.outcome(f"embed_sparse fp32: {'PASS' if not failures else 'FAIL'} top-{TOP_K} overlap mean "
                         f"{metrics['mean_top_overlap']:.4f}, cosine min {metrics['min_cosine']:.6f}, max |d| "
                         f"{metrics['max_abs_diff']:.2e} on {metrics['texts']} texts")
        if failures:
            raise ParityError(failures, report)
        write_task_model(Path(config.repo), settings, path, info.folder, report)
    progress.outcome(f"wrote {Path(config.repo) / settings.model_name} in {report.seconds} s")
    return report


def add_sparse_head(logits_model):
    """MLM logits (B, T, V) -> max_t log(1 + ReLU(logits)) * mask -> `sparse_embedding` (B, V)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = logits_model.graph
    (logits,) = [output.name for output in graph.output]
    graph.initializer.extend([numpy_helper.from_array(np.array(1.0, dtype=np.float32), "sparse/one"),
                              numpy_helper.from_array(np.array([-1], dtype=np.int64), "sparse/last_axis"),
                              numpy_helper.from_array(np.array([1], dtype=np.int64), "sparse/seq_axis")])
    graph.node.extend([
        helper.make_node("Relu", [logits], ["sparse/relu"], name="sparse/Relu"),
        helper.make_node("Add", ["sparse/relu", "sparse/one"], ["sparse/plus_one"], name="sparse/Add"),
        helper.make_node("Log", ["sparse/plus_one"], ["sparse/log"], name="sparse/Log"),
        helper.make_node("Cast", ["attention_mask"], ["sparse/mask"], to=TensorProto.FLOAT, name="sparse/Cast"),
        helper.make_node("Unsqueeze", ["sparse/mask", "sparse/last_axis"], ["sparse/mask3"], name="sparse/Unsqueeze"),
        helper.make_node("Mul", ["sparse/log", "sparse/mask3"], ["sparse/masked"], name="sparse/Mul"),  # (B, T, V)
        helper.make_node("ReduceMax", ["sparse/masked", "sparse/seq_axis"], [contract.ONNX_SPARSE_EMBEDDING],
                         keepdims=0, name="sparse/ReduceMax"),  # (B, V); padding gives 0, the floor anyway
    ])
    vocab = graph.output[0].type.tensor_type.shape.dim[2].dim_value
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(contract.ONNX_SPARSE_EMBEDDING, TensorProto.FLOAT,
                                                      ["batch_size", vocab]))
    onnx.checker.check_model(logits_model)
    return logits_model


def torch_sparse(mlm_model, features: list[dict]) -> list[np.ndarray]:
    """The PyTorch reference: the same formula on BertForMaskedLM's logits."""
    import torch

    answers = []
    with torch.inference_mode():
        for feeds in features:
            tensors = {name: torch.from_numpy(value) for name, value in feeds.items()}
            logits = mlm_model(**tensors).logits.float()  # (B, T, V)
            weights = torch.log1p(torch.relu(logits)) * tensors["attention_mask"].unsqueeze(-1)
            answers.append(weights.max(dim=1).values.numpy())
    return answers


def compare_sparse(got: list[np.ndarray], want: list[np.ndarray]) -> dict:
    got, want = np.concatenate(got).astype(np.float64), np.concatenate(want).astype(np.float64)
    overlaps = [len(set(np.argsort(-a)[:TOP_K]) & set(np.argsort(-b)[:TOP_K])) / TOP_K for a, b in zip(got, want)]
    cosines = (got * want).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)
    return {"texts": len(want), "mean_top_overlap": float(np.mean(overlaps)), "min_top_overlap": float(min(overlaps)),
            "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()),
            "max_abs_diff": float(np.abs(got - want).max()), "mean_non_zeros": float((want > 0).sum(1).mean())}


def gate_failures(metrics: dict, fp32_max_abs_diff: float) -> list[str]:
    failures = []
    if metrics["mean_top_overlap"] < MIN_TOP_OVERLAP:
        failures.append(f"embed_sparse fp32: top-{TOP_K} overlap {metrics['mean_top_overlap']:.4f} < {MIN_TOP_OVERLAP}")
    if metrics["min_cosine"] < MIN_COSINE:
        failures.append(f"embed_sparse fp32: cosine {metrics['min_cosine']:.5f} < {MIN_COSINE}")
    if metrics["max_abs_diff"] > fp32_max_abs_diff * 10:  # log1p of logits of size ~10: a relative 1e-4 allowance
        failures.append(f"embed_sparse fp32: max |d| {metrics['max_abs_diff']:.2e} > {fp32_max_abs_diff * 10:.0e}")
    return failures


def _build(info, scratch: Path, config: ExportConfig):
    import onnx
    from transformers import BertForMaskedLM

    from export.families import mlm_head
    from export.graphs import add_logits_head
    from export.targets import optimum_encoder
    from export.variants import build_variant, fuse

    torch_model = BertForMaskedLM.from_pretrained(info.folder, use_safetensors=True).eval()
    encoder = onnx.load(str(optimum_encoder(info.folder, scratch / "optimum", config.opset)))
    graph = add_sparse_head(add_logits_head(encoder, mlm_head(torch_model)[0]))
    onnx.save(graph, str(scratch / "model.fp32.onnx"))
    fused = fuse(scratch / "model.fp32.onnx", scratch / "model.fused.onnx", num_heads=info.num_heads,
                 hidden_size=info.hidden_size, optimize=config.optimize)
    path = scratch / "fp32" / "model.onnx"
    return path, build_variant(fused, "fp32", path), torch_model


def _features(tokenizer, config: ExportConfig, max_length: int) -> list[dict]:
    from export.texts import parity_texts

    texts = parity_texts(config)[:64]
    batches = []
    for start in range(0, len(texts), BATCH):
        encoded = tokenizer(texts[start:start + BATCH], truncation=True, max_length=max_length, padding=True,
                            return_tensors="np")
        batches.append({name: encoded[name].astype(np.int64) for name in contract.ONNX_ENCODER_INPUTS if name in encoded})
    return batches


def _onnx_weights(path: Path, features: list[dict]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {node.name for node in session.get_inputs()}
    return [session.run([contract.ONNX_SPARSE_EMBEDDING], {k: v for k, v in feeds.items() if k in names})[0]
            for feeds in features]
