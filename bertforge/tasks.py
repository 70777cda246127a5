"""The served tasks: one registry, the only place a task's name is spelled.

A task is what one Triton model answers: its tensors (`config.pbtxt`), the request parameters it
accepts, the python-backend class that runs it and the head it needs from a model folder. Export,
serve, the HTTP API, the client and bench look a task up here; adding a task is adding one `Task`
(plus its stage code: the exporter's graph, the backend class named in `backend`, its HTTP routes).
Nothing here imports a stage: `backend` is a dotted name that only the rendered `1/model.py` imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bertforge import contract

FILL_MASK = "fill_mask"
EMBED = "embed"
RERANK = "rerank"
CLASSIFY = "classify"
EMBED_SPARSE = "embed_sparse"

Head = Literal["masked-lm", "encoder", "sequence-classification"]


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
    head: Head  # what the model folder must provide
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    parameters: tuple[str, ...]  # Triton request parameters it accepts (docs/serve.md); the rest are refused
    backend: str  # "module:Class" of the python-backend model; its `from_triton_args` builds it
    default: bool = False  # exported from a masked-LM folder when `--tasks` is not given
    pair: bool = False  # reads TEXT_PAIR beside TEXT (query/document, or a text pair)
    health_text: str = "health check"  # what the supervisor and probes send ({mask} = the model's mask token)

    @property
    def backend_module(self) -> str:
        return self.backend.split(":")[0]

    @property
    def backend_class(self) -> str:
        return self.backend.split(":")[1]


_TEXT = Input(contract.TEXT_INPUT)
_LOGITS = Output(contract.LOGITS_OUTPUT, "TYPE_FP32", "-1")  # [num_labels]

TASKS: dict[str, Task] = {task.name: task for task in (
    Task(FILL_MASK, "masked-lm", (_TEXT,),
         (Output(contract.TOKENS_OUTPUT, "TYPE_STRING", "-1, -1"),  # [num_masks, top_k]
          Output(contract.TOKEN_IDS_OUTPUT, "TYPE_INT64", "-1, -1"),
          Output(contract.SCORES_OUTPUT, "TYPE_FP32", "-1, -1")),
         ("top_k", "truncation", "truncation_direction"), "serve.backend:ServedModel", default=True,
         health_text="health {mask} check"),
    Task(EMBED, "encoder", (_TEXT,), (Output(contract.EMBEDDING_OUTPUT, "TYPE_FP32", "-1"),),  # [hidden]
         ("truncation", "truncation_direction", "prompt_name", "dimensions", "normalize", "token_ids"),
         "serve.backend:ServedModel", default=True),
    Task(RERANK, "sequence-classification", (_TEXT, Input(contract.TEXT_PAIR_INPUT)), (_LOGITS,),  # query, document
         ("truncation",), "serve.pair_backend:PairServedModel", pair=True),
    Task(CLASSIFY, "sequence-classification", (_TEXT, Input(contract.TEXT_PAIR_INPUT, optional=True)), (_LOGITS,),
         ("truncation",), "serve.pair_backend:PairServedModel", pair=True),
    Task(EMBED_SPARSE, "masked-lm", (_TEXT,),
         (Output(contract.SPARSE_INDICES_OUTPUT, "TYPE_INT64", "-1"),  # [non_zeros]
          Output(contract.SPARSE_VALUES_OUTPUT, "TYPE_FP32", "-1")),
         ("truncation", "truncation_direction"), "serve.sparse_backend:SparseServedModel"),
)}
DEFAULT_TASKS = tuple(name for name, task in TASKS.items() if task.default)  # fill_mask, embed: what a repo holds by default
PAIR_TASKS = tuple(name for name, task in TASKS.items() if task.pair)  # rerank, classify


def task(name: str) -> Task:
    """The registered task `name`; a clear error naming the others."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; tasks are {', '.join(TASKS)}") from None
