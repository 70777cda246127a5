"""The encoder families bertforge exports, and what differs between them.

Everything else (special tokens, token_type_ids, lower-casing) comes from the folder's tokenizer; here only what
the checkpoint's architecture fixes: where its embeddings and MLM head live, how its head is built, how many
position rows precede the first usable position, and which ONNX Runtime fusion pass applies.

Fusions (onnxruntime.transformers optimizer, model_type "bert": Attention, SkipLayerNormalization, BiasGelu):
its pattern matcher finds Attention in BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA and DistilBERT graphs, and
only SkipLayerNormalization/Gelu in MPNet (relative position bias) and ModernBERT (rotary attention) graphs
(measured on Optimum's exports: docs/export.md "Families"). ModernBERT's encoder is therefore written in ORT's fused
ops by export.modernbert_graph (MultiHeadAttention, RotaryEmbedding, SkipLayerNormalization). A family with
`fusion=None` would be served as the plain graph; every fused graph still has to pass the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from export.errors import ExportError


@dataclass(frozen=True)
class Family:
    model_type: str
    embeddings_key: str  # suffix of the word-embedding tensor in the checkpoint
    mlm_head_key: str  # a tensor only the MLM head has
    fusion: str | None  # onnxruntime.transformers optimizer model_type; "modernbert": export.modernbert_graph;
    # None = serve the plain graph
    position_offset: int = 0  # position rows before the first usable one (RoBERTa: padding_idx + 1)
    hidden_key: str = "hidden_size"
    heads_key: str = "num_attention_heads"


FAMILIES = {family.model_type: family for family in (
    Family("bert", "embeddings.word_embeddings.weight", "cls.predictions.transform.dense.weight", "bert"),
    Family("roberta", "embeddings.word_embeddings.weight", "lm_head.dense.weight", "bert", position_offset=-1),
    Family("xlm-roberta", "embeddings.word_embeddings.weight", "lm_head.dense.weight", "bert", position_offset=-1),
    Family("camembert", "embeddings.word_embeddings.weight", "lm_head.dense.weight", "bert", position_offset=-1),
    Family("distilbert", "embeddings.word_embeddings.weight", "vocab_transform.weight", "bert",
           hidden_key="dim", heads_key="n_heads"),
    Family("mpnet", "embeddings.word_embeddings.weight", "lm_head.dense.weight", "bert", position_offset=2),
    Family("electra", "embeddings.word_embeddings.weight", "generator_predictions.dense.weight", "bert"),
    Family("modernbert", "embeddings.tok_embeddings.weight", "head.dense.weight", "modernbert"),
)}


def family_of(config: dict, folder) -> Family:
    """The family of a checkpoint's config.json, or an error naming the supported families."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ExportError(f"{folder} holds a {model_type!r} model; bertforge exports the encoder families "
                          f"{', '.join(FAMILIES)} (config.json model_type)")
    return FAMILIES[model_type]


def position_limit(family: Family, config: dict) -> int:
    """Usable positions: max_position_embeddings less the rows before the first position id
    (RoBERTa family: positions start at padding_idx + 1, so 514 rows give 512 tokens; MPNet: 2)."""
    rows = int(config.get("max_position_embeddings", 512))
    if family.position_offset == -1:  # padding_idx + 1, padding_idx = pad_token_id
        return rows - int(config.get("pad_token_id", 1)) - 1
    return rows - family.position_offset


def mlm_head(model) -> tuple[dict, Callable]:
    """(the head's parts for export.graphs: dense, activation, LayerNorm, decoder; the author's own head as a
    callable hidden -> logits for the gate's reference) of a *ForMaskedLM model of any family."""
    model_type = model.config.model_type
    if model_type == "bert":
        head = model.cls.predictions
        parts = (head.transform.dense, str(model.config.hidden_act), head.transform.LayerNorm, head.decoder, head.bias)
        return _weights(*parts), model.cls
    if model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        head = model.lm_head  # dense -> gelu (erf) -> layer_norm -> decoder
        return _weights(head.dense, "gelu", head.layer_norm, head.decoder, head.bias), head
    if model_type == "electra":
        head = model.generator_predictions  # dense -> gelu -> LayerNorm, then generator_lm_head
        return (_weights(head.dense, "gelu", head.LayerNorm, model.generator_lm_head, None),
                lambda hidden: model.generator_lm_head(head(hidden)))
    if model_type == "distilbert":
        return (_weights(model.vocab_transform, str(model.config.activation), model.vocab_layer_norm,
                         model.vocab_projector, None),
                lambda hidden: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(hidden)))))
    if model_type == "modernbert":
        return (_weights(model.head.dense, str(model.config.classifier_activation), model.head.norm, model.decoder, None),
                lambda hidden: model.decoder(model.head(hidden)))
    raise ExportError(f"no MLM head mapping for {model_type!r}")


def encoder_of(model):
    """The bare encoder (last_hidden_state) inside a *ForMaskedLM or base model."""
    return getattr(model, "base_model", model)


def _weights(dense, activation: str, norm, decoder, bias) -> dict:
    import torch

    as_numpy = lambda tensor: tensor.detach().float().cpu().numpy()  # noqa: E731
    zeros = lambda size: torch.zeros(size)  # noqa: E731 (ModernBERT's dense and norm have no bias)
    decoder_bias = decoder.bias if decoder.bias is not None else bias
    return {
        "dense_weight": as_numpy(dense.weight).T.copy(),  # (H, E) for MatMul
        "dense_bias": as_numpy(dense.bias if dense.bias is not None else zeros(dense.out_features)),
        "norm_weight": as_numpy(norm.weight),
        "norm_bias": as_numpy(norm.bias if norm.bias is not None else zeros(norm.weight.shape[0])),
        "norm_eps": float(norm.eps),
        "decoder_weight": as_numpy(decoder.weight).T.copy(),  # (E, V)
        "decoder_bias": as_numpy(decoder_bias if decoder_bias is not None else zeros(decoder.out_features)),
        "activation": activation,
    }
