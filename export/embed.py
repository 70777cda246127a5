"""`embed`: the encoder with the model's own pooling (a sentence-transformers folder's Pooling, Dense and Normalize;
mean over real tokens for a plain folder; --pooling/--normalize override it, warned), gated against the author's
library, `SentenceTransformer.encode`, on whole texts tokenized as the server does and on random ids (cosine, max |d|).
--output adds `last_hidden_state` (`feature-extraction/`, what optimum's ORTModelForFeatureExtraction loads)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from bertforge.tasks import EMBED
from export.task_exporter import SERVED, ParityGatedExporter


class EmbedExporter(ParityGatedExporter):
    plain_folder = "feature-extraction"

    def gate_inputs(self) -> dict:
        from export.author_reference import reference_name

        return {"embed_batches": len(self.batches), "embed_reference": reference_name(self.context.definition)}

    def fp32_graph(self, kind: str, folder: Path) -> Path:
        import onnx

        from export.graphs import add_pooling, encoder_only

        plan = self.context.plan
        encoder = self.context.encoder
        graph = add_pooling(encoder, plan.pooling, plan.normalize, plan.dense) if kind == SERVED else encoder_only(encoder)
        path = folder / "model.fp32.onnx"
        onnx.save(graph, str(path))
        if kind == SERVED and not plan.agrees_with_author:  # flags contradict the folder: how far from the author
            from export.author_reference import author_agreement

            self.author_agreement = author_agreement(path, self.batches, self.context.definition, self.context.max_length)
        return path

    def fused_graph(self, kind: str, fp32_path: Path, folder: Path) -> Path:
        """Dense layers and Normalize are appended after fusing: ORT's symbolic shape inference cannot follow them."""
        plan = self.context.plan
        if kind != SERVED or not plan.dense:
            return self.context.fuse(fp32_path, folder)
        import onnx

        from export.graphs import add_pooling, append_projection

        pooled = folder / "model.pooled.onnx"
        onnx.save(add_pooling(self.context.encoder, plan.pooling), str(pooled))
        fused = self.context.fuse(pooled, folder)
        onnx.save(append_projection(onnx.load(str(fused)), plan.dense, plan.normalize), str(fused))
        return fused

    def definition_extras(self) -> dict:
        agreement = getattr(self, "author_agreement", None)
        return {"author_agreement": agreement} if agreement else {}

    @cached_property
    def batches(self) -> list:
        return self.context.text_batches()

    @cached_property
    def author_references(self) -> list:
        """The author's computation: sentence-transformers on the same texts / ids (flags that contradict the folder
        replace its Pooling/Normalize with sentence-transformers' own, as asked)."""
        from export.author_reference import author_outputs
        from export.model_definition import reference_model

        definition = self.context.definition
        return author_outputs(reference_model(definition, self.context.plan, self.context.max_length), self.batches,
                              definition)

    @cached_property
    def plain_references(self) -> list:
        """PyTorch fp32 mean pooling of the last hidden state (what the plain graph is reduced to)."""
        from export.parity import reference_outputs

        return reference_outputs(self.context.torch_model, self.batches, EMBED, "mean", False, self.context.top_k)

    def references(self, kind: str) -> list:
        return self.author_references if kind == SERVED else self.plain_references

    @classmethod
    def summary(cls, metrics: dict, precision: str) -> str:
        from export.parity import judged_figures

        source, figures = judged_figures(metrics, precision)
        return (f"cosine min {figures['min_cosine']:.6f} / mean {figures['mean_cosine']:.6f} on {figures['texts']} "
                f"texts of {source}, max |d| {figures['max_abs_diff']:.2e}")
