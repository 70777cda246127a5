"""One prepared GPU check: BERT pretraining throughput/MFU and encoder inference on an NVIDIA GPU.

    python bench/gpu_check.py            # on a CUDA machine: finishes in a few minutes, prints a table
    python bench/gpu_check.py --dry-run  # anywhere: tiny sizes on CPU, same code paths (the test suite runs it)

Rows: BERT-base (12L/768H, vocab 30522) pretraining at sequence 128 in bf16 with the sparse MLM head
on/off, eager and torch.compile (tokens/s, MFU against the GPU's dense bf16 peak); encoder inference
latency at batch 1 x 128 and throughput at batch 64 x 128 in fp16 and bf16 through PyTorch, and through
ONNX Runtime's CUDA execution provider when it is installed. Timing uses CUDA events after warm-up,
median of repeats, on fresh random token ids (never zeros). Writes JSON next to the table with --output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a plain script on the GPU host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (checks the code paths only)")
    parser.add_argument("--train-steps", type=int, default=20, help="timed optimizer steps per training row")
    parser.add_argument("--batch-size", type=int, default=128, help="training sequences per step")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--output", default="", help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    import torch

    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        print("no CUDA device: run with --dry-run to check the code paths on CPU", file=sys.stderr)
        return 2
    sizes = SIZES["dry"] if args.dry_run else SIZES["base"]
    steps = 2 if args.dry_run else args.train_steps
    batch = 4 if args.dry_run else args.batch_size
    rows = [environment_row(device)]

    # Pretraining throughput: sparse head on/off, eager and compiled
    for compiled in (False, True):
        if compiled and args.skip_compile:
            continue
        for sparse in (True, False):
            rows.append(train_row(sizes, device, batch, steps, sparse=sparse, compiled=compiled))
    # Encoder inference: PyTorch fp16/bf16 (fp32 on CPU dry runs), then ONNX Runtime CUDA EP if present
    for dtype_name in (("fp32",) if device.type == "cpu" else ("fp16", "bf16")):
        rows += inference_rows(sizes, device, dtype_name, dry=args.dry_run)
    rows += onnxruntime_rows(sizes, device, dry=args.dry_run)

    print_table(rows)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))
    return 0


SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab=30522, seq=128),
    "dry": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab=500, seq=32),
}


def environment_row(device) -> dict:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"row": "environment", "device": name, "torch": torch.__version__}


def build(sizes: dict, device):
    from train.config import ModelConfig
    from train.model import build_model

    config = ModelConfig(hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["num_hidden_layers"],
                         num_attention_heads=sizes["num_attention_heads"], intermediate_size=sizes["intermediate_size"],
                         max_position_embeddings=512)
    return build_model(config, sizes["vocab"], pad_token_id=0).to(device)


def random_batch(sizes: dict, batch: int, device, generator):
    import torch

    inputs = torch.randint(5, sizes["vocab"], (batch, sizes["seq"]), generator=generator).to(device)
    labels = torch.full_like(inputs, -100)
    chosen = torch.rand(inputs.shape, generator=generator).to(device) < 0.15
    labels[chosen] = inputs[chosen]
    return inputs, labels


def train_row(sizes: dict, device, batch: int, steps: int, sparse: bool, compiled: bool) -> dict:
    """Tokens/s and MFU of our training step (AdamW fused on CUDA, bf16 autocast)."""
    import torch

    from train.config import OptimConfig
    from train.model import MaskedLMObjective, flops_per_token, peak_flops
    from train.optim import build_optimizer

    torch.manual_seed(0)
    model = build(sizes, device)
    objective = MaskedLMObjective(model, sparse_head=sparse, compile_encoder=compiled)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4), device)
    generator = torch.Generator().manual_seed(1)
    batches = [random_batch(sizes, batch, device, generator) for _ in range(4)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step(inputs, labels):
        with autocast:
            loss_sum, count, _ = objective(inputs, labels)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum

    started = time.perf_counter()
    for index in range(3):  # warm-up (and compilation)
        step(*batches[index % len(batches)])
    _sync(device)
    warmup_s = time.perf_counter() - started
    seconds = _time(device, lambda: [step(*batches[i % len(batches)]) for i in range(steps)])
    tokens_per_s = steps * batch * sizes["seq"] / seconds
    peak = peak_flops(device)
    mfu = flops_per_token(model, sizes["seq"], 0.15, sparse) * tokens_per_s / peak if peak else None
    precision = "bf16" if device.type == "cuda" else "fp32"
    return {"row": f"train {precision} {'compiled' if compiled else 'eager'} {'sparse' if sparse else 'dense'} head",
            "tokens_per_s": tokens_per_s, "mfu": mfu, "step_ms": 1000 * seconds / steps, "warmup_s": warmup_s}


def inference_rows(sizes: dict, device, dtype_name: str, dry: bool) -> list[dict]:
    """Encoder (BertModel) forward: latency at batch 1 x seq, throughput at batch 64 x seq."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    encoder = build(sizes, device).bert.to(dtype).eval()
    generator = torch.Generator().manual_seed(2)
    rows = []
    for batch, label in ((1, "latency"), (4 if dry else 64, "throughput")):
        inputs = [torch.randint(5, sizes["vocab"], (batch, sizes["seq"]), generator=generator).to(device) for _ in range(4)]
        with torch.inference_mode():
            for tensor in inputs:
                encoder(input_ids=tensor)
            samples = [_time(device, lambda t=t: encoder(input_ids=t)) for t in inputs * (2 if dry else 10)]
        median = statistics.median(samples)
        rows.append({"row": f"infer pytorch {dtype_name} b{batch}x{sizes['seq']}", "median_ms": 1000 * median,
                     "sequences_per_s": batch / median, "kind": label})
    return rows


def onnxruntime_rows(sizes: dict, device, dry: bool) -> list[dict]:
    """The same encoder through ONNX Runtime (CUDA EP on a GPU; CPU EP in dry runs), fp32 graph."""
    try:
        import onnxruntime
    except ImportError:
        return [{"row": "infer onnxruntime", "skipped": "onnxruntime not installed"}]
    provider = "CPUExecutionProvider" if device.type == "cpu" else "CUDAExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        return [{"row": "infer onnxruntime", "skipped": f"{provider} not available"}]
    import tempfile

    import numpy as np
    import torch

    encoder = build(sizes, "cpu").bert.eval()
    path = Path(tempfile.mkdtemp()) / "encoder.onnx"
    example = torch.randint(5, sizes["vocab"], (1, sizes["seq"]))
    torch.onnx.export(encoder, (example,), str(path), input_names=["input_ids"], output_names=["hidden"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}}, opset_version=17, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=[provider])
    rng = np.random.default_rng(3)
    rows = []
    for batch in (1, 4 if dry else 64):
        feeds = [{"input_ids": rng.integers(5, sizes["vocab"], (batch, sizes["seq"]), dtype=np.int64)} for _ in range(4)]
        for feed in feeds:
            session.run(None, feed)
        samples = []
        for feed in feeds * (2 if dry else 10):
            started = time.perf_counter()
            session.run(None, feed)  # returns host arrays: synchronous
            samples.append(time.perf_counter() - started)
        median = statistics.median(samples)
        rows.append({"row": f"infer onnxruntime fp32 b{batch}x{sizes['seq']}", "median_ms": 1000 * median,
                     "sequences_per_s": batch / median})
    return rows


def print_table(rows: list[dict]) -> None:
    env = rows[0]
    print(f"\nGPU check on {env['device']} (torch {env['torch']})")
    print(f"{'row':44} {'tokens/s':>12} {'MFU':>7} {'median ms':>10} {'seq/s':>10}")
    for row in rows[1:]:
        if "skipped" in row:
            print(f"{row['row']:44} skipped: {row['skipped']}")
            continue
        tokens = f"{row['tokens_per_s']:,.0f}" if "tokens_per_s" in row else ""
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else ""
        median = f"{row.get('median_ms', row.get('step_ms')):.2f}"
        sequences = f"{row['sequences_per_s']:,.0f}" if "sequences_per_s" in row else ""
        print(f"{row['row']:44} {tokens:>12} {mfu:>7} {median:>10} {sequences:>10}")


def _time(device, work) -> float:
    """Seconds for `work()`: CUDA events on a GPU, perf_counter on CPU."""
    import torch

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    raise SystemExit(main())
