"""In-process contenders on the same texts: ONNX Runtime on the exported graph, and plain PyTorch/transformers.

- `onnxruntime`: `serve.runtime.ModelRuntime` on the served model `<repo>/<task>` (same tokenizer, graph and
  post-processing as the server, without Triton or gRPC): one text at a time, and in batches.
- `pipeline`: fill_mask = `transformers.pipeline("fill-mask")`; embed = `AutoModel` + attention-mask mean
  pooling (`bertforge.pooling.pool`); one text at a time, and in batches. Needs the HF model folder.

Each warms up first (at least WARMUP_CALLS calls and `warmup_seconds`: PyTorch's first calls per new
sequence length are slow), then stops at max_requests texts or max_seconds. Latency is per call (per text
one at a time, per batch when batched). torch and transformers are imported only in here, inside functions.

The ONNX Runtime rows also say where each call's time goes (`phases_ms`, milliseconds per call): parse (decode
and check each request), tokenize, plan (the token-budget split), pad (the padded input tensors), onnxruntime
(`session.run`) and python (the rest: post-processing, loops), and how much of what ran was padding
(`padding_share`: padded positions that hold no real token). The runtime is timed from outside: its session
and its padding step are wrapped on the instance, so the server's code runs unchanged.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from bench.stats import point_figures
from bench.texts import RequestTexts
from bertforge.pooling import pool
from bertforge.served_model import ServedModelDir
from bertforge.tasks import FILL_MASK

WARMUP_CALLS = 3


def measure_onnxruntime(repo: Path, task: str, texts: RequestTexts, batch_size: int, max_requests: int,
                        max_seconds: float, top_k: int, warmup_seconds: float = 0.0,
                        flops: list[float] | None = None) -> list[dict]:
    """The served model's runtime in this process: [one-at-a-time point, batched point]."""
    from serve.runtime import load_runtime

    runtime = load_runtime(ServedModelDir.in_repo(repo, task).version_dir)
    timer = PhaseTimer(runtime)

    def run(batch: list[str]) -> None:
        with timer.phase("parse"):
            requests = [runtime.parse(text.encode("utf-8"), {"top_k": top_k} if task == FILL_MASK else {})
                        for text in batch]
        with timer.phase("tokenize"):
            errors = runtime.tokenize(requests)
        if any(errors):
            raise ValueError(f"in-process ONNX Runtime rejected a benchmark text: {next(e for e in errors if e)}")
        with timer.phase("plan"):
            groups = runtime.plan_batches(requests)
        for indices in groups:
            chunk = [requests[index] for index in indices]
            runtime.fill_mask(chunk) if task == FILL_MASK else runtime.embed(chunk)

    details = {"providers": list(runtime.providers), "threads": runtime.settings.intra_op_threads or "default"}
    points = []
    for size in (1, batch_size):
        timer.reset()
        point = _measure(f"onnxruntime_b{size}", timer.calls(run), texts, size, max_requests, max_seconds,
                         warmup_seconds, flops, on_measured=timer.reset)
        points.append(point | details | timer.summary())
    return points


class PhaseTimer:
    """Where the calls of an in-process runtime spend their time, per phase, measured from outside the runtime:
    `phase(name)` times a block; the runtime's `session.run` (onnxruntime) and `_encoder_feeds` (pad) are wrapped
    on the instance; `calls(run)` times whole calls, so `python` is what no phase covers."""

    TIMED = ("parse", "tokenize", "plan", "pad", "onnxruntime")

    def __init__(self, runtime) -> None:
        self.reset()
        session, feeds = runtime.session, runtime._encoder_feeds
        timer = self

        class TimedSession:
            def run(self, *args, **kwargs):
                with timer.phase("onnxruntime"):
                    return session.run(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(session, name)

        def timed_feeds(requests):
            with timer.phase("pad"):
                result = feeds(requests)
            mask = result.get("attention_mask")
            timer.padded += int(result["input_ids"].size)
            timer.real += int(mask.sum()) if mask is not None else int(result["input_ids"].size)
            timer.runs += 1
            return result

        runtime.session, runtime._encoder_feeds = TimedSession(), timed_feeds

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.TIMED, 0.0)
        self.total = 0.0
        self.count = self.runs = self.padded = self.real = 0

    @contextlib.contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def calls(self, run: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
        def timed(batch: list[str]) -> None:
            started = time.perf_counter()
            run(batch)
            self.total += time.perf_counter() - started
            self.count += 1
        return timed

    def summary(self) -> dict:
        """{phases_ms: per call, onnx_runs_per_call, padding_share} over the calls since the last reset."""
        if not self.count:
            return {}
        phases = {name: 1000 * seconds / self.count for name, seconds in self.seconds.items()}
        phases["python"] = max(0.0, 1000 * self.total / self.count - sum(phases.values()))
        return {"phases_ms": phases, "onnx_runs_per_call": self.runs / self.count,
                "padding_share": 1 - self.real / self.padded if self.padded else 0.0}


def measure_pipeline(model_dir: Path, task: str, texts: RequestTexts, batch_size: int, max_requests: int,
                     max_seconds: float, top_k: int, max_length: int, torch_threads: int = 0,
                     warmup_seconds: float = 0.0, flops: list[float] | None = None) -> list[dict]:
    """PyTorch fp32 eager in this process: [one-at-a-time point, batched point]."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)

    if task == FILL_MASK:
        from transformers import pipeline

        fill_mask = pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir), device=-1)
        arguments = {"top_k": top_k, "tokenizer_kwargs": {"truncation": True, "max_length": max_length}}

        def run(batch: list[str]) -> None:
            fill_mask(batch if len(batch) > 1 else batch[0], batch_size=len(batch), **arguments)

        name = "pipeline_fill_mask"
    else:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False).eval()

        @torch.inference_mode()
        def run(batch: list[str]) -> None:
            encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**encoded).last_hidden_state  # (B, T, H)
            pool(hidden, encoded["attention_mask"], "mean")  # (B, H)

        name = "pytorch_mean_pooling"
    details = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    return [_measure(f"{name}_b{size}", run, texts, size, max_requests, max_seconds, warmup_seconds, flops) | details
            for size in (1, batch_size)]


def _measure(contender: str, run: Callable[[list[str]], None], texts: RequestTexts, batch_size: int,
             max_requests: int, max_seconds: float, warmup_seconds: float, flops: list[float] | None = None,
             on_measured: Callable[[], None] | None = None) -> dict:
    """Call `run` on consecutive batches of the texts; figures count texts, latency is per call. `on_measured` is
    called once the warm-up is over (a phase timer starts counting there)."""
    # Warm-up on the other half of the texts (excluded)
    call, warmup_end = 0, time.perf_counter() + warmup_seconds
    while call < WARMUP_CALLS or time.perf_counter() < warmup_end:
        start = len(texts.texts) // 2 + call * batch_size
        run([texts.texts[(start + offset) % len(texts.texts)] for offset in range(batch_size)])
        call += 1
    if on_measured is not None:
        on_measured()
    latencies: list[float] = []
    tokens = done = 0
    work = 0.0
    started = time.perf_counter()
    while done < max_requests and time.perf_counter() - started < max_seconds:
        indices = [(done + offset) % len(texts.texts) for offset in range(batch_size)]
        begin = time.perf_counter()
        run([texts.texts[index] for index in indices])
        latencies.append(time.perf_counter() - begin)
        tokens += sum(texts.tokens[index] for index in indices)
        work += sum(flops[index] for index in indices) if flops else 0.0
        done += batch_size
    elapsed = time.perf_counter() - started
    figures = point_figures(latencies, tokens, 0, elapsed, work)
    figures["requests"] = done  # texts, not calls
    figures["requests_per_s"] = done / elapsed
    return figures | {"contender": contender, "concurrency": None, "batch_size": batch_size, "in_process": True,
                      "latency_unit": "text" if batch_size == 1 else f"batch of {batch_size}"}


GEMM_SIZE = 1024


def measure_gemm_peak(threads: int | None = None, seconds: float = 0.4) -> dict:
    """This machine's dense matrix-multiply rate now, on `threads` threads (default: every core), in G(FL)OP/s:
    `fp32` and `bf16` through PyTorch (oneDNN: AVX-512/AMX where the CPU has them), `int8` the fastest of
    PyTorch's int8 GEMM and ONNX Runtime's MatMulInteger (MLAS: VNNI/AMX where present), the kernel family that
    ORT's int8 graphs run, with u8 x s8 operands and with u8 x u8 (`onnxruntime_u8u8`: the kernel of u8-weight
    graphs, which cannot saturate where u8 x s8 sums do). A square 1024 product, repeated for `seconds`; the best
    of three windows.

    fp32 and int8 are also timed on one thread (`one_thread`), and the peak is the larger of the all-thread rate
    and `threads` times the one-thread rate: on cores shared with other work a multi-threaded product waits for
    its slowest thread, so the all-thread figure alone can fall below what single-thread contenders reach (bf16,
    emulated and slow on CPUs without it, is timed on all threads only)."""
    import os

    threads = threads or os.cpu_count() or 1
    peaks, int8 = _gemm_rates(threads, seconds, with_bf16=True)
    one_fp32, one_int8 = _gemm_rates(1, seconds, with_bf16=False) if threads > 1 else (peaks, int8)
    all_threads = {"fp32": peaks["fp32"], "int8": max(int8.values())}
    one_thread = {"fp32": one_fp32["fp32"], "int8": max(one_int8.values())}
    peaks |= {name: max(all_threads[name], threads * one_thread[name]) for name in all_threads}
    return {"threads": threads, "size": GEMM_SIZE, "gflops_per_s": peaks, "int8_by_library": int8,
            "all_threads": all_threads, "one_thread": one_thread}


def _gemm_rates(threads: int, seconds: float, with_bf16: bool) -> tuple[dict, dict]:
    """({fp32[, bf16]}, {int8 by library}) in G(FL)OP/s on `threads` threads."""
    import torch

    size = GEMM_SIZE
    ops = 2.0 * size ** 3
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rates = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))[:2 if with_bf16 else 1]:
            a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
            rates[name] = ops / _best_call_time(lambda a=a, b=b: a @ b, seconds) / 1e9
        a8, b8 = (torch.randint(-128, 128, (size, size), dtype=torch.int8) for _ in range(2))
        int8 = {"torch": ops / _best_call_time(lambda: torch._int_mm(a8, b8), seconds) / 1e9} if with_bf16 else {}
    finally:
        torch.set_num_threads(previous)
    int8["onnxruntime"] = ops / _best_call_time(_ort_int8_matmul(size, threads), seconds) / 1e9
    int8["onnxruntime_u8u8"] = ops / _best_call_time(_ort_int8_matmul(size, threads, unsigned=True), seconds) / 1e9
    return rates, int8


def peak_for_precision(peak: dict, precision: str) -> tuple[str, float]:
    """(kind, G(FL)OP/s) the served graph's arithmetic compares to: int8 graphs the int8 rate, fp16 the bf16
    rate (the CPU's 16-bit path), everything else fp32."""
    kind = "int8" if precision.startswith("int8") else ("bf16" if precision in ("fp16", "bf16") else "fp32")
    return kind, peak["gflops_per_s"][kind]


def _best_call_time(call: Callable[[], object], seconds: float) -> float:
    started = time.perf_counter()
    call()  # warm-up
    first = time.perf_counter() - started
    if first >= seconds:  # one call outlasts the budget (bf16 emulated on CPUs without it): that call is the figure
        return first
    best = float("inf")
    for _ in range(3):
        calls, started = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - started < seconds / 3:
            call()
            calls += 1
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def _ort_int8_matmul(size: int, threads: int, unsigned: bool = False) -> Callable[[], object]:
    """One MatMulInteger of u8 activations by constant weights, s8 (or u8 when `unsigned`), as a callable."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    low, high, dtype = (0, 256, np.uint8) if unsigned else (-128, 128, np.int8)
    weights = np.random.default_rng(0).integers(low, high, (size, size), dtype=dtype)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])],
        [onnx.numpy_helper.from_array(weights, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": np.random.default_rng(1).integers(0, 256, (size, size), dtype=np.uint8)}
    return lambda: session.run(None, feed)
