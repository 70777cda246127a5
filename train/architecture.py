"""The model families the trainer pretrains, each a standard `transformers` masked-LM class.

- `bert` (`BertForMaskedLM`): BERT as of 2018: post-LayerNorm, GELU, biases everywhere, learned absolute positions.
- `modernbert` (`ModernBertForMaskedLM`, transformers >= 4.48): pre-LayerNorm, GeGLU, rotary positions (RoPE), no
  biases but the decoder's, the decoder tied to the word embeddings. Its `intermediate_size` is the GLU's inner
  width (the first projection is twice as wide), as in ModernBERT's own configs.

A family knows how to build its model from `ModelConfig`, where its encoder and MLM head are, and how to run the
encoder on packed blocks (no padding) during training. For ModernBERT that is `packed_modernbert`: the same modules
and weights as transformers' forward, without the 4-D additive masks and per-layer rotary tables transformers
builds for padded batches (equal to it, tests/train/test_architecture.py). Every checkpoint and `model/` folder is
the plain transformers class, loadable by `transformers.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

FAMILIES = ("bert", "modernbert")


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # config.json's model_type
    # the word-embedding table's names in model.safetensors: safetensors keeps one name of a tied pair
    vocabulary_tensors: tuple[str, ...]
    head_weight: str  # a tensor only a folder with an MLM head has
    glu: bool  # the feed-forward is gated (its first projection is 2 x intermediate_size wide)

    def build(self, config: Any, vocab_size: int, special_ids: dict[str, int]):
        """A freshly initialised masked-LM of this family (transformers' own initialisation) from the sizes of
        `config`, a train.config.ModelConfig (not imported: the config module reads families through
        train/continued.py)."""
        return _BUILDERS[self.name](config, vocab_size, special_ids)

    def from_pretrained(self, folder, dropout: tuple[float, float]):
        """The folder's masked-LM (safetensors only), with the run's dropout."""
        if self.name == "bert":
            from transformers import BertForMaskedLM

            return BertForMaskedLM.from_pretrained(folder, use_safetensors=True, attn_implementation="sdpa",
                                                   hidden_dropout_prob=dropout[0],
                                                   attention_probs_dropout_prob=dropout[1])
        from transformers import ModernBertForMaskedLM

        return ModernBertForMaskedLM.from_pretrained(folder, use_safetensors=True, attn_implementation="sdpa",
                                                     reference_compile=False, embedding_dropout=dropout[0],
                                                     mlp_dropout=dropout[0], attention_dropout=dropout[1])

    def base_model(self, mlm) -> torch.nn.Module:
        """The encoder without the MLM head (what `embed` serves, mean-pooled)."""
        return mlm.bert if self.name == "bert" else mlm.model

    def packed_encoder(self, mlm):
        """input_ids (B, T) of packed blocks (no padding) -> last hidden states (B, T, H), for training."""
        if self.name == "bert":
            return lambda input_ids: mlm.bert(input_ids=input_ids, return_dict=False)[0]
        return lambda input_ids: packed_modernbert(mlm.model, input_ids)

    def head(self, mlm):
        """hidden (..., H) -> vocabulary logits (..., V)."""
        if self.name == "bert":
            return mlm.cls
        return lambda hidden: mlm.decoder(mlm.head(hidden))

    def output_bias(self, mlm) -> torch.nn.Parameter:
        """The vocabulary projection's bias (set to the unigram log-frequencies at init)."""
        return mlm.cls.predictions.bias if self.name == "bert" else mlm.decoder.bias

    def prepare_tokenizer(self, tokenizer):
        """The tokenizer as this family's model/ folder ships it: ModernBERT takes no token_type_ids."""
        if self.name == "modernbert":  # saved in tokenizer_config.json, so every loader of the folder sees it
            tokenizer.model_input_names = ["input_ids", "attention_mask"]
            tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
        return tokenizer

    def feed_forward_params(self, hidden: int, intermediate: int) -> int:
        """Multiply-adds per token of one layer's feed-forward."""
        return (3 if self.glu else 2) * hidden * intermediate


BERT = Family("bert", model_type="bert",
              vocabulary_tensors=("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
              head_weight="cls.predictions.transform.dense.weight", glu=False)
MODERNBERT = Family("modernbert", model_type="modernbert",
                    vocabulary_tensors=("model.embeddings.tok_embeddings.weight", "decoder.weight"),
                    head_weight="head.dense.weight", glu=True)
BY_NAME = {family.name: family for family in (BERT, MODERNBERT)}
BY_MODEL_TYPE = {family.model_type: family for family in (BERT, MODERNBERT)}


def family_of(mlm_or_name) -> Family:
    """The family of a model (by its config's model_type) or of a name in FAMILIES."""
    if isinstance(mlm_or_name, str):
        return BY_NAME[mlm_or_name]
    return BY_MODEL_TYPE[mlm_or_name.config.model_type]


def packed_modernbert(model, input_ids: torch.Tensor) -> torch.Tensor:
    """ModernBertModel's forward for blocks without padding: one rotary table for all layers, SDPA without an
    additive mask on global layers (its fused CPU/GPU kernels), a boolean band on local ones."""
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

    hidden = model.embeddings(input_ids=input_ids)  # (B, T, H)
    batch, length, width = hidden.shape
    positions = torch.arange(length, device=input_ids.device).unsqueeze(0)
    tables, bands = {}, {}
    for layer in model.layers:
        attention = layer.attn
        local = attention.local_attention != (-1, -1)
        if local not in tables:  # global and local layers may use different rotary bases
            tables[local] = attention.rotary_emb(hidden, position_ids=positions)
            if local:
                distance = (positions - positions.T).abs()
                bands[local] = distance <= attention.local_attention[0]  # (T, T) True where attention is allowed
        cos, sin = tables[local]
        # Attention: pre-norm (identity on layer 0), fused QKV, rotary on Q and K
        qkv = attention.Wqkv(layer.attn_norm(hidden)).view(batch, length, 3, attention.num_heads, attention.head_dim)
        query, key, value = qkv.transpose(3, 1).unbind(dim=2)  # (B, heads, T, head_dim) each
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        dropout = attention.attention_dropout if attention.training else 0.0
        attended = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bands.get(local),
                                                                    dropout_p=dropout)
        hidden = hidden + attention.out_drop(attention.Wo(attended.transpose(1, 2).reshape(batch, length, width)))
        # Feed-forward: pre-norm GeGLU
        hidden = hidden + layer.mlp(layer.mlp_norm(hidden))
    return model.final_norm(hidden)


def _build_bert(config: Any, vocab_size: int, special_ids: dict[str, int]):
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings, hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob, initializer_range=config.initializer_range,
        pad_token_id=special_ids["pad"], attn_implementation="sdpa",
    ))


def _build_modernbert(config: Any, vocab_size: int, special_ids: dict[str, int]):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    return ModernBertForMaskedLM(ModernBertConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings, initializer_range=config.initializer_range,
        hidden_activation="gelu", global_attn_every_n_layers=config.global_attention_every,
        local_attention=config.local_attention, global_rope_theta=config.rope_theta,
        local_rope_theta=config.rope_theta, embedding_dropout=config.hidden_dropout_prob,
        mlp_dropout=config.hidden_dropout_prob, attention_dropout=config.attention_probs_dropout_prob,
        attention_bias=False, mlp_bias=False, norm_bias=False, classifier_bias=False, decoder_bias=True,
        tie_word_embeddings=True, pad_token_id=special_ids["pad"], cls_token_id=special_ids["cls"],
        sep_token_id=special_ids["sep"], bos_token_id=special_ids["cls"], eos_token_id=special_ids["sep"],
        reference_compile=False, sparse_prediction=False, attn_implementation="sdpa",
    ))


_BUILDERS = {"bert": _build_bert, "modernbert": _build_modernbert}
