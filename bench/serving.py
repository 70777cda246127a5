"""`bertforge bench serve`: the served model under load, next to its baselines, side by side in one run.

Contenders, all on the same texts, alternating within each round so machine noise hits all of them:
  - `triton`: our repository as exported (dynamic batching on), a concurrency sweep (or a fixed rate);
  - `triton_no_batching`: a copy of the repository with dynamic batching off, the same sweep;
  - `onnxruntime_b1` / `_b16`: the exported graph in this process (no Triton), one text at a time / batched;
  - `pipeline_fill_mask_b1` / `_b16` (embed: `pytorch_mean_pooling_*`): PyTorch fp32 eager in this process;
  - with `--api openai|tei|hf`: `api_<kind>`, the HTTP API (serve/api/) in front of the same `triton` server,
    one text per HTTP request, the same sweep (its cost = the difference to `triton`);
  - with `variants.<name>` (ServingSettings changes): `triton_<name>`, a copy of the repository served with them,
    the same sweep (a lever measured side by side; `variants` in the result holds its per-round ratios).
Figures per contender are its fastest round (noise only slows runs down); the goals are medians of
ratios measured side by side within each round. Every point also carries its useful arithmetic: model FLOPs
counted from each answered text's real token count (no padding; `bench.stats.encoder_flops`) per second,
against this machine's dense GEMM rates measured at the start of the same run (`gemm_peak`): `peak_fraction`
against the rate of the graph's precision (int8 graphs the int8 rate, so GOP/s), `peak_fractions` against
both the int8 and the fp32 rate. Where the time goes: in-process rows split each call into parse, tokenize,
plan, pad, ONNX Runtime and the rest of our Python (`phases_ms`, bench/baselines.py); served rows split each
request by Triton's statistics (`server_ms`: queue, backend execute per merged batch, and what lies outside
the server: gRPC and the client, bench/load.py).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.baselines import measure_gemm_peak, measure_onnxruntime, measure_pipeline, peak_for_precision
from bench.config import BenchConfig
from bench.load import measure_served_point
from bench.stats import best_round, encoder_flops, median
from bench.texts import RequestTexts, build_request_texts
from bertforge.cpu import CpuInfo, detect_cpu
from bertforge.errors import UserError
from bertforge.served_model import ServedModelDir
from bertforge.tasks import FILL_MASK
from export.config import DEFAULT_PRECISION

if TYPE_CHECKING:
    from serve.stack import ServingStack

SERVED = "triton"
SERVED_NO_BATCHING = "triton_no_batching"
EXTERNAL = "external"  # another embedding server (config.compare_url), e.g. Infinity
GOAL_CONCURRENCY = 16
PEAK_KINDS = ("int8", "fp32")  # every point's arithmetic is reported against both GEMM rates of the run
SERVED_GOPS_GOAL = 0.5  # served GOP/s >= half of the in-process graph's (the same graph, texts and cores)
API_GOAL_CONCURRENCY = 32
API_MAX_IN_FLIGHT = 4096  # the API must not refuse (429) what the sweep sends


def run_serve_benchmark(config: BenchConfig, repo: Path | None = None, model_dir: Path | None = None,
                        url: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Measure every contender `config.rounds` times; returns the result document (see docs/bench.md)."""
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bertforge-bench-")))
        # The repository: given, or exported from the HF folder; the HF folder feeds the PyTorch baseline
        repo = resolve_repository(repo, model_dir, scratch, config.task, log, config.precision)
        settings = serving_document(repo, config.task)
        model_dir = model_dir or _source_model(settings)
        texts = request_texts(config, repo)
        log(f"[bench] {len(texts.texts)} texts from {texts.source} (median {texts.summary()['tokens_median']} tokens)")
        flops = text_flops(repo, config.task, texts)
        peak = measure_gemm_peak()
        log("[bench] GEMM peak now, {} threads: ".format(peak["threads"]) +
            ", ".join(f"{kind} {rate:,.0f}" for kind, rate in peak["gflops_per_s"].items()) + " G(FL)OP/s")

        # Servers: ours with its API (or the one at --url) and, on a repository copy, the same with batching off
        apis: dict[str, tuple[str, str]] = {}  # contender -> (API kind, its URL); its Triton is SERVED
        if url is None:
            served = stack.enter_context(start_stack(repo, log, "dynamic batching on", api=bool(config.api)))
            servers, api_url = {SERVED: served.grpc_url}, served.api.url if served.api else None
        else:
            servers = {SERVED: url}
            api_url = stack.enter_context(start_api(repo, url, log)) if config.api else None
        if config.api:
            apis[api_contender(config.api)] = (config.api, api_url)
            servers[api_contender(config.api)] = servers[SERVED]
        if config.compare_url:
            servers[EXTERNAL], apis[EXTERNAL] = None, ("external", config.compare_url)
        if config.baselines.batching_off and url is None:
            variant = variant_repository(repo, scratch / "no_batching", config.task, dynamic_batching=False)
            servers[SERVED_NO_BATCHING] = stack.enter_context(start_server(variant, log, "dynamic batching off"))
        for name, changes in config.variants.items():  # levers, each its own server on a copy, in the same rounds
            if url is not None:
                raise UserError("variants need bench's own servers: drop --url, or measure each setting on its own")
            variant = variant_repository(repo, scratch / f"variant_{name}", config.task, **changes)
            servers[variant_contender(name)] = stack.enter_context(start_server(variant, log, f"variant {name}: {changes}"))

        rounds = []
        for number in range(config.rounds):
            log(f"[bench] round {number + 1}/{config.rounds}")
            rounds.append(measure_round(config, servers, repo, model_dir, texts, settings, number, log, apis, flops))
    points = summarize_rounds(rounds)
    kind, rate = peak_for_precision(peak, settings.get("precision", "fp32"))
    for point in (point for round_points in rounds for point in round_points):
        point["peak_kind"], point["peak_fraction"] = kind, point["gflops_per_s"] / rate if flops else None
        point["peak_fractions"] = ({name: point["gflops_per_s"] / peak["gflops_per_s"][name] for name in PEAK_KINDS}
                                   if flops else None)
    cpu = detect_cpu()
    return {"benchmark": "serve", "task": config.task, "repo": str(repo), "url": url,
            "hf_model": str(model_dir) if model_dir else None, "serving": settings, "texts": texts.summary(),
            "cpu": cpu.summary(), "gemm_peak": peak | {"compared_with": kind}, "points": points, "rounds": rounds,
            "goals": goals(rounds, config.task) | api_goals(rounds, config.api)
            | external_goals(rounds, config.compare_url, cpu), "variants": variant_ratios(rounds, config.variants)}


def variant_contender(name: str) -> str:
    return f"{SERVED}_{name}"


def variant_ratios(rounds: list[list[dict]], variants: dict[str, dict]) -> dict:
    """Per variant and load level, medians over rounds of its throughput and p99 as multiples of the served
    repository's as exported (and of the other server's, with --compare-url), each ratio taken within a round."""
    result: dict[str, dict] = {}
    for name, changes in variants.items():
        levels: dict[str, dict] = {}
        for points in rounds:
            by_key = {(point["contender"], point.get("concurrency")): point for point in points}
            for (contender, users), point in by_key.items():
                if contender != variant_contender(name):
                    continue
                for reference in (SERVED, EXTERNAL):
                    other = by_key.get((reference, users))
                    if other and other["requests_per_s"] and other.get("p99_ms"):
                        level = f"c{users}" if users else "rate"
                        entry = levels.setdefault(level, {}).setdefault(f"vs_{reference}", {"throughput": [], "p99": []})
                        entry["throughput"].append(point["requests_per_s"] / other["requests_per_s"])
                        entry["p99"].append(point["p99_ms"] / other["p99_ms"])
        result[name] = {"settings": changes} | {
            level: {versus: {kind: {"value": median(values), "per_round": values} for kind, values in ratios.items()}
                    for versus, ratios in by_versus.items()} for level, by_versus in levels.items()}
    return result


def measure_round(config: BenchConfig, servers: dict[str, str | None], repo: Path, model_dir: Path | None,
                  texts: RequestTexts, settings: dict, number: int, log: Callable[[str], None],
                  apis: dict[str, tuple[str, str]] | None = None, flops: list[float] | None = None) -> list[dict]:
    """One of each: served points (the variants alternate per load level), then the in-process baselines."""
    load = config.load
    points: list[dict] = []
    levels = [None] if load.request_rate > 0 else list(load.concurrency)
    order = list(servers.items()) if number % 2 == 0 else list(reversed(servers.items()))
    for users in levels:
        for contender, grpc_url in order:
            api, api_url = (apis or {}).get(contender, ("", None))
            point = measure_served_point(grpc_url, config.task, texts, concurrency=users or 1,
                                         request_rate=load.request_rate, max_requests=load.max_requests,
                                         max_seconds=load.max_seconds, warmup_seconds=load.warmup_seconds,
                                         timeout_s=load.timeout_s, top_k=load.top_k, api=api, api_url=api_url,
                                         flops=flops)
            points.append({"contender": contender} | point)
            log(_point_line(points[-1]))
    baselines = config.baselines
    limits = dict(batch_size=baselines.batch_size, max_requests=baselines.max_requests,
                  max_seconds=baselines.max_seconds, top_k=load.top_k, warmup_seconds=load.warmup_seconds, flops=flops)
    if baselines.onnxruntime:
        points += _logged(measure_onnxruntime(repo, config.task, texts, **limits), log)
    if baselines.pipeline:
        if model_dir is None:
            log("[bench] PyTorch baseline skipped: no HF model folder (pass --model DIR)")
        else:
            points += _logged(measure_pipeline(model_dir, config.task, texts, max_length=settings["max_length"],
                                               torch_threads=baselines.torch_threads, **limits), log)
    return [point | {"round": number} for point in points]


def summarize_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Per (contender, load level): the fastest round (see stats.best_round)."""
    groups: dict[tuple, list[dict]] = {}
    for point in (point for round_points in rounds for point in round_points):
        groups.setdefault((point["contender"], point.get("concurrency"), point.get("request_rate")), []).append(point)
    return [best_round(group) for group in groups.values()]


def goals(rounds: list[list[dict]], task: str) -> dict:
    """The issue's three targets, each the median over rounds of a ratio measured within one round."""
    def find(points: list[dict], contender: str, concurrency: int | None = None) -> dict | None:
        return next((p for p in points if p["contender"] == contender and p.get("concurrency") == concurrency), None)

    pipeline_name = "pipeline_fill_mask_b1" if task == FILL_MASK else "pytorch_mean_pooling_b1"
    values: dict[str, list[float]] = {"served_vs_pipeline": [], "batching_on_vs_off": [], "c1_p50_overhead_ms": [],
                                      "served_vs_inprocess_best": [], "served_vs_inprocess_gops": []}
    for points in rounds:
        served_best = max((p["requests_per_s"] for p in points if p["contender"] == SERVED), default=None)
        inprocess_best = max((p["requests_per_s"] for p in points if p["contender"].startswith("onnxruntime_")),
                             default=None)
        if served_best and inprocess_best:
            values["served_vs_inprocess_best"].append(served_best / inprocess_best)
        served_gops = max((p.get("gflops_per_s") or 0.0 for p in points if p["contender"] == SERVED), default=0.0)
        inprocess_gops = max((p.get("gflops_per_s") or 0.0 for p in points if p["contender"].startswith("onnxruntime_")),
                             default=0.0)
        if served_gops and inprocess_gops:
            values["served_vs_inprocess_gops"].append(served_gops / inprocess_gops)
        served16, off16 = find(points, SERVED, GOAL_CONCURRENCY), find(points, SERVED_NO_BATCHING, GOAL_CONCURRENCY)
        served1, pipeline, runtime = find(points, SERVED, 1), find(points, pipeline_name), find(points, "onnxruntime_b1")
        if served16 and pipeline:
            values["served_vs_pipeline"].append(served16["requests_per_s"] / pipeline["requests_per_s"])
        if served16 and off16:
            values["batching_on_vs_off"].append(served16["requests_per_s"] / off16["requests_per_s"])
        if served1 and runtime and served1["p50_ms"] is not None:
            values["c1_p50_overhead_ms"].append(served1["p50_ms"] - runtime["p50_ms"])
    targets = {"served_vs_pipeline": (f"{SERVED} c16 req/s / {pipeline_name} req/s", ">=", 4.0),
               "batching_on_vs_off": (f"{SERVED} c16 req/s / {SERVED_NO_BATCHING} c16 req/s", ">=", 2.0),
               "c1_p50_overhead_ms": (f"{SERVED} c1 p50 - onnxruntime_b1 p50 (ms)", "<=", 1.0),
               "served_vs_inprocess_best": (f"best {SERVED} req/s of the sweep / best onnxruntime_* req/s (same "
                                            "graph, same cores)", ">=", 0.9),
               "served_vs_inprocess_gops": (f"best {SERVED} GOP/s of the sweep / best onnxruntime_* GOP/s (model "
                                            "arithmetic of real tokens)", ">=", SERVED_GOPS_GOAL)}
    return _judge(values, targets)


def external_targets(cpu: CpuInfo) -> tuple[float, float]:
    """(throughput at least, p99 at most) as multiples of the other server's (an fp32 engine), by this CPU's
    int8 kernel: where u8 x s8 sums are exact (VNNI, AMX) the int8 GEMM runs ~4x the fp32 one and the targets are
    3x and 0.5x; where they saturate (AVX2 or AVX-512 without VNNI) the int8 graph must use 7-bit or u8 x u8
    weights, whose GEMM measured at most ~1.8x fp32 (docs/performance.md), so 1.8x and 0.6x."""
    return (1.8, 0.6) if cpu.int8_saturates else (3.0, 0.5)


def external_goals(rounds: list[list[dict]], compare_url: str, cpu: CpuInfo | None = None) -> dict:
    """Against the other embedding server at the same load (32 users), within each round: throughput and p99 as
    multiples of its, against `external_targets` for this CPU (issue 12's 3x / 0.5x where int8 sums are exact)."""
    if not compare_url:
        return {}
    throughput_target, p99_target = external_targets(cpu or detect_cpu())
    values: dict[str, list[float]] = {"vs_external_c32_throughput": [], "vs_external_c32_p99": []}
    for points in rounds:
        by_key = {(point["contender"], point.get("concurrency")): point for point in points}
        ours, theirs = by_key.get((SERVED, API_GOAL_CONCURRENCY)), by_key.get((EXTERNAL, API_GOAL_CONCURRENCY))
        if ours and theirs and theirs["requests_per_s"] and theirs["p99_ms"]:
            values["vs_external_c32_throughput"].append(ours["requests_per_s"] / theirs["requests_per_s"])
            values["vs_external_c32_p99"].append(ours["p99_ms"] / theirs["p99_ms"])
    c = API_GOAL_CONCURRENCY
    targets = {"vs_external_c32_throughput": (f"{SERVED} c{c} req/s / {EXTERNAL} c{c} req/s", ">=", throughput_target),
               "vs_external_c32_p99": (f"{SERVED} c{c} p99 / {EXTERNAL} c{c} p99", "<=", p99_target)}
    return _judge(values, targets)


def api_contender(api: str) -> str:
    return f"api_{api}"


def api_goals(rounds: list[list[dict]], api: str) -> dict:
    """The HTTP API's own cost, against direct gRPC to the same Triton in the same round: the c1 p50
    difference (<= 0.5 ms) and the c32 throughput ratio (>= 0.9); the sweep must hold 1 and 32 users."""
    if not api:
        return {}
    name = api_contender(api)
    values: dict[str, list[float]] = {"api_c1_p50_overhead_ms": [], "api_c32_throughput_ratio": []}
    for points in rounds:
        by_key = {(point["contender"], point.get("concurrency")): point for point in points}
        api1, grpc1 = by_key.get((name, 1)), by_key.get((SERVED, 1))
        api32, grpc32 = by_key.get((name, API_GOAL_CONCURRENCY)), by_key.get((SERVED, API_GOAL_CONCURRENCY))
        if api1 and grpc1 and api1["p50_ms"] is not None and grpc1["p50_ms"] is not None:
            values["api_c1_p50_overhead_ms"].append(api1["p50_ms"] - grpc1["p50_ms"])
        if api32 and grpc32 and grpc32["requests_per_s"]:
            values["api_c32_throughput_ratio"].append(api32["requests_per_s"] / grpc32["requests_per_s"])
    targets = {"api_c1_p50_overhead_ms": (f"{name} c1 p50 - {SERVED} c1 p50 (ms)", "<=", 0.5),
               "api_c32_throughput_ratio": (f"{name} c{API_GOAL_CONCURRENCY} req/s / {SERVED} "
                                            f"c{API_GOAL_CONCURRENCY} req/s", ">=", 0.9)}
    return _judge(values, targets)


def _judge(values: dict[str, list[float]], targets: dict[str, tuple[str, str, float]]) -> dict:
    """Each goal's median over rounds against its target: {goal: {meaning, value, per_round, target, met}}."""
    result = {}
    for name, (meaning, sense, target) in targets.items():
        value = median(values[name])
        met = None if value is None else (value >= target if sense == ">=" else value <= target)
        result[name] = {"meaning": meaning, "value": value, "per_round": values[name], "target": f"{sense} {target}",
                        "met": met}
    return result


def resolve_repository(repo: Path | None, model_dir: Path | None, scratch: Path, task: str,
                       log: Callable[[str], None], precision: str = DEFAULT_PRECISION) -> Path:
    """The repository to serve: `repo` as given, else `model_dir` exported into `scratch`."""
    if repo is not None:
        model = ServedModelDir.in_repo(repo, task)
        if not model.is_complete():
            raise UserError(f"{repo} holds no exported {task} model ({', '.join(model.missing_files())} missing); "
                            f"run `bertforge export --model DIR --repo {repo}` first")
        return Path(repo)
    if model_dir is None:
        raise UserError("give --repo DIR (an exported model repository) or --model DIR (an HF BERT folder)")
    from export import export_to_repository

    log(f"[bench] exporting {model_dir} ({precision}) into a temporary repository")
    export_to_repository(model_dir, scratch / "repo", precision=precision, progress=False)
    return scratch / "repo"


def variant_repository(repo: Path, target: Path, task: str, **changes) -> Path:
    """A copy of one model of `repo` (weights linked, not copied) with changed ServingSettings."""
    ServedModelDir.in_repo(repo, task).copy_to(target, **changes)
    return target


def serving_document(repo: Path, task: str) -> dict:
    from bertforge.config import to_dict

    model = ServedModelDir.in_repo(repo, task)
    return to_dict(model.settings()) | {"info": model.info()}


def request_texts(config: BenchConfig, repo: Path) -> RequestTexts:
    """The benchmark texts, with each one's token count as the server tokenizes it."""
    model = ServedModelDir.in_repo(repo, config.task)
    return build_request_texts(config.texts, config.task, model.tokenizer_dir / "tokenizer.json",
                               model.settings().max_length)


def text_flops(repo: Path, task: str, texts: RequestTexts) -> list[float] | None:
    """Model FLOPs of each text (real tokens, its [MASK]s through the fill-mask head); None when the graph's
    shape cannot be read (then no efficiency column)."""
    shape = encoder_shape(ServedModelDir.in_repo(repo, task).onnx_file)
    if shape is None:
        return None
    from bertforge import contract

    masks = [text.count(contract.MASK_TOKEN) if task == FILL_MASK else 0 for text in texts.texts]
    return [encoder_flops(tokens, **shape, masks=count) for tokens, count in zip(texts.tokens, masks)]


def encoder_shape(onnx_file: Path) -> dict | None:
    """{layers, hidden, intermediate, vocab} read from the graph's weights: the largest matrix is the word
    embedding (vocab x hidden); the FFN size is the one dimension found both as (hidden, d) and (d, hidden)
    (up and down projections; position embeddings only appear one way), and each up projection is a layer."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    matrices = [tuple(tensor.dims) for tensor in graph.initializer if len(tensor.dims) == 2]
    if not matrices:
        return None
    vocab, hidden = sorted(max(matrices, key=lambda dims: dims[0] * dims[1]), reverse=True)
    ups = {dims[1] for dims in matrices if dims[0] == hidden and dims[1] != hidden}
    downs = {dims[0] for dims in matrices if dims[1] == hidden and dims[0] != hidden}
    both = sorted(ups & downs - {vocab})
    if len(both) != 1:
        return None
    intermediate = both[0]
    layers = sum(1 for dims in matrices if dims == (hidden, intermediate))
    return {"layers": layers, "hidden": hidden, "intermediate": intermediate, "vocab": vocab}


@contextlib.contextmanager
def start_stack(repo: Path, log: Callable[[str], None], what: str, api: bool = False) -> Iterator[ServingStack]:
    """A tritonserver on free loopback ports (serve/stack.py), with the HTTP API (serve/api/) in front when `api`."""
    from serve.config import ApiConfig
    from serve.stack import local_config, running_stack

    with running_stack(local_config(repo, ApiConfig(port=0, max_in_flight=API_MAX_IN_FLIGHT) if api else None)) as served:
        log(f"[bench] tritonserver ({what}) on {served.grpc_url}, pid {served.server.pid}")
        if served.api is not None:
            log(f"[bench] HTTP API on {served.api.url}, pid {served.api.pid}, forwarding to {served.grpc_url}")
        yield served


@contextlib.contextmanager
def start_server(repo: Path, log: Callable[[str], None], what: str) -> Iterator[str]:
    """A tritonserver on free loopback ports; yields its gRPC URL."""
    with start_stack(repo, log, what) as served:
        yield served.grpc_url


@contextlib.contextmanager
def start_api(repo: Path, grpc_url: str, log: Callable[[str], None]) -> Iterator[str]:
    """The HTTP API alone on a free loopback port, forwarding to the Triton at `grpc_url` (--url: not ours to start);
    yields its URL."""
    from serve.api.process import running_api
    from serve.config import ApiConfig

    with running_api(repo, grpc_url, config=ApiConfig(port=0, max_in_flight=API_MAX_IN_FLIGHT)) as api:
        log(f"[bench] HTTP API on {api.url}, pid {api.pid}, forwarding to {grpc_url}")
        yield api.url


def _source_model(settings: dict) -> Path | None:
    source = settings.get("info", {}).get("source")
    return Path(source) if source and (Path(source) / "config.json").is_file() else None


def _logged(points: list[dict], log: Callable[[str], None]) -> list[dict]:
    for point in points:
        log(_point_line(point))
    return points


def _point_line(point: dict) -> str:
    level = f"c={point['concurrency']}" if point.get("concurrency") else (
        f"rate={point['request_rate']}/s" if point.get("request_rate") else f"batch={point.get('batch_size', 1)}")
    batch = f", avg batch {point['avg_batch_size']:.1f}" if point.get("avg_batch_size") else ""
    p50 = f"{point['p50_ms']:.1f}" if point.get("p50_ms") is not None else "-"
    return (f"  {point['contender']:<28} {level:<10} {point['requests_per_s']:8.1f} req/s  p50 {p50} ms  "
            f"errors {point['errors']}{batch}")
