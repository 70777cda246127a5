"""TEMPORARY (until export.export_to_repository lands): a contract-conforming repository from a tiny BERT."""

from __future__ import annotations

import shutil
from pathlib import Path

from bertforge import contract
from serve.repository import ServingSettings, write_triton_model


def build_test_repository(model_dir: Path, repo: Path, max_top_k: int = 20, precision: str = "fp32", **overrides) -> Path:
    import torch
    from transformers import BertForMaskedLM

    mlm = BertForMaskedLM.from_pretrained(model_dir).eval()
    max_length = mlm.config.max_position_embeddings

    class FillMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlm = mlm

        def forward(self, input_ids, attention_mask, token_type_ids, mask_positions):
            logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
            picked = logits.reshape(-1, logits.shape[-1]).index_select(0, mask_positions)  # (M, V)
            top_probs, top_ids = torch.softmax(picked, dim=-1).topk(max_top_k, dim=-1)
            return top_ids, top_probs

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlm = mlm

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    example = torch.tensor([[2, 10, 4, 3], [2, 11, 12, 3]])
    encoder_args = (example, torch.ones_like(example), torch.zeros_like(example))
    batch_axes = {0: "batch", 1: "sequence"}
    for task, module, args, inputs, outputs in [
        ("fill_mask", FillMask(), (*encoder_args, torch.tensor([2, 5])),
         [*contract.ONNX_ENCODER_INPUTS, contract.ONNX_MASK_POSITIONS], [contract.ONNX_TOP_IDS, contract.ONNX_TOP_PROBS]),
        ("embed", Embed(), encoder_args, list(contract.ONNX_ENCODER_INPUTS), [contract.ONNX_SENTENCE_EMBEDDING]),
    ]:
        settings = ServingSettings(task=task, max_length=max_length, max_top_k=max_top_k, precision=precision, **overrides)
        target = repo / settings.model_name
        write_triton_model(target, settings)
        axes = {name: batch_axes for name in contract.ONNX_ENCODER_INPUTS}
        axes.update({contract.ONNX_MASK_POSITIONS: {0: "masks"}, contract.ONNX_TOP_IDS: {0: "masks"},
                     contract.ONNX_TOP_PROBS: {0: "masks"}, contract.ONNX_SENTENCE_EMBEDDING: {0: "batch"}})
        with torch.no_grad():
            torch.onnx.export(module, args, str(target / "1" / "model.onnx"), input_names=inputs, output_names=outputs,
                              dynamic_axes={name: axes[name] for name in inputs + outputs}, opset_version=17, dynamo=False)
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            onnx_path = target / "1" / "model.onnx"
            quantize_dynamic(onnx_path, onnx_path, weight_type=QuantType.QInt8)
        shutil.copytree(model_dir, target / "1" / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return repo
