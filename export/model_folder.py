"""Look at a user's folder before exporting it: a supported encoder family, the tokenizer, which kind of model it is
(`bertforge.tasks`' folder kinds: masked-LM, encoder, cross-encoder, classifier, sentence-transformers SparseEncoder),
and where the author's definition is (export.model_definition, export.sparse_definition)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertforge import tasks
from export.errors import ExportError
from export.families import Family, family_of
from export.model_definition import MODULES_FILE, is_sentence_transformers_folder
from export.sparse_definition import is_sparse_encoder_folder

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
SEQUENCE_CLASSIFICATION = "ForSequenceClassification"  # the config.json architectures suffix that marks the head


@dataclass(frozen=True)
class ModelFolderInfo:
    folder: Path  # the Hugging Face checkpoint (a sentence-transformers folder's Transformer module)
    config: dict
    has_mlm_head: bool
    weight_keys: frozenset[str]
    family: Family
    root: Path  # the folder the user gave (holds modules.json for a sentence-transformers model)

    @property
    def hidden_size(self) -> int:
        return int(self.config[self.family.hidden_key])

    @property
    def num_heads(self) -> int:
        return int(self.config[self.family.heads_key])

    @property
    def sentence_transformers(self) -> bool:
        return is_sentence_transformers_folder(self.root)

    @property
    def labels(self) -> tuple[str, ...]:
        """A sequence-classification head's labels in logit order (config.json id2label); () for other heads."""
        if not any(str(name).endswith(SEQUENCE_CLASSIFICATION) for name in self.config.get("architectures") or []):
            return ()
        id2label = self.config.get("id2label") or {}
        if id2label:
            return tuple(str(id2label[key]) for key in sorted(id2label, key=int))
        return tuple(f"LABEL_{index}" for index in range(int(self.config.get("num_labels", 2))))

    @property
    def kind(self) -> tasks.FolderKind:
        """What the folder holds, which decides the tasks it can be exported as (bertforge.tasks.Task.folders)."""
        if self.labels:
            return tasks.CROSS_ENCODER if len(self.labels) == 1 else tasks.CLASSIFIER
        if is_sparse_encoder_folder(self.root):
            return tasks.SPARSE_ENCODER
        return tasks.MASKED_LM if self.has_mlm_head else tasks.ENCODER


def inspect_model_folder(folder: Path) -> ModelFolderInfo:
    """Check `folder` is an HF encoder folder (or a sentence-transformers folder around one) of a supported family
    with safetensors weights and a tokenizer; say what is wrong if not."""
    root = Path(folder)
    if not root.is_dir():
        raise ExportError(f"{root} is not a folder; pass --model a Hugging Face or sentence-transformers folder "
                          "(config.json, model.safetensors, tokenizer files), e.g. runs/<name>/model")
    folder = _checkpoint_folder(root)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{folder} is not a Hugging Face checkpoint: config.json is missing")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{config_file} is not valid JSON: {error}") from error
    family = family_of(config, folder)
    keys = _weight_keys(folder)
    if not any(key.endswith(family.embeddings_key) for key in keys):
        raise ExportError(f"{folder}: the weights have no {family.model_type} embeddings ({family.embeddings_key})")
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        raise ExportError(f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save it next to the "
                          "weights with tokenizer.save_pretrained(folder)")
    _check_tokenizer(folder)
    has_head = family.mlm_head_key in keys
    return ModelFolderInfo(folder=folder, config=config, has_mlm_head=has_head, weight_keys=frozenset(keys),
                           family=family, root=root)


def _checkpoint_folder(root: Path) -> Path:
    """The Hugging Face checkpoint: the folder itself, or its sentence-transformers Transformer module's path."""
    if not is_sentence_transformers_folder(root):
        return root
    try:
        entries = json.loads((root / MODULES_FILE).read_text())
        first = min(entries, key=lambda entry: int(entry.get("idx", 0)))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as error:
        raise ExportError(f"{root / MODULES_FILE} is not a valid sentence-transformers module list: {error}") from error
    return root / first.get("path", "")


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
    roles = {"padding": tokenizer.pad_token_id, "start (cls/bos)": _first(tokenizer.cls_token_id, tokenizer.bos_token_id),
             "end (sep/eos)": _first(tokenizer.sep_token_id, tokenizer.eos_token_id)}
    absent = [role for role, token_id in roles.items() if token_id is None]
    if absent:
        raise ExportError(f"{folder}: the tokenizer defines no {' / '.join(absent)} token; save the model's own "
                          "tokenizer (tokenizer.save_pretrained(folder)) next to the weights")


def _first(*values):
    return next((value for value in values if value is not None), None)
