"""`bertforge bench profile`: where a served model's time goes (the profiles behind docs/performance.md).

Three measurements of one model of a repository, each next to its own reference in the same run:
  - `ops`: ONNX Runtime's kernel time per op type (its own profiler) over the benchmark texts, run as the
    server runs them (parse, tokenize, token-budget split into sub-batches of merged batches);
  - `cpu`: CPU seconds per wall second of tritonserver, its python-backend stub(s) and the load generator
    during a closed-loop point: who gets the cores;
  - `floor`: single-client p50 of the model served, of a constant-answer python model served by the same
    Triton through the same client (Triton + python backend + gRPC alone), and of the runtime in process,
    alternating over two rounds.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.config import BenchConfig
from bench.load import measure_served_point
from bench.serving import request_texts, variant_repository
from bench.texts import RequestTexts
from bertforge import contract
from bertforge.served_model import ServedModelDir
from bertforge.tasks import FILL_MASK

# Reads TEXT like the real backend and answers a constant of the task's output shape: the cost of serving itself
CONSTANT_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.outputs = {outputs}

    def execute(self, requests):
        answers = []
        for request in requests:
            pb_utils.get_input_tensor_by_name(request, "{text}").as_numpy()
            tensors = [pb_utils.Tensor(name, np.array(value, dtype=dtype)) for name, (value, dtype) in self.outputs.items()]
            answers.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return answers
'''


def run_profile(config: BenchConfig, repo: Path, concurrency: int = 32, seconds: float = 6.0,
                log: Callable[[str], None] = print) -> dict:
    """The three measurements; returns the result document."""
    texts = request_texts(config, repo)
    log(f"[profile] {len(texts.texts)} texts (median {texts.summary()['tokens_median']} tokens), {config.task}")
    ops = op_profile(repo, config.task, texts, batch_size=concurrency)
    log("[profile] ONNX Runtime ops: " + ", ".join(f"{op} {share:.1%}" for op, share in list(ops["shares"].items())[:5]))
    cpu = cpu_shares(repo, config.task, texts, concurrency, seconds, config.load.timeout_s, config.load.top_k)
    log(f"[profile] cores at {concurrency} clients: " + ", ".join(f"{name} {cores:.2f}" for name, cores in cpu["cores"].items()))
    floor = single_client_floor(repo, config.task, texts, seconds, config.load.timeout_s, config.load.top_k)
    log(f"[profile] c=1 p50: served {floor['served_p50_ms']:.2f} ms, constant model {floor['constant_p50_ms']:.2f} ms, "
        f"in process {floor['in_process_p50_ms']:.2f} ms")
    return {"benchmark": "profile", "task": config.task, "repo": str(repo), "texts": texts.summary(),
            "concurrency": concurrency, "ops": ops, "cpu": cpu, "floor": floor}


def op_profile(repo: Path, task: str, texts: RequestTexts, batch_size: int) -> dict:
    """Share of ONNX Runtime kernel time per op type, texts merged `batch_size` at a time as Triton would."""
    import onnxruntime as ort

    from serve.runtime import load_runtime

    model = ServedModelDir.in_repo(repo, task)
    runtime = load_runtime(model.version_dir)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = runtime.settings.intra_op_threads
    with tempfile.TemporaryDirectory(prefix="bertforge-profile-") as scratch:
        options.enable_profiling, options.profile_file_prefix = True, str(Path(scratch) / "ort")
        runtime.session = ort.InferenceSession(str(model.onnx_file), options,
                                               providers=runtime.providers)
        run = runtime.fill_mask if task == FILL_MASK else runtime.embed
        started = time.perf_counter()
        for start in range(0, len(texts.texts), batch_size):
            requests = [runtime.parse(text.encode(), {}) for text in texts.texts[start:start + batch_size]]
            runtime.tokenize(requests)
            for group in runtime.plan_batches(requests):
                run([requests[index] for index in group])
        texts_per_s = len(texts.texts) / (time.perf_counter() - started)
        events = json.loads(Path(runtime.session.end_profiling()).read_text())
    kernel_us: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kernel_us[event["args"]["op_name"]] += event["dur"]
    total = sum(kernel_us.values()) or 1
    return {"texts_per_s_while_profiled": texts_per_s,
            "shares": {op: microseconds / total for op, microseconds in kernel_us.most_common()}}


def cpu_shares(repo: Path, task: str, texts: RequestTexts, concurrency: int, seconds: float, timeout_s: float,
               top_k: int) -> dict:
    """Cores used by each process (by name) and by this load generator during one closed-loop point."""
    import psutil

    from bench.serving import start_stack

    with start_stack(repo, lambda line: None, "profiled") as served:
        server = served.server
        point = dict(concurrency=concurrency, max_requests=10**9, timeout_s=timeout_s, top_k=top_k)
        measure_served_point(server.endpoints.grpc_url, task, texts, max_seconds=1.0, warmup_seconds=0.5, **point)
        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        names = {process.pid: process.name() for process in processes}
        me = psutil.Process()
        before, mine_before, started = _cpu_seconds(processes), sum(me.cpu_times()[:2]), time.perf_counter()
        served = measure_served_point(server.endpoints.grpc_url, task, texts, max_seconds=seconds, warmup_seconds=0,
                                      **point)
        after, mine_after = _cpu_seconds(processes), sum(me.cpu_times()[:2])
        wall = time.perf_counter() - started
    cores: dict[str, float] = {}
    for pid, used in after.items():
        cores[names[pid]] = cores.get(names[pid], 0.0) + (used - before.get(pid, used)) / wall
    cores["load generator"] = (mine_after - mine_before) / wall
    return {"cores": cores, "machine_cores": os.cpu_count(), "requests_per_s": served["requests_per_s"],
            "p99_ms": served["p99_ms"]}


def single_client_floor(repo: Path, task: str, texts: RequestTexts, seconds: float, timeout_s: float,
                        top_k: int, rounds: int = 2) -> dict:
    """p50 at one client: the model served, a constant-answer model served, the runtime in process (fastest
    round of each, alternating)."""
    import contextlib

    from bench.baselines import measure_onnxruntime
    from bench.serving import start_server

    p50s: dict[str, list[float]] = {"served": [], "constant": [], "in_process": []}
    splits: dict[str, tuple[float, dict | None]] = {}  # served kind -> (p50, Triton's split) of its fastest round
    with contextlib.ExitStack() as stack:
        # both servers up for the whole measurement, so the rounds alternate without restarts
        urls = {}
        for kind in ("served", "constant"):
            copy = variant_repository(repo, Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="bertforge-profile-"))), task)
            if kind == "constant":
                write_constant_model(ServedModelDir.in_repo(copy, task).backend_file, task, top_k)
            urls[kind] = stack.enter_context(start_server(copy, lambda line: None, kind))
        for number in range(rounds):
            for kind in (list(p50s) if number % 2 == 0 else list(reversed(p50s))):
                if kind == "in_process":
                    point = measure_onnxruntime(repo, task, texts, 1, 10**9, seconds, top_k, warmup_seconds=0.5)[0]
                else:
                    point = measure_served_point(urls[kind], task, texts, concurrency=1, max_requests=10**9,
                                                 max_seconds=seconds, warmup_seconds=0.5, timeout_s=timeout_s,
                                                 top_k=top_k)
                p50s[kind].append(point["p50_ms"])
                if kind != "in_process" and point["p50_ms"] <= splits.get(kind, (float("inf"), None))[0]:
                    splits[kind] = (point["p50_ms"], point.get("server_ms"))
    best = {kind: min(values) for kind, values in p50s.items()}
    return {"served_p50_ms": best["served"], "constant_p50_ms": best["constant"],
            "in_process_p50_ms": best["in_process"], "overhead_ms": best["served"] - best["in_process"],
            "ours_above_floor_ms": best["served"] - best["in_process"] - best["constant"], "per_round": p50s,
            "server_ms": {kind: split for kind, (_, split) in splits.items()}}


def write_constant_model(model_file: Path, task: str, top_k: int) -> None:
    """Replace a (copied) model.py with the constant-answer model of the task's outputs."""
    if task == FILL_MASK:
        outputs = {contract.TOKENS_OUTPUT: ([[[b"x"] * top_k]], "object"),
                   contract.TOKEN_IDS_OUTPUT: ([[[0] * top_k]], "int64"),
                   contract.SCORES_OUTPUT: ([[[0.0] * top_k]], "float32")}
    else:
        outputs = {contract.EMBEDDING_OUTPUT: ([[0.0] * 8], "float32")}
    model_file.unlink()  # a hard link into the original repository: never write through it
    model_file.write_text(CONSTANT_MODEL.format(outputs=repr(outputs), text=contract.TEXT_INPUT))


def print_profile(results: dict) -> None:
    from rich.table import Table

    from bench.report import wide_console

    console = wide_console()
    ops = Table(title=f"ONNX Runtime kernel time by op ({results['task']}, merged batches of {results['concurrency']})")
    ops.add_column("op")
    ops.add_column("share", justify="right")
    for op, share in results["ops"]["shares"].items():
        ops.add_row(op, f"{share:.1%}")
    console.print(ops)
    cores = Table(title=f"cores used at {results['concurrency']} clients "
                        f"({results['cpu']['requests_per_s']:.1f} req/s, {results['cpu']['machine_cores']} on this machine)")
    cores.add_column("process")
    cores.add_column("cores", justify="right")
    for name, used in results["cpu"]["cores"].items():
        cores.add_row(name, f"{used:.2f}")
    console.print(cores)
    floor = results["floor"]
    console.print(f"c=1 p50: served {floor['served_p50_ms']:.2f} ms, in process {floor['in_process_p50_ms']:.2f} ms "
                  f"(overhead {floor['overhead_ms']:.2f} ms); a constant-answer model through the same Triton and "
                  f"client {floor['constant_p50_ms']:.2f} ms, so ours above that floor: "
                  f"{floor['ours_above_floor_ms']:.2f} ms")
    for kind, split in (floor.get("server_ms") or {}).items():
        if split:
            console.print(f"  {kind} at c=1, per request: inside Triton {split['server']:.2f} ms (queue {split['queue']:.2f}, "
                          f"inputs {split['compute_input']:.2f}, backend execute {split['compute_infer']:.2f}, outputs "
                          f"{split['compute_output']:.2f}); outside it (gRPC, client) {split['outside_server']:.2f} ms")


def _cpu_seconds(processes: list) -> dict[int, float]:
    import psutil

    seconds = {}
    for process in processes:
        try:
            seconds[process.pid] = sum(process.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return seconds
