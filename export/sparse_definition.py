"""What the author of a sparse encoder says its vectors are: a sentence-transformers SparseEncoder folder as
sentence-transformers reads it, else bertforge's default for a masked-LM folder.

    definition = read_sparse_definition(folder)        # pooling strategy, activation, max length, vocabulary, prompts
    encoder = sparse_reference(definition, max_length)  # the SparseEncoder the gate compares the graph with

A SparseEncoder folder (`modules.json`: an MLM transformer, `MLMTransformer` or `Transformer` with
transformer_task "fill-mask", then `SpladePooling`, as SPLADE-v3 and OpenSearch's sparse encoders ship) is loaded with
`sentence_transformers.SparseEncoder` itself, so its config files mean what they mean to the author's library:
SpladePooling's pooling strategy (max or sum over positions) and activation (relu: log(1 + ReLU(logits)); log1p_relu:
log(1 + log(1 + ReLU(logits)))), the transformer's max_seq_length and lower-casing, the prompts. Any other module
(a Router, SparseStaticEmbedding, a SparseAutoEncoder) is refused by name. A plain masked-LM folder keeps bertforge's
default: max pooling of log(1 + ReLU(MLM logits)) over the real tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.errors import ExportError

MODULES_FILE = "modules.json"
SPLADE_POOLING = "SpladePooling"
MLM_TRANSFORMERS = ("MLMTransformer", "Transformer")  # the first module: the masked-LM
POOLING_STRATEGIES = ("max", "sum")
ACTIVATIONS = ("relu", "log1p_relu")
DEFAULT_SOURCE = "bertforge default for a masked-LM folder (SPLADE max pooling, relu)"


@dataclass
class SparseDefinition:
    """The author's sparse vector: what SparseEncoder.encode computes for this folder."""

    folder: Path
    sentence_transformers: bool
    pooling_strategy: str = "max"
    activation: str = "relu"
    max_seq_length: int | None = None
    vocabulary: int | None = None  # SpladePooling's embedding_dimension where the folder records it
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    model: Any = None  # the loaded SparseEncoder (the gate's reference); None for a plain folder until built

    @property
    def default_prompt(self) -> str:
        return self.prompts.get(self.default_prompt_name or "", "")

    def summary(self) -> dict:
        return {"sentence_transformers": self.sentence_transformers, "sparse_encoder": True,
                "pooling_strategy": self.pooling_strategy, "activation": self.activation,
                "max_seq_length": self.max_seq_length, "vocabulary": self.vocabulary,
                "do_lower_case": self.do_lower_case, "prompts": self.prompts,
                "default_prompt_name": self.default_prompt_name, "similarity_fn_name": self.similarity_fn_name,
                "sources": self.sources}


def is_sparse_encoder_folder(folder: Path) -> bool:
    """A sentence-transformers folder whose modules.json holds a SpladePooling module."""
    modules = Path(folder) / MODULES_FILE
    if not modules.is_file():
        return False
    try:
        entries = json.loads(modules.read_text())
        return any(str(entry.get("type", "")).rsplit(".", 1)[-1] == SPLADE_POOLING for entry in entries)
    except (json.JSONDecodeError, AttributeError, TypeError):
        return False  # export.model_definition names what is wrong with the file


def read_sparse_definition(folder: Path) -> SparseDefinition:
    """The author's definition of `folder`'s sparse vectors; raises ExportError naming what bertforge cannot serve."""
    folder = Path(folder)
    if not is_sparse_encoder_folder(folder):
        return SparseDefinition(folder=folder, sentence_transformers=False,
                                sources={"pooling_strategy": DEFAULT_SOURCE, "activation": DEFAULT_SOURCE})
    # 1. modules.json: an MLM transformer, then SpladePooling, nothing else
    entries = sorted(json.loads((folder / MODULES_FILE).read_text()), key=lambda entry: int(entry.get("idx", 0)))
    kinds = [str(entry.get("type", "")).rsplit(".", 1)[-1] for entry in entries]
    if len(kinds) != 2 or kinds[0] not in MLM_TRANSFORMERS or kinds[1] != SPLADE_POOLING:
        described = [f"{entry.get('path') or entry.get('name')} ({entry.get('type')})" for entry in entries]
        raise ExportError(f"{folder}: bertforge serves a SparseEncoder of an MLM transformer and SpladePooling (SPLADE), "
                          f"not the modules {described}; refusing rather than dropping any of them")
    # 2. the author's library reads every config file
    from export.model_definition import load_author_model

    model = load_author_model(folder, "SparseEncoder")
    transformer, pooling = list(model)
    task = getattr(transformer, "transformer_task", "fill-mask")
    if task != "fill-mask":
        raise ExportError(f"{folder}: the SparseEncoder's transformer runs {task!r}; SpladePooling needs MLM logits "
                          "(transformer_task fill-mask)")
    where = f"{entries[1].get('path') or '.'}/config.json"
    return SparseDefinition(folder=folder, sentence_transformers=True, model=model,
                            pooling_strategy=pooling.pooling_strategy, activation=pooling.activation_function,
                            max_seq_length=model.max_seq_length, vocabulary=pooling.embedding_dimension,
                            do_lower_case=bool(getattr(transformer, "do_lower_case", False)),
                            prompts=dict(model.prompts or {}), default_prompt_name=model.default_prompt_name,
                            similarity_fn_name=model.similarity_fn_name,
                            sources={"pooling_strategy": where, "activation": where, "max_seq_length": "sentence_bert_config.json",
                                     "prompts": "config_sentence_transformers.json"})


def sparse_reference(definition: SparseDefinition, max_length: int):
    """The SparseEncoder the gate compares with, truncating at the served max_length: the folder's own, or for a
    plain masked-LM folder its transformers model under SpladePooling (max, relu), bertforge's default."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    from export.model_definition import quiet_loading

    if definition.model is None:
        with quiet_loading():
            transformer = Transformer(str(definition.folder), transformer_task="fill-mask", max_seq_length=max_length)
        pooling = SpladePooling(pooling_strategy=definition.pooling_strategy, activation_function=definition.activation)
        definition.model = SparseEncoder(modules=[transformer, pooling], device="cpu")
    definition.model.max_seq_length = max_length
    return definition.model
