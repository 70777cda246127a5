"""BERT folders with planted outlier dimensions: the failure mode of per-tensor int8 on real checkpoints.

Trained BERTs carry a few channels whose activations are 10-100x the rest; per-tensor int8 of an activation
that holds them leaves the other channels a handful of levels. No hub here, so tests and benchmarks plant
them, with transforms that leave the fp32 model's outputs exactly as they were (so the gate's reference
is unchanged and any loss is the quantizer's):
- attention: a few value channels are scaled by `factor` and the output projection's matching input
  columns by 1/factor: the input of every attention output MatMul carries outliers;
- FFN: a few extra neurons whose GELU output is the constant `factor` and whose output weights are zero:
  the input of every second FFN MatMul carries them (as the GELU outliers of trained BERTs do).
(Scaling LayerNorm weights instead, as trained BERTs show them, changes the next LayerNorm's statistics
in post-LN BERT: the model then lives in the outlier channels and int8 of it stays accurate.)

    plant_outlier_dimensions("runs/demo/model", "/tmp/outliers", channels=(3, 17), factor=60)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def plant_outlier_dimensions(model_dir: str | Path, target: str | Path, channels: Sequence[int] = (3, 17),
                             factor: float = 60.0) -> Path:
    """Copy the HF BERT folder `model_dir` to `target` with outlier channels planted; returns `target`."""
    import torch
    from transformers import AutoConfig, BertForMaskedLM, BertModel

    model_dir, target = Path(model_dir), Path(target)
    config = AutoConfig.from_pretrained(model_dir)
    has_head = any("MaskedLM" in name for name in (config.architectures or []))
    model = (BertForMaskedLM if has_head else BertModel).from_pretrained(model_dir).eval()
    bert = getattr(model, "bert", model)
    index = torch.tensor([channel % config.hidden_size for channel in channels])
    with torch.no_grad():
        for layer in bert.encoder.layer:
            # attention: value channels x factor, the output projection's columns / factor (same product)
            layer.attention.self.value.weight[index] *= factor
            layer.attention.self.value.bias[index] *= factor
            layer.attention.output.dense.weight[:, index] /= factor
            # FFN: extra neurons with GELU(factor) = factor for every token, zero output weights
            layer.intermediate.dense = _grown(layer.intermediate.dense, len(index), rows=True, bias_value=factor)
            layer.output.dense = _grown(layer.output.dense, len(index), rows=False)
    model.config.intermediate_size += len(index)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, target / name)
    return target


def _grown(linear, extra: int, rows: bool, bias_value: float = 0.0):
    """`linear` with `extra` zero output rows (rows=True, bias `bias_value`) or zero input columns."""
    import torch

    out_features, in_features = linear.out_features + (extra if rows else 0), linear.in_features + (0 if rows else extra)
    grown = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        grown.weight.zero_()
        grown.weight[: linear.out_features, : linear.in_features] = linear.weight
        grown.bias.fill_(bias_value)
        grown.bias[: linear.out_features] = linear.bias
    return grown
