"""Look at a user's folder before exporting it: is it a BERT checkpoint, is the tokenizer there, is the MLM head?"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertforge import contract
from export.errors import ExportError

MLM_HEAD_KEYS = ("cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.weight",
                 "cls.predictions.bias")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


@dataclass(frozen=True)
class ModelFolderInfo:
    folder: Path
    config: dict
    has_mlm_head: bool
    weight_keys: frozenset[str]

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def num_heads(self) -> int:
        return int(self.config["num_attention_heads"])


def inspect_model_folder(folder: Path) -> ModelFolderInfo:
    """Check `folder` is an HF BERT folder with safetensors weights and a tokenizer; say what is wrong if not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder; pass --model a Hugging Face BERT folder (config.json, "
                          "model.safetensors, tokenizer files), e.g. runs/<name>/model")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{folder} is not a Hugging Face checkpoint: config.json is missing")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{config_file} is not valid JSON: {error}") from error
    if config.get("model_type") != "bert":
        raise ExportError(f"{folder} holds a {config.get('model_type')!r} model; the exporter handles BERT "
                          "(model_type 'bert') checkpoints only")
    keys = _weight_keys(folder)
    if not any(key.endswith("embeddings.word_embeddings.weight") for key in keys):
        raise ExportError(f"{folder}: the weights have no BERT embeddings (embeddings.word_embeddings.weight)")
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        raise ExportError(f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save it next to the "
                          "weights with tokenizer.save_pretrained(folder)")
    _check_tokenizer(folder)
    has_head = all(key in keys for key in MLM_HEAD_KEYS)
    return ModelFolderInfo(folder=folder, config=config, has_mlm_head=has_head, weight_keys=frozenset(keys))


def _weight_keys(folder: Path) -> set[str]:
    """Tensor names in model.safetensors (or its sharded index). Pickled weights are refused (security)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    if single.is_file():
        try:
            with safe_open(str(single), framework="np") as weights:
                return set(weights.keys())
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise ExportError(f"{single} is not a readable safetensors file: {error}") from error
    if (folder / "pytorch_model.bin").is_file():
        raise ExportError(f"{folder} has only pickled weights (pytorch_model.bin); bertforge loads safetensors "
                          "only. Convert: BertForMaskedLM.from_pretrained(folder).save_pretrained(folder)")
    raise ExportError(f"{folder} has no weights (model.safetensors)")


def _check_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # transformers raises many types for broken tokenizer files
        raise ExportError(f"{folder}: the tokenizer does not load ({error}); re-save it with save_pretrained") from error
    absent = [token for token in contract.SPECIAL_TOKENS if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id)
              and token != contract.UNK_TOKEN]
    if absent:
        raise ExportError(f"{folder}: the tokenizer lacks the special tokens {absent}; a BERT WordPiece tokenizer "
                          f"with {list(contract.SPECIAL_TOKENS)} is required")
