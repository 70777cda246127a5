"""The served tasks: one registry, the only place a task's name is spelled.

A task is what one Triton model answers: its tensors (`config.pbtxt`), the request parameters it accepts, the
model folders it can be exported from, and the code of each stage that handles it, named here and looked up by
the stage itself: its exporter (export: the graph, the gate's reference and figures), its runtime (serve: the
pre- and post-processing of one kind of request, run by the one python-backend class) and its HTTP routes (the
API). Adding a task is adding one `Task` plus that code (docs/tasks.md). Nothing here imports a stage: the three
are dotted names that `resolve` imports when a stage asks for them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from bertforge import contract

FILL_MASK = "fill_mask"
EMBED = "embed"
RERANK = "rerank"
CLASSIFY = "classify"
EMBED_SPARSE = "embed_sparse"

# What a model folder holds, as export reads it (export/model_folder.py `ModelFolderInfo.kind`)
MASKED_LM = "masked-lm"  # an encoder with its MLM head (BertForMaskedLM, ...)
ENCODER = "encoder"  # an encoder without a head (BertModel, a sentence-transformers folder's Transformer)
CROSS_ENCODER = "cross-encoder"  # *ForSequenceClassification with one label
CLASSIFIER = "classifier"  # *ForSequenceClassification with several labels
SPARSE_ENCODER = "sparse-encoder"  # a sentence-transformers SparseEncoder folder (MLM transformer + SpladePooling)
FolderKind = Literal["masked-lm", "encoder", "cross-encoder", "classifier", "sparse-encoder"]


@dataclass(frozen=True)
class Input:
    name: str
    optional: bool = False  # every input is BYTES [1]: one UTF-8 string per request


@dataclass(frozen=True)
class Output:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: str  # per request, as written in config.pbtxt ("-1", "-1, -1")


@dataclass(frozen=True)
class Task:
    """One served task. `name` is also the Triton model's name unless `bertforge export --name` gives another."""

    name: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    parameters: tuple[str, ...]  # Triton request parameters it accepts (docs/serve.md); the rest are refused
    folders: tuple[FolderKind, ...]  # the model folders it can be exported from
    defaults_for: tuple[FolderKind, ...]  # the folders that export it when `--tasks` is not given
    exporter: str  # "module:Class" of its export.task_exporter.TaskExporter
    runtime: str  # "module:Class" of its serve.runtime.Runtime (pre/post-processing, run by serve.backend)
    routes: str  # module whose `router` holds its HTTP routes (one module per family of tasks)
    health_text: str = "health check"  # what the supervisor and probes send ({mask} = the model's mask token)

    @property
    def default(self) -> bool:
        """Exported from a masked-LM folder by default, under its own name (fill_mask, embed)."""
        return MASKED_LM in self.defaults_for

    @property
    def pair(self) -> bool:
        """Reads TEXT_PAIR beside TEXT (query/document, or a text pair)."""
        return any(tensor.name == contract.TEXT_PAIR_INPUT for tensor in self.inputs)


_TEXT = Input(contract.TEXT_INPUT)
_LOGITS = Output(contract.LOGITS_OUTPUT, "TYPE_FP32", "-1")  # [num_labels]
_TEXT_PARAMETERS = ("truncation", "truncation_direction")

TASKS: dict[str, Task] = {task.name: task for task in (
    Task(FILL_MASK, (_TEXT,),
         (Output(contract.TOKENS_OUTPUT, "TYPE_STRING", "-1, -1"),  # [num_masks, top_k]
          Output(contract.TOKEN_IDS_OUTPUT, "TYPE_INT64", "-1, -1"),
          Output(contract.SCORES_OUTPUT, "TYPE_FP32", "-1, -1")),
         ("top_k", *_TEXT_PARAMETERS), folders=(MASKED_LM,), defaults_for=(MASKED_LM,),
         exporter="export.fill_mask:FillMaskExporter", runtime="serve.text:FillMaskRuntime",
         routes="serve.api.text_routes", health_text="health {mask} check"),
    Task(EMBED, (_TEXT,), (Output(contract.EMBEDDING_OUTPUT, "TYPE_FP32", "-1"),),  # [hidden]
         (*_TEXT_PARAMETERS, "prompt_name", "dimensions", "normalize", "token_ids"),
         folders=(MASKED_LM, ENCODER), defaults_for=(MASKED_LM, ENCODER),
         exporter="export.embed:EmbedExporter", runtime="serve.text:EmbedRuntime", routes="serve.api.text_routes"),
    Task(RERANK, (_TEXT, Input(contract.TEXT_PAIR_INPUT)), (_LOGITS,),  # query, document
         ("truncation",), folders=(CROSS_ENCODER,), defaults_for=(CROSS_ENCODER,),
         exporter="export.cross_encoder:CrossEncoderExporter", runtime="serve.pair:PairRuntime",
         routes="serve.api.pair_routes"),
    Task(CLASSIFY, (_TEXT, Input(contract.TEXT_PAIR_INPUT, optional=True)), (_LOGITS,),
         ("truncation",), folders=(CLASSIFIER,), defaults_for=(CLASSIFIER,),
         exporter="export.cross_encoder:CrossEncoderExporter", runtime="serve.pair:PairRuntime",
         routes="serve.api.pair_routes"),
    Task(EMBED_SPARSE, (_TEXT,),
         (Output(contract.SPARSE_INDICES_OUTPUT, "TYPE_INT64", "-1"),  # [non_zeros]
          Output(contract.SPARSE_VALUES_OUTPUT, "TYPE_FP32", "-1")),
         _TEXT_PARAMETERS, folders=(MASKED_LM, SPARSE_ENCODER), defaults_for=(SPARSE_ENCODER,),
         exporter="export.sparse:SparseExporter", runtime="serve.sparse:SparseRuntime",
         routes="serve.api.sparse_routes"),
)}
DEFAULT_TASKS = tuple(name for name, task in TASKS.items() if task.default)  # fill_mask, embed: what a repo holds by default
PAIR_TASKS = tuple(name for name, task in TASKS.items() if task.pair)  # rerank, classify


def task(name: str) -> Task:
    """The registered task `name`; a clear error naming the others."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; tasks are {', '.join(TASKS)}") from None


def resolve(dotted: str) -> Any:
    """The object a registry entry names: "package.module:Name", or "package.module" for the module itself."""
    module, _, name = dotted.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, name) if name else loaded
