"""One prepared GPU check: BERT pretraining throughput/MFU and encoder inference on an NVIDIA GPU.

    python bench/gpu_check.py            # on a CUDA machine: finishes in a few minutes, prints a table
    python bench/gpu_check.py --dry-run  # anywhere: tiny sizes on CPU, same code paths (the test suite runs it)

Rows: this run's own matmul peak (bf16 8192^3); BERT-base (12L/768H, vocab 30522) pretraining at
sequence 128 in bf16 with the sparse MLM head on/off, eager and torch.compile, at --batch-size (256
for an H200), then two levers on the compiled sparse step: twice the batch, and the vocabulary padded
to a multiple of 64; ModernBERT-base (22L/768H, GeGLU, RoPE, vocab 32768) eager and compiled with the sparse
head at 30 % masking (tokens/s, MFU against the datasheet dense bf16 peak and against the measured
matmul peak; model FLOPs count the unpadded vocabulary). Every training row runs the trainer's own step
(train/step.py `train_step` on `TrainingParts`, bf16 autocast, fused AdamW); encoder inference
latency at batch 1 x 128 and throughput at batch 64 x 128 in fp16 and bf16 through PyTorch, and through
ONNX Runtime's CUDA execution provider when it is installed. Timing uses CUDA events after warm-up,
median of repeats, on fresh random token ids (never zeros). With --output, also writes the rows as JSON
(`rows`, beside bench/report.py's provenance), rewritten after every row.
A row that fails (out of memory, a compile error) is written as an error row and the exit status is 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bertforge import contract

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a plain script on the GPU host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (checks the code paths only)")
    parser.add_argument("--train-steps", type=int, default=20, help="timed optimizer steps per training row")
    parser.add_argument("--batch-size", type=int, default=256, help="training sequences per step (H200: 256; "
                        "the batch lever row doubles it)")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--output", default="", help="also write the rows as JSON here ({'rows': [...]} with "
                        "provenance)")
    args = parser.parse_args(argv)

    import torch

    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        print("no CUDA device: run with --dry-run to check the code paths on CPU", file=sys.stderr)
        return 2
    sizes = SIZES["dry"] if args.dry_run else SIZES["base"]
    steps = 2 if args.dry_run else args.train_steps
    batch = 4 if args.dry_run else args.batch_size
    rows = _Rows(args.output, args)  # written after every row: a run cut short by its time limit keeps what it measured
    rows += [environment_row(device), matmul_peak_row(device, dry=args.dry_run)]
    measured_peak = rows[1].get("flops_per_s")

    # Pretraining throughput: sparse head on/off, eager and compiled
    plans = [dict(sizes=sizes, batch=batch, sparse=sparse, compiled=compiled)
             for compiled in ((False,) if args.skip_compile else (False, True)) for sparse in (True, False)]
    # Levers on the best step (compiled, sparse head): a doubled batch; the vocabulary padded to a multiple of 64
    best = plans[-2]
    plans.append({**best, "batch": 2 * batch})
    plans.append({**best, "sizes": {**sizes, "vocab": padded_vocab(sizes["vocab"])}})
    # ModernBERT-base, the new recipe's shape: eager and compiled, sparse head at its 30 % masking
    modern = SIZES["dry-modernbert" if args.dry_run else "modernbert-base"]
    plans += [dict(sizes=modern, batch=batch, sparse=True, compiled=compiled)
              for compiled in ((False,) if args.skip_compile else (False, True))]
    for plan in plans:
        rows.append(_guarded(f"train {plan}", lambda plan=plan: train_row(
            plan["sizes"], device, plan["batch"], steps, sparse=plan["sparse"], compiled=plan["compiled"],
            measured_peak=measured_peak, base_vocab=plan["sizes"]["vocab"] if plan["sizes"] is modern else sizes["vocab"])))
    # Encoder inference: PyTorch fp16/bf16 (fp32 on CPU dry runs), then ONNX Runtime CUDA EP if present
    for dtype_name in (("fp32",) if device.type == "cpu" else ("fp16", "bf16")):
        rows += _guarded(f"infer {dtype_name}", lambda name=dtype_name: inference_rows(sizes, device, name, dry=args.dry_run),
                         many=True)
    rows += _guarded("infer onnxruntime", lambda: onnxruntime_rows(sizes, device, dry=args.dry_run), many=True)

    print_table(rows)
    failed = [row["row"] for row in rows if "error" in row]
    if failed:
        print(f"rows that failed (error in their JSON row): {failed}", file=sys.stderr)
    return 1 if failed else 0


SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab=30522, seq=128),
    "dry": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab=500, seq=32),
    "modernbert-base": dict(family="modernbert", hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                            intermediate_size=1152, vocab=32768, seq=128, mask_prob=0.3, global_attention_every=3),
    "dry-modernbert": dict(family="modernbert", hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                           intermediate_size=96, vocab=500, seq=32, mask_prob=0.3, global_attention_every=3),
}


def environment_row(device) -> dict:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"row": "environment", "device": name, "torch": torch.__version__}


def matmul_peak_row(device, dry: bool) -> dict:
    """The machine's own dense peak, measured in this run: bf16 8192^3 matmul on a GPU (fp32 256^3 in dry runs)."""
    import torch

    size, dtype = (256, torch.float32) if dry else (8192, torch.bfloat16)
    left = torch.randn(size, size, device=device, dtype=dtype)
    right = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        left @ right
    _sync(device)
    repeats = 3 if dry else 20
    seconds = _time(device, lambda: [left @ right for _ in range(repeats)]) / repeats
    return {"row": f"matmul {'fp32' if dry else 'bf16'} {size}^3", "flops_per_s": 2 * size**3 / seconds,
            "median_ms": 1000 * seconds}


def padded_vocab(vocab: int, multiple: int = 64) -> int:
    return -(-vocab // multiple) * multiple


def model_config(sizes: dict):
    from train.config import ModelConfig

    family = sizes.get("family", "bert")
    return ModelConfig(family=family, init="bert", hidden_size=sizes["hidden_size"],
                       num_hidden_layers=sizes["num_hidden_layers"], num_attention_heads=sizes["num_attention_heads"],
                       intermediate_size=sizes["intermediate_size"], max_position_embeddings=512,
                       global_attention_every=sizes.get("global_attention_every", 1),
                       hidden_dropout_prob=0.0 if family == "modernbert" else 0.1,
                       attention_probs_dropout_prob=0.0 if family == "modernbert" else 0.1)


def build(sizes: dict, device):
    from train.model import build_model

    return build_model(model_config(sizes), sizes["vocab"], pad_token_id=0).to(device)


def random_batch(sizes: dict, batch: int, device, generator):
    import torch

    inputs = torch.randint(5, sizes["vocab"], (batch, sizes["seq"]), generator=generator).to(device)
    labels = torch.full_like(inputs, contract.IGNORE_INDEX)
    chosen = torch.rand(inputs.shape, generator=generator).to(device) < sizes.get("mask_prob", 0.15)
    labels[chosen] = inputs[chosen]
    return inputs, labels


def train_row(sizes: dict, device, batch: int, steps: int, sparse: bool, compiled: bool,
              measured_peak: float | None = None, base_vocab: int | None = None) -> dict:
    """Tokens/s and MFU of the trainer's own step (train/step.py: AdamW fused on CUDA, bf16 autocast)."""
    import torch

    from train.config import LoopConfig, OptimConfig, TrainConfig
    from train.model import flops_per_token, peak_flops
    from train.runtime import TrainingRuntime
    from train.step import TrainingParts, train_step

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runtime = TrainingRuntime(device=device, precision="bf16" if device.type == "cuda" else "fp32")
    config = TrainConfig(model=model_config(sizes), optim=OptimConfig(lr=1e-4),
                         train=LoopConfig(batch_size=batch, sparse_head=sparse, compile=compiled))
    parts = TrainingParts.build(config, build(sizes, device), runtime)
    generator = torch.Generator().manual_seed(1)
    batches = [random_batch(sizes, batch, device, generator) for _ in range(4)]

    def step(index: int) -> None:
        train_step(parts, [batches[index % len(batches)]], 1e-4, config.optim.grad_clip, runtime)

    started = time.perf_counter()
    for index in range(3):  # warm-up (and compilation)
        step(index)
    _sync(device)
    warmup_s = time.perf_counter() - started
    seconds = _time(device, lambda: [step(i) for i in range(steps)])
    tokens_per_s = steps * batch * sizes["seq"] / seconds
    peak = peak_flops(device)
    # Model FLOPs of the unpadded model (padding rows are not useful work), over the datasheet and the measured peak
    unpadded = _with_vocab(parts.mlm.config, base_vocab or sizes["vocab"])
    model_flops = flops_per_token(unpadded, sizes["seq"], sizes.get("mask_prob", 0.15), sparse) * tokens_per_s
    precision = "bf16" if device.type == "cuda" else "fp32"
    family = sizes.get("family", "bert")
    name = (f"train {family} {precision} {'compiled' if compiled else 'eager'} {'sparse' if sparse else 'dense'} "
            f"head b{batch}")
    if base_vocab and base_vocab != sizes["vocab"]:
        name += f" vocab {sizes['vocab']}"
    return {"row": name, "tokens_per_s": tokens_per_s, "mfu": model_flops / peak if peak else None,
            "mfu_of_measured_peak": model_flops / measured_peak if measured_peak and device.type == "cuda" else None,
            "step_ms": 1000 * seconds / steps, "warmup_s": warmup_s, "batch": batch, "vocab": sizes["vocab"],
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


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

    encoder = _keyword_encoder(build(sizes, "cpu").bert.eval())
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


def _keyword_encoder(encoder):
    """input_ids -> last hidden state, passed by keyword: transformers 5 reorders BertModel.forward's
    positional arguments (use_cache), which the TorchScript tracer would otherwise bind wrongly."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids):
            return self.encoder(input_ids=input_ids, return_dict=False)[0]

    return HiddenStates()


def print_table(rows: list[dict]) -> None:
    env = rows[0]
    print(f"\nGPU check on {env['device']} (torch {env['torch']})")
    print(f"{'row':44} {'tokens/s':>12} {'MFU':>7} {'median ms':>10} {'seq/s':>10}")
    for row in rows[1:]:
        if "skipped" in row or "error" in row:
            print(f"{row['row']:44} {'skipped: ' + row['skipped'] if 'skipped' in row else 'ERROR: ' + row['error']}")
            continue
        if "flops_per_s" in row:
            print(f"{row['row']:44} {row['flops_per_s'] / 1e12:.1f} TFLOP/s (this run's peak)")
            continue
        tokens = f"{row['tokens_per_s']:,.0f}" if "tokens_per_s" in row else ""
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else ""
        median = f"{row.get('median_ms', row.get('step_ms')):.2f}"
        sequences = f"{row['sequences_per_s']:,.0f}" if "sequences_per_s" in row else ""
        print(f"{row['row']:44} {tokens:>12} {mfu:>7} {median:>10} {sequences:>10}")


class _Rows(list):
    """A list of rows that rewrites the --output JSON (bench.report.write_results) whenever rows are added."""

    def __init__(self, output: str, args: argparse.Namespace):
        from bench.report import arguments_config, provenance

        super().__init__()
        self.output = output
        self.provenance = provenance(arguments_config(args)) if output else {}

    def append(self, row) -> None:
        super().append(row)
        self._write()

    def __iadd__(self, rows):
        super().__iadd__(rows)
        self._write()
        return self

    def _write(self) -> None:
        from bench.report import write_results

        if self.output:
            write_results(self.provenance | {"rows": list(self)}, Path(self.output), plots=False)


def _with_vocab(config, vocab: int):
    """A stand-in with .config for flops_per_token at another vocabulary size."""
    import copy
    from types import SimpleNamespace

    other = copy.copy(config)
    other.vocab_size = vocab
    return SimpleNamespace(config=other)


def _guarded(name: str, work, many: bool = False):
    """Run one row (or row group); a failure (out of memory, a compile error) becomes an error row, so one
    unattended GPU run still reports every other row, and the exit status says something failed."""
    import torch

    try:
        return work()
    except Exception as error:  # noqa: BLE001 - recorded in the output and the exit status, not swallowed
        row = {"row": name, "error": f"{type(error).__name__}: {str(error)[:500]}"}
        print(f"[gpu_check] {name} failed: {row['error']}", file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return [row] if many else row


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
