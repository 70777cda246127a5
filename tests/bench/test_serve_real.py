"""Real short runs against real tritonservers: the JSON schema, the variants, the tuner, --url and --rate."""

import json

import pytest

from bertforge.cli import main
from bertforge.served_model import ServedModelDir

pytestmark = pytest.mark.slow


def _text_settings(held_out_file):
    # the tiny model has 64 positions: keep texts short
    return ["--set", f'texts.source="{held_out_file}"', "--set", "texts.count=40", "--set", "texts.median_words=10",
            "--set", "texts.max_words=30", "--set", "load.warmup_seconds=0.2"]


def test_serve_sweep_with_every_baseline(served_repo, tiny_bert_dir, held_out_file, tmp_path):
    config_before = (served_repo / "fill_mask" / "config.pbtxt").read_text()
    output = tmp_path / "serve.json"
    code = main(["bench", "serve", "--repo", str(served_repo), "--model", str(tiny_bert_dir), "--concurrency", "1,4",
                 "--requests", "40", "--seconds", "5", "--rounds", "1", "--output", str(output),
                 "--set", "baselines.batch_size=4", "--set", "baselines.max_requests=16", *_text_settings(held_out_file)])
    assert code == 0
    results = json.loads(output.read_text())

    # Provenance and config travel with the figures
    assert results["benchmark"] == "serve" and results["task"] == "fill_mask" and results["schema_version"] == 1
    assert len(results["git"]["commit"]) == 40 and results["versions"]["tritonclient"]
    assert results["machine"]["cpus"] >= 1 and results["config"]["load"]["concurrency"] == [1, 4]
    assert results["serving"]["precision"] == "fp32" and results["texts"]["count"] == 40

    # Every contender measured once per load level, on the same texts
    points = {(point["contender"], point["concurrency"]): point for point in results["points"]}
    assert set(points) == {("triton", 1), ("triton", 4), ("triton_no_batching", 1), ("triton_no_batching", 4),
                           ("onnxruntime_b1", None), ("onnxruntime_b4", None),
                           ("pipeline_fill_mask_b1", None), ("pipeline_fill_mask_b4", None)}
    texts = results["texts"]
    for point in points.values():
        assert point["errors"] == 0 and point["requests"] > 0
        assert point["p50_ms"] <= point["p90_ms"] <= point["p99_ms"] <= point["max_ms"]
        tokens_per_request = point["tokens_per_s"] / point["requests_per_s"]
        assert 3 <= tokens_per_request <= texts["tokens_max"]
        # the efficiency column: model arithmetic from real tokens against the GEMM peak of this run
        assert point["gflops_per_s"] > 0 and 0 < point["peak_fraction"] < 1 and point["peak_kind"] == "fp32"
        assert point["peak_fractions"]["fp32"] == pytest.approx(point["peak_fraction"])
        assert point["peak_fractions"]["int8"] == pytest.approx(
            point["gflops_per_s"] / results["gemm_peak"]["gflops_per_s"]["int8"])
    # Where the time goes: in process per phase of a call (together the whole call), served per request from
    # Triton's statistics (the server's part is inside what the client waited)
    for name in ("onnxruntime_b1", "onnxruntime_b4"):
        point = points[(name, None)]
        phases = point["phases_ms"]
        assert set(phases) == {"parse", "tokenize", "plan", "pad", "onnxruntime", "python"}
        assert phases["onnxruntime"] > 0 and phases["tokenize"] > 0 and min(phases.values()) >= 0
        # the phases are timed inside each call: together they are the call, less the timer's own microseconds
        # (a preemption between the two clocks on a loaded machine can widen that on the few batched calls)
        assert 0.5 * point["mean_ms"] <= sum(phases.values()) <= point["mean_ms"]
        assert point["onnx_runs_per_call"] >= 1 and 0 <= point["padding_share"] < 1
    assert points[("onnxruntime_b1", None)]["padding_share"] == 0  # one text per run: nothing to pad
    for users in (1, 4):
        split = points[("triton", users)]["server_ms"]
        assert 0 < split["compute_infer"] <= split["server"] and split["queue"] >= 0 and split["execute_per_batch"] > 0
    single = points[("triton", 1)]["server_ms"]  # one client: nothing merged, so the client's wait splits
    assert single["outside_server"] == pytest.approx(points[("triton", 1)]["mean_ms"] - single["server"])
    assert results["cpu"]["int8_kernel"] and "int8_saturates" in results["cpu"]
    assert all(rate > 0 for rate in results["gemm_peak"]["gflops_per_s"].values())
    assert all(0 <= points[("triton", users)]["client_cpu_cores"] <= results["machine"]["cpus"] for users in (1, 4))
    for contender in ("triton", "triton_no_batching"):
        assert 0 < points[(contender, 4)]["requests"] <= 40  # bounded in requests
    # Triton's statistics: one client never batches; the batching-off variant never batches either
    assert points[("triton", 1)]["avg_batch_size"] == pytest.approx(1.0)
    assert points[("triton_no_batching", 4)]["batch_size_counts"] == {"1": points[("triton_no_batching", 4)]["executions"]}
    assert isinstance(results["goals"]["c1_p50_overhead_ms"]["value"], float)
    best_served = max(points[("triton", users)]["requests_per_s"] for users in (1, 4))
    best_in_process = max(points[(name, None)]["requests_per_s"] for name in ("onnxruntime_b1", "onnxruntime_b4"))
    assert results["goals"]["served_vs_inprocess_best"]["value"] == pytest.approx(best_served / best_in_process)

    # Plots next to the JSON; the benchmarked repository is left as it was
    for suffix in ("throughput", "latency"):
        assert (tmp_path / f"serve_{suffix}.png").read_bytes()[:4] == b"\x89PNG"
    assert (served_repo / "fill_mask" / "config.pbtxt").read_text() == config_before
    assert "dynamic_batching" in config_before

    # Comparing a run with itself finds no regression
    assert main(["bench", "compare", str(output), str(output)]) == 0


def test_bench_serve_starts_tritonserver_and_the_api_as_one_stack(served_repo, held_out_file, tmp_path):
    """Without --url, `--api` runs the API in front of bench's own tritonserver (serve.stack, as `bertforge serve`)."""
    output = tmp_path / "stack.json"
    assert main(["bench", "serve", "--repo", str(served_repo), "--api", "tei", "--concurrency", "1", "--seconds", "1",
                 "--requests", "50", "--rounds", "1", "--no-baselines", "--no-plots", "--output", str(output),
                 *_text_settings(held_out_file)]) == 0
    points = json.loads(output.read_text())["points"]
    assert {point["contender"] for point in points} == {"triton", "api_tei"}
    assert all(point["errors"] == 0 and point["requests"] > 0 for point in points)


def test_open_loop_rate_against_a_running_server(served_repo, grpc_url, held_out_file, tmp_path):
    output = tmp_path / "rate.json"
    code = main(["bench", "serve", "--repo", str(served_repo), "--url", grpc_url, "--task", "embed", "--rate", "40",
                 "--seconds", "1", "--rounds", "1", "--no-baselines", "--output", str(output),
                 *_text_settings(held_out_file)])
    assert code == 0
    (point,) = json.loads(output.read_text())["points"]
    assert point["contender"] == "triton" and point["request_rate"] == 40 and point["concurrency"] is None
    assert 30 <= point["requests"] <= 41 and point["errors"] == 0  # ~40 scheduled in 1 s
    assert not (tmp_path / "rate_throughput.png").exists()  # no sweep, no sweep plot


def test_variants_are_served_from_copies_in_the_same_rounds(served_repo, held_out_file, tmp_path):
    """`variants.<name>`: a copy of the repository with changed serving settings is one more contender, alternating
    with the repository as exported within every round; its ratios to it are medians of per-round ratios."""
    config_before = (served_repo / "embed" / "config.pbtxt").read_text()
    output = tmp_path / "variants.json"
    code = main(["bench", "serve", "--repo", str(served_repo), "--task", "embed", "--concurrency", "4",
                 "--requests", "40", "--seconds", "5", "--rounds", "2", "--no-baselines", "--output", str(output),
                 "--set", "variants.two_single={instance_count=2, intra_op_threads=1}", *_text_settings(held_out_file)])
    assert code == 0
    results = json.loads(output.read_text())
    rounds = [{point["contender"] for point in round_points} for round_points in results["rounds"]]
    assert rounds == [{"triton", "triton_two_single"}] * 2
    variant = results["variants"]["two_single"]
    assert variant["settings"] == {"instance_count": 2, "intra_op_threads": 1}
    assert len(variant["c4"]["vs_triton"]["throughput"]["per_round"]) == 2
    assert all(point["errors"] == 0 and point["requests"] > 0 for point in results["points"])
    assert (served_repo / "embed" / "config.pbtxt").read_text() == config_before  # the copy changed, not this


def test_tuner_tries_each_setting_on_a_copy_and_picks_the_fastest_within_the_bound(served_repo, held_out_file,
                                                                                    tmp_path):
    config_before = (served_repo / "embed" / "config.pbtxt").read_text()
    output = tmp_path / "tune.json"
    code = main(["bench", "tune", "--repo", str(served_repo), "--task", "embed", "--output", str(output),
                 "--set", "tune.delays_us=[0, 3000]", "--set", "tune.preferred_batch_sizes=[[], [4]]",
                 "--set", "tune.instance_counts=[1]", "--set", "tune.intra_op_threads=[1]", "--set", "tune.concurrency=4",
                 "--set", "tune.max_seconds=1",
                 "--set", "tune.max_requests=60", "--bound-ms", "10000", *_text_settings(held_out_file)])
    assert code == 0
    results = json.loads(output.read_text())
    settings = [(t["setting"]["max_queue_delay_microseconds"], t["setting"]["preferred_batch_sizes"])
                for t in results["points"]]
    assert settings == [(0, []), (0, [4]), (3000, []), (3000, [4])]
    assert all(trial["errors"] == 0 and trial["requests"] > 0 and trial["setting"]["intra_op_threads"] == 1
               for trial in results["points"])
    fastest = max(results["points"], key=lambda trial: trial["requests_per_s"])
    assert results["best"]["contender"] == fastest["contender"]
    # preferred batch size 4 caps what Triton executes at once
    for trial in results["points"]:
        if trial["setting"]["preferred_batch_sizes"] == [4]:
            assert max(int(size) for size in trial["batch_size_counts"]) <= 4
    assert (served_repo / "embed" / "config.pbtxt").read_text() == config_before


def test_another_embedding_server_is_measured_in_the_same_rounds(served_repo, grpc_url, held_out_file, tmp_path):
    """`compare_url`: an OpenAI-style embeddings server (here a real HTTP server shaped like Infinity's
    /embeddings) gets the same texts and load as Triton, as contender `external`, with the ratio goals."""
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    received: list = []

    async def embeddings(request):
        body = await request.json()
        received.append(body)
        return JSONResponse({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.0] * 8}]})

    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/embeddings", embeddings, methods=["POST"])]),
                                           host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    output = tmp_path / "external.json"
    try:
        code = main(["bench", "serve", "--repo", str(served_repo), "--url", grpc_url, "--task", "embed",
                     "--concurrency", "32", "--requests", "64", "--seconds", "5", "--rounds", "1", "--no-baselines",
                     "--output", str(output), "--compare-url", f"http://127.0.0.1:{port}/embeddings",
                     *_text_settings(held_out_file)])
    finally:
        server.should_exit = True
        thread.join(10)
    assert code == 0
    results = json.loads(output.read_text())
    points = {(point["contender"], point["concurrency"]): point for point in results["points"]}
    assert set(points) == {("triton", 32), ("external", 32)}
    external = points[("external", 32)]
    assert external["errors"] == 0 and external["requests"] > 0 and external["avg_batch_size"] is None
    # one text per request, as to Triton (warm-up requests included in what the server saw)
    assert len(received) >= external["requests"]
    assert all(len(body["input"]) == 1 and body["input"][0].strip() for body in received)
    goal = results["goals"]["vs_external_c32_throughput"]
    assert goal["value"] == pytest.approx(points[("triton", 32)]["requests_per_s"] / external["requests_per_s"])
    assert isinstance(results["goals"]["vs_external_c32_p99"]["value"], float)


def test_tuner_varies_the_merge_limit_and_the_length_bucketing_when_asked(served_repo, held_out_file, tmp_path):
    output = tmp_path / "tune.json"
    code = main(["bench", "tune", "--repo", str(served_repo), "--task", "embed", "--output", str(output),
                 "--set", "tune.delays_us=[0]", "--set", "tune.preferred_batch_sizes=[[]]",
                 "--set", "tune.instance_counts=[1]", "--set", "tune.intra_op_threads=[0]",
                 "--set", "tune.max_batch_sizes=[2, 8]", "--set", "tune.min_batch_fills=[0.9]",
                 "--set", "tune.concurrency=8", "--set", "tune.max_seconds=1", "--set", "tune.max_requests=80",
                 "--bound-ms", "10000", *_text_settings(held_out_file)])
    assert code == 0
    trials = json.loads(output.read_text())["points"]
    assert [(t["setting"]["max_batch_size"], t["setting"]["min_batch_fill"]) for t in trials] == [(2, 0.9), (8, 0.9)]
    assert all(trial["errors"] == 0 and trial["requests"] > 0 for trial in trials)
    assert max(int(size) for size in trials[0]["batch_size_counts"]) <= 2  # Triton merged at most 2
    assert "max_batch=2 fill=0.9" in trials[0]["contender"]


@pytest.mark.parametrize("task", ["embed", "fill_mask"])
def test_profile_splits_the_time_into_ops_processes_and_the_serving_floor(served_repo, held_out_file, tmp_path, task):
    output = tmp_path / "profile.json"
    code = main(["bench", "profile", "--repo", str(served_repo), "--task", task, "--concurrency", "4",
                 "--seconds", "1", "--output", str(output), *_text_settings(held_out_file)])
    assert code == 0
    results = json.loads(output.read_text())
    shares = results["ops"]["shares"]
    assert sum(shares.values()) == pytest.approx(1.0) and any("MatMul" in op or "Attention" in op for op in shares)
    cores = results["cpu"]["cores"]
    assert "tritonserver" in cores and any("stub" in name for name in cores) and cores["load generator"] > 0
    assert results["cpu"]["requests_per_s"] > 0
    floor = results["floor"]
    assert all(len(values) == 2 for values in floor["per_round"].values())
    # the constant-answer model really was served in place of the model: it costs less than tokenize + run
    assert 0 < floor["constant_p50_ms"] < floor["served_p50_ms"]
    assert floor["overhead_ms"] == pytest.approx(floor["served_p50_ms"] - floor["in_process_p50_ms"])
    # each served kind's single-client wait split by Triton's statistics: the backend's execute is the model's
    # work, which the constant model does not do
    splits = floor["server_ms"]
    assert splits["constant"]["compute_infer"] < splits["served"]["compute_infer"]
    # the constant model answers when its execute returns, so its client waited longer than Triton booked
    assert splits["constant"]["outside_server"] > 0 and splits["served"]["server"] > 0
    # the benchmarked repository is untouched (the constant model went into a copy)
    assert "ServedModel" in ServedModelDir.in_repo(served_repo, task).backend_file.read_text()
