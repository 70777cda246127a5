"""`bertforge client fill-mask|embed|classify TEXT...`, `bertforge client rerank QUERY DOC...`: query a running
server (never imports torch)."""

from __future__ import annotations

import argparse
import json

from bertforge import contract
from bertforge.tasks import CLASSIFY, EMBED, PAIR_TASKS, RERANK, TASKS

COMMANDS = {name.replace("_", "-"): name for name in TASKS}  # `bertforge client fill-mask` asks the fill_mask task


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "client", help=f"query a running server: {', '.join(COMMANDS)} (or health)",
        description="Send each TEXT as one request to a running `bertforge serve` (gRPC) and print the answers.")
    parser.add_argument("task", choices=[*COMMANDS, "health"],
                        help="what to ask the server")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts (fill-mask: with at least one [MASK]; rerank: "
                        "the query, then the documents)")
    parser.add_argument("--raw-scores", action="store_true", help="rerank: the cross-encoder's logits, not sigmoid")
    parser.add_argument("--model", default=None, help="the served model's name, where a task has several (default: the "
                        "task's)")
    parser.add_argument("--url", default=None, help="gRPC address HOST:PORT (default 127.0.0.1:8001)")
    parser.add_argument("--top-k", type=int, default=None, help="predictions per [MASK] (default 5)")
    parser.add_argument("--truncation", choices=contract.TRUNCATION_POLICIES, default=None,
                        help="texts longer than the model's maximum: cut them or fail (default: the model's setting)")
    parser.add_argument("--truncation-direction", choices=contract.TRUNCATION_DIRECTIONS, default=None,
                        help="which end of a too long text is cut (default right)")
    parser.add_argument("--prompt-name", default=None, metavar="NAME",
                        help="embed: one of the model's prompts put before each text (default: the model's default "
                             "prompt; '' = none)")
    parser.add_argument("--dimensions", type=int, default=None, metavar="N",
                        help="embed: keep the first N values (Matryoshka; re-normalised when the model normalises)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--retries", type=int, default=3, help="retries when the server is UNAVAILABLE (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bertforge import contract
    from bertforge.errors import UserError
    from serve.client import DEFAULT_URL, BertforgeClient, ServingError

    if args.task != "health" and not args.texts:
        raise UserError(f"client {args.task}: give at least one TEXT")
    if args.task == RERANK and len(args.texts) < 2:
        raise UserError("client rerank: give the QUERY and at least one DOCUMENT")
    with BertforgeClient(args.url or DEFAULT_URL, timeout_s=args.timeout, retries=args.retries) as client:
        try:
            if args.task == "health":
                return _print_health(client.health(), args.json)
            if args.task in PAIR_TASKS:
                _print_pairs(client, args)
            elif args.task == "fill-mask":
                top_k = args.top_k if args.top_k is not None else contract.DEFAULT_TOP_K
                _print_fill_mask(args.texts, client.fill_mask(args.texts, top_k, args.truncation), args.json)
            elif COMMANDS[args.task] == EMBED:
                vectors = client.embed(args.texts, args.truncation, prompt_name=args.prompt_name,
                                       dimensions=args.dimensions, truncation_direction=args.truncation_direction)
                _print_embed(args.texts, vectors, args.json)
            else:  # a task without a printer of its own: its output tensors (bertforge/tasks.py) as JSON
                task = COMMANDS[args.task]
                given = {"truncation": args.truncation, "truncation_direction": args.truncation_direction}
                parameters = {name: value for name, value in given.items() if name in TASKS[task].parameters}
                _print_outputs(args.texts, task, client.infer(args.model or task, args.texts, parameters))
        except ServingError as error:
            raise UserError(f"{error} (is `bertforge serve` running at {client.url}?)"
                            if error.status and "UNAVAILABLE" in str(error.status) else str(error)) from None
    return 0


def _print_fill_mask(texts: list[str], predictions: list, as_json: bool) -> None:
    if as_json:
        document = [{"text": text, "masks": [[vars(p) for p in mask] for mask in masks]}
                    for text, masks in zip(texts, predictions)]
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for text, masks in zip(texts, predictions):
        table = Table(title=text, title_justify="left")
        for column in ("mask", "rank", "token", "id", "probability"):
            table.add_column(column, justify="right" if column in ("rank", "id", "probability") else "left")
        for mask_index, mask in enumerate(masks):
            for rank, prediction in enumerate(mask, start=1):
                table.add_row(str(mask_index + 1) if rank == 1 else "", str(rank), prediction.token,
                              str(prediction.token_id), f"{prediction.score:.4f}")
        console.print(table)


def _print_pairs(client, args: argparse.Namespace) -> None:
    """rerank: the documents, most relevant first, with their score; classify: each text's logits."""

    if args.task == RERANK:
        query, documents = args.texts[0], args.texts[1:]
        scores = client.rerank(query, documents, args.truncation, raw_scores=args.raw_scores,
                               model=args.model or RERANK)
        ranked = sorted(range(len(documents)), key=lambda index: -scores[index])
        if args.json:
            print(json.dumps([{"index": index, "score": float(scores[index]), "text": documents[index]}
                              for index in ranked], ensure_ascii=False))
            return
        for rank, index in enumerate(ranked, start=1):
            print(f"{rank:>3}  {scores[index]:.4f}  [{index}] {documents[index]}")
        return
    logits = client.classify(args.texts, None, args.truncation, model=args.model or CLASSIFY)
    if args.json:
        print(json.dumps([{"text": text, "logits": row.tolist()} for text, row in zip(args.texts, logits)],
                         ensure_ascii=False))
        return
    for text, row in zip(args.texts, logits):
        print(f"{text}\n  logits [{', '.join(f'{value:+.4f}' for value in row)}]  best label index {int(row.argmax())}")


def _print_embed(texts: list[str], embeddings, as_json: bool) -> None:
    import numpy as np

    norms = np.linalg.norm(embeddings, axis=1)
    if as_json:
        document = [{"text": text, "dims": int(row.shape[0]), "norm": float(norm), "embedding": row.tolist()}
                    for text, row, norm in zip(texts, embeddings, norms)]
        print(json.dumps(document, ensure_ascii=False))
        return
    for text, row, norm in zip(texts, embeddings, norms):
        head = ", ".join(f"{value:+.4f}" for value in row[:4])
        print(f"{text}\n  dims {row.shape[0]}  L2 norm {norm:.4f}  [{head}, ...]")


def _print_outputs(texts: list[str], task: str, results: list) -> None:
    """Per text, each output tensor of the task (one request's, without the batch axis), strings decoded."""
    def plain(value):
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value

    document = [{"text": text, **{output.name: _mapped(plain, result.as_numpy(output.name)[0].tolist())
                                  for output in TASKS[task].outputs}} for text, result in zip(texts, results)]
    print(json.dumps(document, ensure_ascii=False))


def _mapped(function, value):
    return [_mapped(function, item) for item in value] if isinstance(value, list) else function(value)


def _print_health(health: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(health))
    else:
        models = ", ".join(f"{name}: {'ready' if ready else 'NOT ready'}" for name, ready in health["models"].items())
        print(f"live: {health['live']}  ready: {health['ready']}  {models}  {health.get('error', '')}".rstrip())
    return 0 if health["ready"] else 1
