"""Latency of the exported variants vs PyTorch eager fp32, same model, same process, interleaved runs.

    python -m bench.export_latency --model runs/demo/model [--rounds 30] [--json bench/results/export_latency.json]
    python -m bench.export_latency --build-mini /tmp/mini   # random 4-layer, 256-hidden, 16k-vocab BERT, then bench it

Shapes: batch 1 x 32 tokens and batch 8 x 128 tokens of random ordinary tokens, 15% of them the model's own
mask token ([MASK], <mask>, ...: read from its tokenizer). For fill-mask the PyTorch baseline is the
*ForMaskedLM forward (logits at every position) followed by gather/softmax/top-k at the masks; a second
baseline runs PyTorch with the head only at the masks ("torch masked head"), so the graph-level gain and the
kernel-level gain can be told apart. Each round runs every contestant once, in rotating order; we report medians.
The JSON goes through `bench.report.write_results` (with provenance). Imports torch only inside `run`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bertforge.pooling import pool
from bertforge.tasks import FILL_MASK

SHAPES = ((1, 32), (8, 128))
MASK_RATE = 0.15
# --build-mini's model (BertConfig keys): the earlier demo's size, big enough for the GEMMs to dominate
MINI_BERT = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
             "max_position_embeddings": 128}


def run(model_dir: Path, rounds: int = 30, threads: int | None = None, json_path: Path | None = None) -> dict:
    """Build every variant (gated numbers kept in the report), time them side by side, return the results."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    from bench.report import provenance, write_results
    from export.config import ExportConfig
    from export.exporter import build_checked_variants
    from export.families import encoder_of, mlm_head

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    results: dict = {"model": str(model_dir), "threads": threads, "rounds": rounds, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="bertforge-bench-") as scratch:
        config = ExportConfig(model=Path(model_dir), repo=None, output=Path(scratch) / "unused",
                              precision="fp32,int8,int8-static", progress=False)
        built, report = build_checked_variants(config, Path(scratch), plain=False)
        results["parity"] = {name: {p: {k: v for k, v in variant.parity.items() if not k.endswith("by_source")}
                                    for p, variant in target.variants.items()}
                             for name, target in report.tasks.items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # no spin-waiting after a run: it would steal the cores from the next (interleaved) contestant
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {}
        for task in built:
            unfused = Path(scratch) / task / "model.fp32.onnx"
            sessions[task] = {"ORT fp32 (unfused)": ort.InferenceSession(str(unfused), options, providers=["CPUExecutionProvider"])}
            for precision, path in built[task].items():
                sessions[task][f"ORT {precision} (fused)"] = ort.InferenceSession(str(path), options,
                                                                                 providers=["CPUExecutionProvider"])
        has_head = FILL_MASK in built
        mlm = AutoModelForMaskedLM.from_pretrained(model_dir).eval() if has_head else None
        encoder = encoder_of(mlm) if has_head else AutoModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
        head = mlm_head(mlm)[1] if has_head else None  # the author's head: hidden (M, H) -> logits (M, V)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        rng = np.random.default_rng(0)
        for batch, length in SHAPES:
            length = min(length, encoder.config.max_position_embeddings)
            feeds = random_inputs(rng, batch, length, tokenizer, encoder.config.vocab_size)
            shape_key = f"b{batch}x{length}"
            results["shapes"][shape_key] = {}
            for task in built:
                contestants = _torch_contestants(task, mlm, encoder, head, feeds, torch)
                for name, session in sessions[task].items():
                    contestants[name] = _onnx_runner(session, feeds)
                results["shapes"][shape_key][task] = _time_interleaved(contestants, rounds)
    _print(results)
    if json_path:
        write_results(provenance({"model": str(model_dir), "rounds": rounds, "threads": threads}) | results, json_path,
                      plots=False)
    return results


def _onnx_runner(session, feeds: dict):
    names = {i.name for i in session.get_inputs()}
    session_feeds = {name: value for name, value in feeds.items() if name in names}
    return lambda: session.run(None, session_feeds)


def _torch_contestants(task: str, mlm, encoder, head, feeds: dict, torch) -> dict:
    inputs = {name: torch.from_numpy(feeds[name]) for name in ("input_ids", "attention_mask", "token_type_ids")
              if name in feeds}
    positions = torch.from_numpy(feeds["mask_positions"])

    def full_head():
        with torch.inference_mode():
            logits = mlm(**inputs).logits  # (B, T, V)
            return torch.softmax(logits.reshape(-1, logits.shape[-1])[positions], -1).topk(50)

    def masked_head():
        with torch.inference_mode():
            hidden = encoder(**inputs).last_hidden_state
            picked = hidden.reshape(-1, hidden.shape[-1])[positions]  # (M, H)
            return torch.softmax(head(picked), -1).topk(50)

    def embed():
        with torch.inference_mode():
            hidden = encoder(**inputs).last_hidden_state  # (B, T, H)
            return pool(hidden, inputs["attention_mask"], "mean")  # (B, H)

    if task == FILL_MASK:
        return {"torch eager fp32": full_head, "torch eager fp32 (masked head)": masked_head}
    return {"torch eager fp32": embed}


def _time_interleaved(contestants: dict, rounds: int) -> dict:
    names = list(contestants)
    for name in names:  # warm-up
        for _ in range(3):
            contestants[name]()
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            start = time.perf_counter()
            contestants[name]()
            timings[name].append(time.perf_counter() - start)
    baseline = statistics.median(timings["torch eager fp32"])
    return {name: {"median_ms": round(statistics.median(times) * 1e3, 3),
                   "speedup_vs_torch": round(baseline / statistics.median(times), 2)} for name, times in timings.items()}


def random_inputs(rng, batch: int, length: int, tokenizer, vocab_size: int) -> dict:
    """Feeds of `batch` texts of `length` random ordinary tokens between the tokenizer's own start and end
    tokens ([CLS]/[SEP], <s>/</s>), about MASK_RATE of them (and always the first) its mask token; with
    `mask_positions` (flat indices of the masks) and token_type_ids only where the tokenizer has them."""
    import numpy as np

    special = set(tokenizer.all_special_ids)
    ordinary = np.array([index for index in range(vocab_size) if index not in special], dtype=np.int64)
    input_ids = rng.choice(ordinary, size=(batch, length))  # (B, T)
    input_ids[:, 0], input_ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    masked = rng.random((batch, length)) < MASK_RATE
    masked[:, 0] = masked[:, -1] = False
    masked[:, 1] = True
    input_ids[masked] = tokenizer.mask_token_id
    feeds = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids),
             "mask_positions": np.flatnonzero(masked).astype(np.int64)}
    if "token_type_ids" in tokenizer.model_input_names:
        feeds["token_type_ids"] = np.zeros_like(input_ids)
    return feeds


def _print(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"export latency, {results['threads']} threads, median of {results['rounds']} interleaved rounds")
    for column in ("shape", "task", "contestant", "median ms", "× vs torch eager"):
        table.add_column(column)
    for shape, tasks in results["shapes"].items():
        for task, rows in tasks.items():
            for name, row in rows.items():
                table.add_row(shape, task, name, f"{row['median_ms']:.2f}", f"{row['speedup_vs_torch']:.2f}")
    Console().print(table)
    for name, variants in results.get("parity", {}).items():
        for precision, metrics in variants.items():
            value = metrics.get("top1_agreement", metrics.get("min_cosine"))
            print(f"parity {name} {precision}: {'top-1' if 'top1_agreement' in metrics else 'min cosine'} {value:.4f}")


def build_mini_model(folder: Path, vocab_size: int = 16384) -> Path:
    """A random mini BERT (4 layers, hidden 256, 16k WordPiece vocab) for benchmarking."""
    from bertforge.testing import build_tiny_bert
    from export.config import ExportConfig
    from export.texts import calibration_texts
    from train.tokenizer import train_wordpiece_tokenizer

    texts = calibration_texts(ExportConfig(calibration_samples=3000))
    train_wordpiece_tokenizer(texts, folder, vocab_size=vocab_size, model_max_length=128)
    return build_tiny_bert(folder, folder, **MINI_BERT)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.export_latency` (the same flags as `bertforge bench export`)."""
    from bertforge.cli_options import module_main

    return module_main("python -m bench.export_latency", __doc__.split("\n")[0], add_arguments, run_command, argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's flags (`bertforge bench export` registers them as a subcommand)."""
    parser.add_argument("--model", default=None, help="Hugging Face BERT folder")
    parser.add_argument("--build-mini", default=None, metavar="DIR", help="build a random mini BERT here and bench it")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default="bench/results/export_latency.json")


def run_command(args: argparse.Namespace) -> int:
    """Bench --model, or a random mini BERT built at --build-mini; the JSON report goes to --json."""
    from bertforge.errors import UserError

    if not args.model and not args.build_mini:  # checked before the mini model is built
        raise UserError("give --model DIR or --build-mini DIR")
    model = build_mini_model(Path(args.build_mini)) if args.build_mini else Path(args.model)
    run(model, rounds=args.rounds, threads=args.threads, json_path=Path(args.json) if args.json else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
