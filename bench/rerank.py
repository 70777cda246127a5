"""Served rerank vs in-process sentence-transformers CrossEncoder.predict, side by side in one run; and
(--idle-models) what idle rerank/classify/embed_sparse models beside fill_mask and embed cost embed's throughput.

    python -m bench.rerank [--layers 6] [--hidden 384] [--documents 20] [--clients 16] [--seconds 8] [--rounds 2]
    python -m bench.rerank --idle-models [--clients 16] [--seconds 8] [--rounds 2]

A random-weight BertForSequenceClassification (one label; MiniLM's shape by default) with a WordPiece tokenizer
trained on the gate texts is exported by `bertforge export` (fp32) and served by a real tritonserver; 16 asyncio
clients each rerank one query against 20 documents at a time (one Triton request per pair). The baseline is
CrossEncoder.predict on the same query/document lists in this process, same cores. Rounds alternate A/B so
a change of load on a shared machine hits both; the table gives each round and the median ratio.
--idle-models: two tritonservers side by side, one serving fill_mask + embed of a mini BERT (4 layers/256), the
other the same plus three idle models (a rerank and a classify of --layers/--hidden, embed_sparse); embed is
loaded by the clients on each in turn (the other server idles).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--layers", 6), ("--hidden", 384), ("--documents", 20), ("--clients", 16), ("--rounds", 2)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--model", default=None, help="a cross-encoder folder (one-label *ForSequenceClassification) "
                        "to serve instead of the random-weight one; exported with --precision")
    parser.add_argument("--precision", default=None, help="export precision (default: fp32 for the random model, "
                        "auto for --model)")
    parser.add_argument("--idle-models", action="store_true", help="measure idle extra models' cost on embed")
    args = parser.parse_args()
    if args.idle_models:
        return idle_models(args)
    with tempfile.TemporaryDirectory(prefix="bertforge-bench-rerank-") as scratch:
        folder = Path(args.model) if args.model else build_cross_encoder(Path(scratch) / "model", args.layers, args.hidden)
        queries, documents = query_lists(args.documents)
        from bertforge.tasks import RERANK
        from export import export_to_repository
        from serve.stack import local_config, running_stack

        precision = args.precision or ("auto" if args.model else "fp32")
        report = export_to_repository(folder, Path(scratch) / "repo", precision=precision, progress=False)
        served, _ = report.target.served  # a task model's report (export/report.py)
        reason = report.target.chosen.reason if report.target.chosen else "as asked"
        print(f"[bench] {report.task or RERANK}: serving {served} ({reason})")
        results = {"in-process CrossEncoder.predict": [], f"served, {args.clients} clients": []}
        with running_stack(local_config(Path(scratch) / "repo")) as served:
            for _ in range(args.rounds):
                results["in-process CrossEncoder.predict"].append(in_process(folder, queries, documents, args.seconds))
                results[f"served, {args.clients} clients"].append(asyncio.run(
                    served_rate(served.grpc_url, queries, documents, args.clients, args.seconds)))
    for name, rates in results.items():
        print(f"{name:36s} pairs/s per round {', '.join(f'{rate:.0f}' for rate in rates)}  median "
              f"{statistics.median(rates):.0f}")
    served_rates, local_rates = list(results.values())[1], list(results.values())[0]
    print(f"served / in-process (per round): "
          f"{', '.join(f'{s / b:.2f}' for s, b in zip(served_rates, local_rates))}")


def idle_models(args: argparse.Namespace) -> None:
    from contextlib import ExitStack

    from bench.export_latency import build_mini_model
    from bertforge.tasks import EMBED_SPARSE
    from export import export_to_repository
    from export.texts import built_in_texts
    from serve.stack import local_config, running_stack

    with tempfile.TemporaryDirectory(prefix="bertforge-bench-idle-") as scratch, ExitStack() as stack:
        scratch = Path(scratch)
        mlm = build_mini_model(scratch / "mlm")
        cross_encoder = build_cross_encoder(scratch / "cross_encoder", args.layers, args.hidden)
        classifier = build_cross_encoder(scratch / "classifier", args.layers, args.hidden, num_labels=3)
        for repo in ("two", "five"):
            export_to_repository(mlm, scratch / repo, precision="fp32", progress=False)
        export_to_repository(cross_encoder, scratch / "five", precision="fp32", progress=False)
        export_to_repository(classifier, scratch / "five", precision="fp32", progress=False)
        export_to_repository(mlm, scratch / "five", precision="fp32", tasks=(EMBED_SPARSE,), progress=False)
        servers = {name: stack.enter_context(running_stack(local_config(scratch / name))) for name in ("two", "five")}
        texts = [" ".join(text.split()[:40]) for text in built_in_texts()[:256]]
        rates: dict[str, list[float]] = {"fill_mask + embed": [], "+ 3 idle models": []}
        for _ in range(args.rounds):
            for label, name in zip(rates, servers):
                rates[label].append(asyncio.run(embed_rate(servers[name].grpc_url, texts, args.clients, args.seconds)))
    for label, values in rates.items():
        print(f"embed texts/s, {label:18s} per round {', '.join(f'{v:.0f}' for v in values)}  median "
              f"{statistics.median(values):.0f}")
    first, second = rates.values()
    print(f"with idle models / without (per round): {', '.join(f'{b / a:.2f}' for a, b in zip(first, second))}")


async def embed_rate(url: str, texts: list[str], clients: int, seconds: float) -> float:
    from serve.client import AsyncBertforgeClient

    async with AsyncBertforgeClient(url, timeout_s=60, max_in_flight=clients) as client:
        await client.embed(texts[:4])  # warm-up
        done, end = 0, time.perf_counter() + seconds

        async def one_client(offset: int) -> None:
            nonlocal done
            index = offset
            while time.perf_counter() < end:
                await client.embed(texts[index % len(texts)])
                done, index = done + 1, index + clients

        started = time.perf_counter()
        await asyncio.gather(*(one_client(offset) for offset in range(clients)))
        return done / (time.perf_counter() - started)


def build_cross_encoder(folder: Path, layers: int, hidden: int, num_labels: int = 1) -> Path:
    """A random BertForSequenceClassification of `layers` x `hidden` (MiniLM's shape by default), BERT's init,
    with an 8,192-token WordPiece tokenizer trained on the gate texts."""
    from bertforge.testing import build_classifier
    from export.texts import built_in_texts
    from train.tokenizer import train_wordpiece_tokenizer

    train_wordpiece_tokenizer(built_in_texts(), folder, vocab_size=8192, model_max_length=512)
    return build_classifier(folder, folder, num_labels, seed=0, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=hidden // 64, intermediate_size=4 * hidden,
                            max_position_embeddings=512, initializer_range=0.02)


def query_lists(documents_per_query: int) -> tuple[list[str], list[list[str]]]:
    from export.texts import built_in_texts

    texts = [text for text in built_in_texts() if len(text.split()) >= 30]
    queries = [" ".join(text.split()[:8]) for text in texts[:50]]
    passages = [" ".join(text.split()[:60]) for text in texts[50:]] or texts
    lists = [[passages[(q * 7 + d) % len(passages)] for d in range(documents_per_query)] for q in range(len(queries))]
    return queries, lists


def in_process(folder: Path, queries: list[str], documents: list[list[str]], seconds: float) -> float:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(torch.get_num_threads())
    model = CrossEncoder(str(folder), device="cpu")
    model.predict([(queries[0], d) for d in documents[0]], show_progress_bar=False)  # warm-up
    pairs, started, index = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        query = index % len(queries)
        model.predict([(queries[query], d) for d in documents[query]], show_progress_bar=False)
        pairs, index = pairs + len(documents[query]), index + 1
    return pairs / (time.perf_counter() - started)


async def served_rate(url: str, queries: list[str], documents: list[list[str]], clients: int, seconds: float) -> float:
    from serve.client import AsyncBertforgeClient

    # every pair of every client may be in flight at once, as 16 separate clients would send them
    async with AsyncBertforgeClient(url, timeout_s=60, max_in_flight=clients * len(documents[0])) as client:
        await client.rerank(queries[0], documents[0])  # warm-up
        pairs = 0
        end = time.perf_counter() + seconds

        async def one_client(offset: int) -> None:
            nonlocal pairs
            index = offset
            while time.perf_counter() < end:
                query = index % len(queries)
                await client.rerank(queries[query], documents[query])
                pairs, index = pairs + len(documents[query]), index + clients

        started = time.perf_counter()
        await asyncio.gather(*(one_client(offset) for offset in range(clients)))
        return pairs / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
