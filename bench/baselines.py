"""In-process contenders on the same texts: ONNX Runtime on the exported graph, and plain PyTorch/transformers.

- `onnxruntime`: `serve.runtime.ModelRuntime` on `<repo>/<task>/1` (same tokenizer, graph and post-processing
  as the server, without Triton or gRPC): one text at a time, and in batches.
- `pipeline`: fill_mask = `transformers.pipeline("fill-mask")`; embed = `AutoModel` + attention-mask mean
  pooling; one text at a time, and in batches. Needs the HF model folder.

Each warms up first (at least WARMUP_CALLS calls and `warmup_seconds`: PyTorch's first calls per new
sequence length are slow), then stops at max_requests texts or max_seconds. Latency is per call (per text
one at a time, per batch when batched). torch and transformers are imported only in here, inside functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.stats import point_figures
from bench.texts import RequestTexts

WARMUP_CALLS = 3


def measure_onnxruntime(repo: Path, task: str, texts: RequestTexts, batch_size: int, max_requests: int,
                        max_seconds: float, top_k: int, warmup_seconds: float = 0.0) -> list[dict]:
    """The served model's runtime in this process: [one-at-a-time point, batched point]."""
    from serve.runtime import load_runtime

    runtime = load_runtime(Path(repo) / task / "1")

    def run(batch: list[str]) -> None:
        requests = [runtime.parse(text.encode("utf-8"), {"top_k": top_k} if task == "fill_mask" else {})
                    for text in batch]
        errors = runtime.tokenize(requests)
        if any(errors):
            raise ValueError(f"in-process ONNX Runtime rejected a benchmark text: {next(e for e in errors if e)}")
        for indices in runtime.plan_batches(requests):
            chunk = [requests[index] for index in indices]
            runtime.fill_mask(chunk) if task == "fill_mask" else runtime.embed(chunk)

    details = {"providers": list(runtime.providers), "threads": runtime.settings.intra_op_threads or "default"}
    return [_measure(f"onnxruntime_b{size}", run, texts, size, max_requests, max_seconds, warmup_seconds) | details
            for size in (1, batch_size)]


def measure_pipeline(model_dir: Path, task: str, texts: RequestTexts, batch_size: int, max_requests: int,
                     max_seconds: float, top_k: int, max_length: int, torch_threads: int = 0,
                     warmup_seconds: float = 0.0) -> list[dict]:
    """PyTorch fp32 eager in this process: [one-at-a-time point, batched point]."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)

    if task == "fill_mask":
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
            weights = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, H)

        name = "pytorch_mean_pooling"
    details = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    return [_measure(f"{name}_b{size}", run, texts, size, max_requests, max_seconds, warmup_seconds) | details
            for size in (1, batch_size)]


def _measure(contender: str, run: Callable[[list[str]], None], texts: RequestTexts, batch_size: int,
             max_requests: int, max_seconds: float, warmup_seconds: float) -> dict:
    """Call `run` on consecutive batches of the texts; figures count texts, latency is per call."""
    # Warm-up on the other half of the texts (excluded)
    call, warmup_end = 0, time.perf_counter() + warmup_seconds
    while call < WARMUP_CALLS or time.perf_counter() < warmup_end:
        start = len(texts.texts) // 2 + call * batch_size
        run([texts.texts[(start + offset) % len(texts.texts)] for offset in range(batch_size)])
        call += 1
    latencies: list[float] = []
    tokens = done = 0
    started = time.perf_counter()
    while done < max_requests and time.perf_counter() - started < max_seconds:
        indices = [(done + offset) % len(texts.texts) for offset in range(batch_size)]
        begin = time.perf_counter()
        run([texts.texts[index] for index in indices])
        latencies.append(time.perf_counter() - begin)
        tokens += sum(texts.tokens[index] for index in indices)
        done += batch_size
    elapsed = time.perf_counter() - started
    figures = point_figures(latencies, tokens, 0, elapsed)
    figures["requests"] = done  # texts, not calls
    figures["requests_per_s"] = done / elapsed
    return figures | {"contender": contender, "concurrency": None, "batch_size": batch_size, "in_process": True,
                      "latency_unit": "text" if batch_size == 1 else f"batch of {batch_size}"}
