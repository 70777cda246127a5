"""What the model's author says an embedding is: read from a sentence-transformers folder, else bertforge's default.

    definition = read_definition(folder)                   # modules.json & co., as sentence-transformers reads them
    embedding, notes = resolve_embedding(definition, pooling=None, normalize=None)   # + explicit flags, warned

A sentence-transformers folder (modules.json) is loaded with `sentence_transformers.SentenceTransformer`
itself, so legacy and current config formats mean exactly what they mean to the author's library:
Transformer (max_seq_length, do_lower_case: the tokenizer it returns lowercases), Pooling (modes, in
concatenation order; include_prompt=False is refused), Dense (weights and activation go into the graph),
Normalize; config_sentence_transformers.json (prompts, default prompt, similarity function). Any other module
is refused by name. A plain Hugging Face folder keeps bertforge's default: mean pooling, no normalisation.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertforge.pooling import POOLING_MODES
from export.errors import ExportError

MODULES_FILE = "modules.json"
DEFAULT_SOURCE = "bertforge default (the folder has no sentence-transformers definition)"
FLAG_SOURCE = "explicit --pooling/--normalize (contradicts the folder)"
# module classes bertforge can put in the graph (last component of modules.json "type")
SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
DENSE_ACTIVATIONS = {"Identity": None, "Tanh": "Tanh", "ReLU": "Relu", "Sigmoid": "Sigmoid"}


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers Dense module: y = activation(x W^T + b)."""

    name: str  # modules.json path, e.g. "2_Dense"
    weight: np.ndarray  # (out, in)
    bias: np.ndarray  # (out,)
    activation: str | None  # ONNX op (Tanh, Relu, Sigmoid) or None for identity


@dataclass
class ModelDefinition:
    """The author's embedding: what sentence-transformers would compute for this folder."""

    folder: Path
    sentence_transformers: bool
    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    dense: tuple[DenseLayer, ...] = ()
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # field -> file it was read from
    model: Any = None  # the loaded SentenceTransformer (the gate's reference), None for a plain folder

    @property
    def default_prompt(self) -> str:
        return self.prompts.get(self.default_prompt_name or "", "")

    def summary(self) -> dict:
        return {"sentence_transformers": self.sentence_transformers, "pooling": "+".join(self.pooling),
                "normalize": self.normalize, "dense": [f"{d.name} {d.weight.shape[1]}->{d.weight.shape[0]} "
                                                       f"{d.activation or 'identity'}" for d in self.dense],
                "max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case, "prompts": self.prompts,
                "default_prompt_name": self.default_prompt_name, "similarity_fn_name": self.similarity_fn_name,
                "sources": self.sources}


@dataclass(frozen=True)
class EmbeddingPlan:
    """What the embed graph computes, and where each choice came from (recorded in the report and serving.json)."""

    pooling: tuple[str, ...]
    normalize: bool
    dense: tuple[DenseLayer, ...]
    agrees_with_author: bool  # False when an explicit flag contradicted the folder
    sources: dict[str, str]

    @property
    def pooling_name(self) -> str:
        return "+".join(self.pooling)


def is_sentence_transformers_folder(folder: Path) -> bool:
    return (Path(folder) / MODULES_FILE).is_file()


def read_definition(folder: Path) -> ModelDefinition:
    """The author's definition of `folder`'s embedding; raises ExportError naming what bertforge cannot serve."""
    folder = Path(folder)
    if not is_sentence_transformers_folder(folder):
        return ModelDefinition(folder=folder, sentence_transformers=False,
                               sources={"pooling": DEFAULT_SOURCE, "normalize": DEFAULT_SOURCE})
    # 1. modules.json: only modules the graph can hold, the Transformer first
    entries = _module_entries(folder)
    # 2. the author's library reads every config file (legacy and current formats)
    model = load_author_model(folder)
    modules = list(model)
    transformer = modules[0]
    definition = ModelDefinition(folder=folder, sentence_transformers=True, model=model, pooling=(),
                                 max_seq_length=model.max_seq_length,
                                 do_lower_case=bool(getattr(transformer, "do_lower_case", False)),
                                 prompts=dict(model.prompts or {}), default_prompt_name=model.default_prompt_name,
                                 similarity_fn_name=model.similarity_fn_name)
    transformer_source = _first_existing(folder / entries[0]["path"], ("sentence_bert_config.json", "tokenizer_config.json"))
    definition.sources.update(max_seq_length=transformer_source, do_lower_case=transformer_source,
                              prompts="config_sentence_transformers.json")
    dense = []
    for entry, module in zip(entries[1:], modules[1:]):
        kind = entry["type"].rsplit(".", 1)[-1]
        where = f"{entry['path'] or '.'}/config.json"
        if kind == "Pooling":
            definition.pooling = _pooling_modes(module, entry)
            definition.sources["pooling"] = where
        elif kind == "Dense":
            dense.append(_dense_layer(module, entry))
            definition.sources.setdefault("dense", MODULES_FILE)
        elif kind == "Normalize":
            definition.normalize = True
    definition.sources["normalize"] = MODULES_FILE
    definition.dense = tuple(dense)
    if not definition.pooling:
        raise ExportError(f"{folder}: {MODULES_FILE} has no Pooling module; bertforge serves one vector per text "
                          "and needs the author's pooling (add sentence_transformers.models.Pooling)")
    return definition


def resolve_embedding(definition: ModelDefinition, pooling: str | None, normalize: bool | None) -> tuple[EmbeddingPlan, list[str]]:
    """The folder's pooling/normalisation, or the explicit flags; a flag that contradicts the author is honoured
    with a warning (returned as a note), and the plan says so."""
    notes, sources = [], dict(definition.sources)
    used_pooling, used_normalize = definition.pooling, definition.normalize
    if pooling is not None:
        modes = tuple(pooling.split("+"))
        unknown = [mode for mode in modes if mode not in POOLING_MODES]
        if unknown:
            raise ExportError(f"--pooling {pooling!r}: modes are {', '.join(POOLING_MODES)}, joined by '+'")
        used_pooling = _honour_flag(definition, "pooling", modes, definition.pooling, pooling,
                                    f"{sources['pooling']}: {'+'.join(definition.pooling)}", sources, notes)
    if normalize is not None:
        authored = f"{MODULES_FILE} {'has' if definition.normalize else 'has no'} Normalize module"
        used_normalize = _honour_flag(definition, "normalize", normalize, definition.normalize, f"={normalize}",
                                      authored, sources, notes)
    if definition.dense and len(used_pooling) != len(definition.pooling):
        raise ExportError(f"--pooling {'+'.join(used_pooling)} changes the pooled width, but the model's Dense module "
                          f"{definition.dense[0].name} expects {definition.dense[0].weight.shape[1]} inputs; "
                          "drop --pooling to export the model as its author defined it")
    agrees = (used_pooling, used_normalize) == (definition.pooling, definition.normalize) or not definition.sentence_transformers
    return EmbeddingPlan(pooling=used_pooling, normalize=used_normalize, dense=definition.dense,
                         agrees_with_author=agrees, sources=sources), notes


def _honour_flag(definition: ModelDefinition, key: str, value, authored_value, shown: str, authored: str,
                 sources: dict, notes: list[str]):
    """An explicit --pooling/--normalize: kept, with a warning note where it contradicts a sentence-transformers
    folder's own definition (`authored` says what the folder defines); `sources[key]` records where it came from."""
    flag = f"--{key}{shown if shown.startswith('=') else ' ' + shown}"
    if value != authored_value and definition.sentence_transformers:
        notes.append(f"WARNING: {flag} contradicts the model's own definition ({authored}); exporting as asked, so "
                     "the served vectors will NOT match SentenceTransformer.encode")
        sources[key] = FLAG_SOURCE
    elif not definition.sentence_transformers:
        sources[key] = f"explicit --{key}"
    return value


def reference_model(definition: ModelDefinition, plan: EmbeddingPlan, max_length: int):
    """The sentence-transformers model the gate compares with: the author's (`author_model`), or, when flags
    contradict it, the author's Transformer and Dense modules with sentence-transformers' own Pooling/Normalize
    as asked. A plain folder: transformers' model under sentence-transformers' Pooling (bertforge's default)."""
    from sentence_transformers import SentenceTransformer, models

    author = author_model(definition, max_length)
    if plan.agrees_with_author and definition.sentence_transformers:
        return author
    modules = list(author)
    rebuilt = [modules[0], models.Pooling(modules[0].get_embedding_dimension(), pooling_mode=plan.pooling)]
    rebuilt += [module for module in modules[1:] if type(module).__name__ == "Dense"]
    if plan.normalize:
        rebuilt.append(models.Normalize())
    return SentenceTransformer(modules=rebuilt, prompts=definition.prompts,
                               default_prompt_name=definition.default_prompt_name, device="cpu")


def author_model(definition: ModelDefinition, max_length: int):
    """SentenceTransformer(folder) truncating at the served max_length; for a plain folder, its transformers
    model with mean pooling (what bertforge serves it as)."""
    from sentence_transformers import SentenceTransformer, models

    if definition.model is None:
        with quiet_loading():
            transformer = models.Transformer(str(definition.folder), max_seq_length=max_length)
        definition.model = SentenceTransformer(modules=[transformer, models.Pooling(transformer.get_embedding_dimension())],
                                               device="cpu")
    definition.model.max_seq_length = max_length
    return definition.model


def serving_fields(family: str, hidden_size: int, definition: ModelDefinition, plan: EmbeddingPlan) -> dict:
    """What serving.json records about the model (bertforge.served_model.ServingSettings): pooling as used, prompts and
    the default prompt from the folder, the family, the embedding width."""
    width = plan.dense[-1].weight.shape[0] if plan.dense else hidden_size * len(plan.pooling)
    return {"pooling": plan.pooling_name, "normalize": plan.normalize, "prompts": dict(definition.prompts),
            "default_prompt_name": definition.default_prompt_name, "family": family, "embedding_dim": int(width)}


def _module_entries(folder: Path) -> list[dict]:
    try:
        entries = sorted(json.loads((folder / MODULES_FILE).read_text()), key=lambda entry: int(entry.get("idx", 0)))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ExportError(f"{folder / MODULES_FILE} is not a valid sentence-transformers module list: {error}") from error
    kinds = [entry.get("type", "").rsplit(".", 1)[-1] for entry in entries]
    unsupported = [f"{entry.get('path') or entry.get('name')} ({entry.get('type')})"
                   for entry, kind in zip(entries, kinds) if kind not in SUPPORTED_MODULES]
    if unsupported:
        raise ExportError(f"{folder}: bertforge cannot put the sentence-transformers module(s) {unsupported} in the "
                          f"graph (it serves {', '.join(SUPPORTED_MODULES)}); refusing rather than dropping them")
    if not kinds or kinds[0] != "Transformer" or kinds.count("Transformer") != 1:
        raise ExportError(f"{folder}: {MODULES_FILE} must start with one Transformer module, got {kinds}")
    return entries


def load_author_model(folder: Path, library_class: str = "SentenceTransformer"):
    """`sentence_transformers.<library_class>(folder)` (SentenceTransformer, SparseEncoder) on the CPU, offline and
    without remote code; an ExportError naming the folder when the author's library cannot load it."""
    import sentence_transformers

    try:
        with quiet_loading():
            return getattr(sentence_transformers, library_class)(str(folder), device="cpu", local_files_only=True,
                                                                 trust_remote_code=False)
    except Exception as error:  # the library raises many types for broken folders
        raise ExportError(f"{folder}: sentence-transformers cannot load this folder ({type(error).__name__}: {error}); "
                          f"bertforge serves a folder exactly as {library_class}(folder) computes it") from error


@contextmanager
def quiet_loading():
    """Loading a checkpoint without its pooler (sentence-transformers folders never have one) is expected: no noise."""
    import warnings

    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(level)


def _pooling_modes(module, entry: dict) -> tuple[str, ...]:
    if not getattr(module, "include_prompt", True):
        raise ExportError(f"{entry['path']}/config.json sets include_prompt=false (prompt tokens left out of the "
                          "pooling, as INSTRUCTOR models do); bertforge's graph pools every token and cannot serve it")
    modes = module.pooling_mode
    return (modes,) if isinstance(modes, str) else tuple(modes)


def _dense_layer(module, entry: dict) -> DenseLayer:
    activation = type(module.activation_function).__name__
    if activation not in DENSE_ACTIVATIONS:
        raise ExportError(f"{entry['path']}: the Dense module's activation {activation} is not supported in the graph "
                          f"(supported: {', '.join(DENSE_ACTIVATIONS)}); refusing rather than dropping the module")
    linear = module.linear
    weight = linear.weight.detach().float().cpu().numpy()
    bias = linear.bias.detach().float().cpu().numpy() if linear.bias is not None else np.zeros(weight.shape[0], np.float32)
    return DenseLayer(name=entry["path"] or entry.get("name", "Dense"), weight=weight, bias=bias,
                      activation=DENSE_ACTIVATIONS[activation])


def _first_existing(folder: Path, names: tuple[str, ...]) -> str:
    for name in names:
        if (folder / name).is_file():
            return name
    return "sentence-transformers default"
