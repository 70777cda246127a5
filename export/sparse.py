"""`embed_sparse`: SPLADE vectors, a weight per vocabulary entry, as the author's SparseEncoder defines them.

The graph is the encoder with the MLM head over every position (export.graphs.add_logits_head), then what
SpladePooling computes (export.sparse_definition: the folder's pooling strategy and activation; bertforge's default
for a plain masked-LM folder is max over positions of log(1 + ReLU(logits))): logits x attention mask -> ReLU ->
log(1 + x) [-> log(1 + x) again for log1p_relu] -> max or sum over positions -> `sparse_embedding` (B, vocab). The
gate compares it with `SparseEncoder.encode` (the author's library) on whole texts tokenized as the server does and
with the encoder's forward on random ids: fp32 must match near exactly; lossy variants keep the per-text top-32
vocabulary ids (mean overlap) and the vectors' cosine. The server returns the non-zero entries.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.tasks import EMBED_SPARSE
from export.config import ParityGates
from export.errors import ExportError
from export.task_exporter import TaskExporter

TOP_K = 32
MIN_TOP_OVERLAP = 0.95  # fp32: mean over texts of |top-32 ids in both| / 32
MIN_COSINE = 0.99  # fp32: lowest per-text cosine of the full vectors
FP32_ABS_FACTOR = 10  # fp32: max |d| within 10x gates.fp32_max_abs_diff (log1p of logits of size ~10)


class SparseExporter(TaskExporter):
    def check(self) -> None:
        self.context.require_mlm_head(EMBED_SPARSE)

    def serving_fields(self) -> dict:
        definition = self.context.definition
        fields = {"family": self.context.info.family.model_type, "embedding_dim": self.vocabulary}
        if hasattr(definition, "pooling_strategy"):  # a SparseEncoder folder: its prompts, as encode applies them
            fields.update(prompts=dict(definition.prompts), default_prompt_name=definition.default_prompt_name)
        return fields

    def info(self) -> dict:
        definition = self.sparse_definition
        return {"definition": {"pooling_strategy": definition.pooling_strategy, "activation": definition.activation,
                               "vocabulary": self.vocabulary, "sources": definition.sources,
                               "sentence_transformers": definition.sentence_transformers}}

    def gate_inputs(self) -> dict:
        reference = ("SparseEncoder(folder).encode (sentence-transformers)" if self.sparse_definition.sentence_transformers
                     else "transformers masked-LM + sentence-transformers SpladePooling (max, relu)")
        return {"sparse_batches": len(self.batches), "sparse_reference": reference}

    @cached_property
    def sparse_definition(self):
        """The SparseEncoder folder's definition, or bertforge's default for a masked-LM folder."""
        from export.sparse_definition import SparseDefinition, read_sparse_definition

        definition = self.context.definition
        return definition if isinstance(definition, SparseDefinition) else read_sparse_definition(self.context.info.folder)

    @property
    def vocabulary(self) -> int:
        """The vocabulary the vectors index: the MLM decoder's outputs (SpladePooling's dimension, where recorded)."""
        return int(self.context.info.config["vocab_size"])

    def fp32_graph(self, kind: str, folder: Path) -> Path:
        import onnx

        from export.families import mlm_head
        from export.graphs import add_logits_head

        head, _ = mlm_head(self.context.torch_model)
        vocabulary = head["decoder_weight"].shape[1]
        authored = self.sparse_definition.vocabulary
        if authored is not None and authored != vocabulary:
            raise ExportError(f"{self.context.info.root}: SpladePooling says {authored} dimensions but the MLM head "
                              f"emits {vocabulary}; re-save the SparseEncoder folder")
        definition = self.sparse_definition
        graph = add_sparse_head(add_logits_head(self.context.encoder, head), definition.pooling_strategy,
                                definition.activation)
        path = folder / "model.fp32.onnx"
        onnx.save(graph, str(path))
        return path

    @cached_property
    def batches(self) -> list:
        return self.context.text_batches()

    @cached_property
    def references(self) -> list[np.ndarray]:
        """The author's library: SparseEncoder.encode on each text batch, its forward on the random ids."""
        import torch

        from export.sparse_definition import sparse_reference

        model = sparse_reference(self.sparse_definition, self.context.max_length)
        prompt = self.sparse_definition.default_prompt or None
        names = set(model.tokenizer.model_input_names)
        answers = []
        with torch.inference_mode():
            for batch in self.batches:
                if batch.texts is not None:
                    vectors = model.encode(batch.texts, prompt=prompt, batch_size=len(batch.texts),
                                           convert_to_sparse_tensor=False, show_progress_bar=False)
                else:
                    features = {name: torch.from_numpy(value) for name, value in batch.feeds.items() if name in names}
                    vectors = model(features)["sentence_embedding"]
                answers.append(vectors.float().cpu().numpy())  # (B, vocab)
        return answers

    def compare(self, session, kind: str) -> dict:
        names = {node.name for node in session.get_inputs()}
        got, sources = [], []
        for batch in self.batches:
            feeds = {name: value for name, value in batch.feeds.items() if name in names}
            got.append(session.run([contract.ONNX_SPARSE_EMBEDDING], feeds)[0])
            sources.append(batch.source)
        by_source = {source: compare_sparse([g for g, s in zip(got, sources) if s == source],
                                            [w for w, s in zip(self.references, sources) if s == source])
                     for source in dict.fromkeys(sources)}
        return {**compare_sparse(got, self.references), "by_source": by_source}

    def failures(self, metrics: dict, name: str, precision: str, gates: ParityGates) -> list[str]:
        from export.parity import judged_figures, verdict

        source, figures = judged_figures(metrics, precision)
        if precision == "fp32":
            checks = [("mean_top_overlap", figures["mean_top_overlap"], MIN_TOP_OVERLAP, True),
                      ("min_cosine", figures["min_cosine"], MIN_COSINE, True),
                      ("max_abs_diff", figures["max_abs_diff"], gates.fp32_max_abs_diff * FP32_ABS_FACTOR, False)]
        else:
            family = "int8" if precision.startswith("int8") else "fp16"
            checks = [("mean_top_overlap", figures["mean_top_overlap"], getattr(gates, f"{family}_sparse_top_overlap"), True),
                      ("min_cosine", figures["min_cosine"], getattr(gates, f"{family}_cosine"), True),
                      ("mean_cosine", figures["mean_cosine"], getattr(gates, f"{family}_mean_cosine"), True)]
        return verdict(checks, f"{name} {precision}", f"{figures['texts']} texts of {source} inputs")

    def error(self, metrics: dict) -> float:
        from export.parity import judged_figures

        _, figures = judged_figures(metrics, "int8")
        return float(1.0 - figures["mean_cosine"])

    @classmethod
    def summary(cls, metrics: dict, precision: str) -> str:
        from export.parity import judged_figures

        source, figures = judged_figures(metrics, precision)
        return (f"top-{TOP_K} overlap mean {figures['mean_top_overlap']:.4f}, cosine min {figures['min_cosine']:.6f}, "
                f"max |d| {figures['max_abs_diff']:.2e} on {figures['texts']} texts of {source}")


def add_sparse_head(logits_model, pooling_strategy: str = "max", activation: str = "relu"):
    """MLM logits (B, T, V) -> SpladePooling -> `sparse_embedding` (B, V): logits x mask, ReLU, log(1 + x) (twice for
    log1p_relu), then max or sum over positions; padding gives 0, the floor anyway."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.sparse_definition import ACTIVATIONS, POOLING_STRATEGIES

    if pooling_strategy not in POOLING_STRATEGIES or activation not in ACTIVATIONS:
        raise ExportError(f"SpladePooling {pooling_strategy}/{activation} is not served; pooling strategies are "
                          f"{POOLING_STRATEGIES}, activations {ACTIVATIONS}")
    graph = logits_model.graph
    (logits,) = [output.name for output in graph.output]
    graph.initializer.extend([numpy_helper.from_array(np.array(1.0, dtype=np.float32), "sparse/one"),
                              numpy_helper.from_array(np.array([-1], dtype=np.int64), "sparse/last_axis"),
                              numpy_helper.from_array(np.array([1], dtype=np.int64), "sparse/seq_axis")])
    graph.node.extend([
        helper.make_node("Cast", ["attention_mask"], ["sparse/mask"], to=TensorProto.FLOAT, name="sparse/Cast"),
        helper.make_node("Unsqueeze", ["sparse/mask", "sparse/last_axis"], ["sparse/mask3"], name="sparse/Unsqueeze"),
        helper.make_node("Mul", [logits, "sparse/mask3"], ["sparse/masked"], name="sparse/Mul"),  # (B, T, V)
        helper.make_node("Relu", ["sparse/masked"], ["sparse/relu"], name="sparse/Relu"),
    ])
    result = "sparse/relu"
    for step in range(2 if activation == "log1p_relu" else 1):  # log(1 + x), as torch.log1p
        graph.node.extend([
            helper.make_node("Add", [result, "sparse/one"], [f"sparse/plus_one{step}"], name=f"sparse/Add{step}"),
            helper.make_node("Log", [f"sparse/plus_one{step}"], [f"sparse/log{step}"], name=f"sparse/Log{step}"),
        ])
        result = f"sparse/log{step}"
    reduce = "ReduceMax" if pooling_strategy == "max" else "ReduceSum"
    graph.node.append(helper.make_node(reduce, [result, "sparse/seq_axis"], [contract.ONNX_SPARSE_EMBEDDING],
                                       keepdims=0, name=f"sparse/{reduce}"))  # (B, V)
    vocab = graph.output[0].type.tensor_type.shape.dim[2].dim_value
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(contract.ONNX_SPARSE_EMBEDDING, TensorProto.FLOAT,
                                                      ["batch_size", vocab]))
    onnx.checker.check_model(logits_model)
    return logits_model


def compare_sparse(got: list[np.ndarray], want: list[np.ndarray]) -> dict:
    """Per text: top-32 ids in both / 32, cosine; over all: max |d| and the reference's non-zeros per text."""
    got, want = np.concatenate(got).astype(np.float64), np.concatenate(want).astype(np.float64)
    overlaps = [len(set(np.argsort(-a)[:TOP_K]) & set(np.argsort(-b)[:TOP_K])) / TOP_K for a, b in zip(got, want)]
    cosines = (got * want).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)
    return {"texts": len(want), "mean_top_overlap": float(np.mean(overlaps)), "min_top_overlap": float(min(overlaps)),
            "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()),
            "max_abs_diff": float(np.abs(got - want).max()), "mean_non_zeros": float((want > 0).sum(1).mean())}
