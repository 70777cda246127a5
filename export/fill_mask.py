"""`fill_mask`: the encoder with the family's MLM head at the [MASK] positions only, softmax and top-k
(export.graphs.add_fill_mask_head), gated against the same head in PyTorch on masked windows of text and random ids
(export.parity: top-1, tie-aware agreement, top-5 containment, total variation). --output adds the logits over
every position (`masked-lm/`, what optimum's ORTModelForMaskedLM loads)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from bertforge.tasks import FILL_MASK
from export.task_exporter import SERVED, ParityGatedExporter


class FillMaskExporter(ParityGatedExporter):
    plain_folder = "masked-lm"

    def check(self) -> None:
        self.context.require_mlm_head(FILL_MASK)

    def gate_inputs(self) -> dict:
        return {"fill_mask_batches": len(self.batches)}

    def fp32_graph(self, kind: str, folder: Path) -> Path:
        import onnx

        from export.graphs import add_fill_mask_head, add_logits_head

        head, _ = self.head
        encoder = self.context.encoder
        graph = add_fill_mask_head(encoder, head, self.context.top_k) if kind == SERVED else add_logits_head(encoder, head)
        path = folder / "model.fp32.onnx"
        onnx.save(graph, str(path))
        return path

    def timing_feeds(self, kind: str) -> dict:
        return self.context.timing_feeds(masks=kind == SERVED)

    @cached_property
    def head(self) -> tuple:
        """(the head's weights for the graph, the family's own head module for the reference)."""
        from export.families import mlm_head

        return mlm_head(self.context.torch_model)

    @cached_property
    def batches(self) -> list:
        return self.context.parity_inputs.fill_mask

    def references(self, kind: str) -> list:
        return self.torch_references

    @cached_property
    def torch_references(self) -> list:
        """PyTorch fp32: the encoder, then the family's own MLM head on the masked rows (both graph kinds)."""
        from export.parity import reference_outputs

        return reference_outputs(self.context.torch_model, self.batches, FILL_MASK, "mean", False, self.context.top_k,
                                 head=self.head[1])

    @classmethod
    def summary(cls, metrics: dict, precision: str) -> str:
        from export.parity import judged_figures

        source, figures = judged_figures(metrics, precision)
        if precision == "fp32":
            return (f"top-1 agreement {figures['top1_agreement']:.4f} on {figures['masked_tokens']} masks, "
                    f"max |dp| {figures['max_abs_diff']:.2e}")
        return (f"tie-aware agreement {figures['tie_aware_agreement']:.4f}, top-5 {figures['top5_containment']:.4f}, "
                f"mean TV {figures.get('mean_total_variation', float('nan')):.4f} on {figures['masked_tokens']} masks "
                f"of {source}")
