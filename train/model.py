"""The model: a standard transformers masked-LM of the run's family (train/architecture.py), trained through a
sparse-head wrapper.

The wrapper runs the encoder on every position but the MLM head (transform + vocabulary projection) only on the
masked positions, which is where the loss is: with 15% masking that is ~7x less head work. The saved checkpoint
is still the plain transformers class (BertForMaskedLM or ModernBertForMaskedLM).
"""

from __future__ import annotations

import torch
from torch import nn

from bertforge import contract
from train.architecture import family_of
from train.config import ModelConfig
from train.data import IGNORE_INDEX
from train.init import apply_locality_prior


def build_model(config: ModelConfig, vocab_size: int, pad_token_id: int, cls_token_id: int | None = None,
                sep_token_id: int | None = None):
    """A freshly initialised masked-LM of `config.family` with SDPA attention (and the locality prior if asked).
    [CLS]/[SEP] ids (ModernBERT's config records them) default to bertforge tokenizers' (bertforge.contract)."""
    special_ids = {"pad": pad_token_id,
                   "cls": contract.SPECIAL_TOKEN_IDS[contract.CLS_TOKEN] if cls_token_id is None else cls_token_id,
                   "sep": contract.SPECIAL_TOKEN_IDS[contract.SEP_TOKEN] if sep_token_id is None else sep_token_id}
    model = family_of(config.family).build(config, vocab_size, special_ids)
    if config.init == "local":
        apply_locality_prior(model)
    return model


class MaskedLMObjective(nn.Module):
    """forward(input_ids, labels) -> (summed loss, masked count, correct count) over masked positions."""

    def __init__(self, mlm, sparse_head: bool = True, compile_encoder: bool = False):
        super().__init__()
        self.mlm = mlm
        self.sparse_head = sparse_head
        family = family_of(mlm)
        encoder = family.packed_encoder(mlm)
        # not submodules: state_dict keys stay the transformers class's
        object.__setattr__(self, "_encoder", torch.compile(encoder) if compile_encoder else encoder)
        object.__setattr__(self, "_head", family.head(mlm))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        # Encoder on every position; packed blocks have no padding, so no attention mask
        hidden = self._encoder(input_ids)  # (B, T, H)
        # Head on masked positions only (or everywhere, as the dense reference)
        if self.sparse_head:
            selected = labels != IGNORE_INDEX  # (B, T)
            logits = self._head(hidden[selected])  # (M, V)
            targets = labels[selected]  # (M,)
        else:
            logits = self._head(hidden).flatten(0, 1)  # (B*T, V)
            targets = labels.flatten()
        loss_sum = nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
        valid = targets != IGNORE_INDEX
        correct = ((logits.argmax(-1) == targets) & valid).sum()
        return loss_sum, valid.sum(), correct


def flops_per_token(model, seq_len: int, mask_prob: float, sparse_head: bool) -> float:
    """Training FLOPs per token (forward + backward = 3x forward, 2 FLOPs per multiply-add)."""
    config = model.config
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    feed_forward = family_of(model).feed_forward_params(hidden, config.intermediate_size)
    encoder_params = layers * (4 * hidden * hidden + feed_forward)
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
