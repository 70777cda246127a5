"""Continued pretraining (`model.init_from`, `bertforge train --init-from DIR`): start from an existing masked-LM.

The source is a folder in Hugging Face layout of a family the trainer pretrains (config.json with model_type
"bert" or "modernbert", model.safetensors, the tokenizer files): bertforge's own runs/*/model or a downloaded
checkpoint. Its family, architecture and tokenizer are the run's; a config key that says otherwise is an error
naming it. Its MLM head is loaded when the folder has one (BertForMaskedLM, ModernBertForMaskedLM) and
initialised when not (BertModel, ModernBertModel).
"""

from __future__ import annotations

import json
from pathlib import Path

from bertforge.config import ConfigError
from train.architecture import BY_MODEL_TYPE, family_of

ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings")


def source_architecture(folder: str | Path) -> dict:
    """The architecture keys of a BERT folder's config.json; a ConfigError says what is missing or unsupported."""
    folder = Path(folder).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model.init_from={folder}: no config.json there; point it at a Hugging Face model folder "
                          f"(e.g. runs/<name>/model)")
    settings = json.loads(config_file.read_text())
    if settings.get("model_type") not in BY_MODEL_TYPE:
        raise ConfigError(f"model.init_from={folder}: model_type {settings.get('model_type')!r} is not supported; "
                          f"continued pretraining takes {' or '.join(repr(t) for t in BY_MODEL_TYPE)} folders")
    if not (folder / "model.safetensors").is_file():
        raise ConfigError(f"model.init_from={folder}: no model.safetensors (only safetensors weights are loaded); "
                          f"convert the weights with save_pretrained(safe_serialization=True)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise ConfigError(f"model.init_from={folder}: no tokenizer files; save the tokenizer beside the model")
    family = BY_MODEL_TYPE[settings["model_type"]].name
    return {"family": family, **{key: settings[key] for key in ARCHITECTURE_KEYS if key in settings}}


def fold_source_into(data: dict, model: dict, folder: str) -> dict:
    """The [model] table with the source's architecture; data.tokenizer set to the source. Contradictions raise."""
    source = source_architecture(folder)
    data_table = data.setdefault("data", {})
    contradicting = [f"model.{key} = {model[key]!r} (the model has {value!r})"
                     for key, value in source.items() if key in model and model[key] != value]
    if data_table.get("tokenizer") and Path(data_table["tokenizer"]).resolve() != Path(folder).resolve():
        contradicting.append(f"data.tokenizer = {data_table['tokenizer']!r} (the model's own tokenizer is used)")
    if contradicting:
        raise ConfigError(f"model.init_from={folder}: these config keys contradict the model: "
                          f"{'; '.join(contradicting)}. Remove them: the architecture and tokenizer come from the model")
    data_table["tokenizer"] = str(folder)
    return source


def load_source_model(folder: str | Path, dropout: tuple[float, float], vocab_size: int):
    """(the family's masked-LM with the source's weights, whether its MLM head came from the folder)."""
    from safetensors import safe_open
    from transformers.utils import logging

    folder = Path(folder).expanduser()
    family = family_of(source_architecture(folder)["family"])
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        head_loaded = any(key.endswith(family.head_weight) for key in weights.keys())
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the "newly initialized cls.*" warning: said below in our own words
    try:
        mlm = family.from_pretrained(folder, dropout)
    finally:
        logging.set_verbosity(verbosity)
    if mlm.config.vocab_size != vocab_size:
        raise ConfigError(f"model.init_from={folder}: the tokenizer has {vocab_size} tokens but the model "
                          f"{mlm.config.vocab_size} embedding rows; use a folder whose tokenizer matches its model")
    return mlm, head_loaded
