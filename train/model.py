"""The model: a standard `transformers.BertForMaskedLM`, trained through a sparse-head wrapper.

The wrapper runs the encoder on every position but the MLM head (transform + vocabulary
projection) only on the masked positions, which is where the loss is: with 15% masking
that is ~7x less head work. The saved checkpoint is still a plain BertForMaskedLM.
"""

from __future__ import annotations

import torch
from torch import nn

from train.config import ModelConfig
from train.data import IGNORE_INDEX
from train.init import apply_locality_prior


def build_model(config: ModelConfig, vocab_size: int, pad_token_id: int):
    """A freshly initialised BertForMaskedLM with SDPA attention (and the locality prior if asked)."""
    from transformers import BertConfig, BertForMaskedLM

    bert_config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        pad_token_id=pad_token_id,
        attn_implementation="sdpa",
    )
    model = BertForMaskedLM(bert_config)
    if config.init == "local":
        apply_locality_prior(model)
    return model


class MaskedLMObjective(nn.Module):
    """forward(input_ids, labels) -> (summed loss, masked count, correct count) over masked positions."""

    def __init__(self, mlm, sparse_head: bool = True, compile_encoder: bool = False):
        super().__init__()
        self.mlm = mlm
        self.sparse_head = sparse_head
        encoder = torch.compile(mlm.bert) if compile_encoder else mlm.bert
        object.__setattr__(self, "_encoder", encoder)  # not a submodule: state_dict keys stay BertForMaskedLM's

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        # Encoder on every position; packed blocks have no padding, so no attention mask
        hidden = self._encoder(input_ids=input_ids, return_dict=False)[0]  # (B, T, H)
        # Head on masked positions only (or everywhere, as the dense reference)
        if self.sparse_head:
            selected = labels != IGNORE_INDEX  # (B, T)
            logits = self.mlm.cls(hidden[selected])  # (M, V)
            targets = labels[selected]  # (M,)
        else:
            logits = self.mlm.cls(hidden).flatten(0, 1)  # (B*T, V)
            targets = labels.flatten()
        loss_sum = nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
        valid = targets != IGNORE_INDEX
        correct = ((logits.argmax(-1) == targets) & valid).sum()
        return loss_sum, valid.sum(), correct


def flops_per_token(model, seq_len: int, mask_prob: float, sparse_head: bool) -> float:
    """Training FLOPs per token (forward + backward = 3x forward, 2 FLOPs per multiply-add)."""
    config = model.config
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    encoder_params = layers * (4 * hidden * hidden + 2 * hidden * config.intermediate_size)
    attention = 2 * layers * seq_len * hidden  # QK^T and AV per token
    head_params = hidden * hidden + hidden * vocab
    head_share = mask_prob if sparse_head else 1.0
    return 6.0 * (encoder_params + attention + head_share * head_params)


# Dense bf16 peak FLOP/s of common training GPUs (spec sheets, without sparsity)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)
