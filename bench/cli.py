"""`bertforge bench`: one entry point for every benchmark (serving, tuning, profiling, comparing, training, export).

    bertforge bench serve --repo model_repository --quick          # the demo's short run (<= 60 s)
    bertforge bench serve --model runs/demo/model --preset full     # the full sweep with every baseline
    bertforge bench tune --repo model_repository                     # best batching setting under a p99 bound
    bertforge bench profile --repo model_repository --task embed     # ORT ops, cores per process, c=1 floor
    bertforge bench compare old.json new.json                        # exit 1 on a regression
    bertforge bench train ...                                        # bench/train_throughput.py
    bertforge bench export ...                                       # bench/export_latency.py

Imports nothing heavy here; torch is imported only by the PyTorch baseline, inside its function.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from functools import partial
from pathlib import Path

from bench.config import API_TASKS, CONFIG_DIR, BenchConfig
from bertforge.cli_options import add_config_options, build_config, given
from bertforge.tasks import DEFAULT_TASKS, FILL_MASK

# benchmarks in a module of their own, each with `add_arguments(parser)` and `run_command(args) -> int`
# (also `python -m <module>`); their flags are this subcommand's flags
MODULE_COMMANDS = {"train": ("bench.train_throughput", "training throughput: bertforge's trainer vs HF Trainer"),
                   "quality": ("bench.train_quality", "training yardstick: model quality per wall clock vs stock HF"),
                   "export": ("bench.export_latency", "export: latency of the exported variants vs PyTorch")}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: serving load, tuning, comparisons, training, export",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    serve = commands.add_parser("serve", help="load-test the served model next to its baselines")
    _add_common(serve)
    serve.add_argument("--url", help="measure a running server (HOST:PORT, gRPC) instead of starting one; "
                                     "--repo must be the repository it serves")
    serve.add_argument("--concurrency", type=_integers, help="comma-separated concurrent clients, e.g. 1,4,16,64")
    serve.add_argument("--rate", type=float, help="open loop at this many requests/s instead of the sweep")
    serve.add_argument("--length", choices=["mix", "fixed"], help="text lengths: realistic mix or fixed")
    serve.add_argument("--words", type=int, help="words per text with --length fixed")
    serve.add_argument("--rounds", type=int, help="alternating repetitions (figures = median round)")
    serve.add_argument("--seconds", type=float, help="bound per load point (seconds)")
    serve.add_argument("--requests", type=int, help="bound per load point (requests)")
    serve.add_argument("--no-baselines", action="store_true", help="only the served model")
    serve.add_argument("--api", choices=["openai", "tei", "hf"],
                       help="also load the HTTP API beside Triton (openai: /v1/embeddings, tei: /embed, hf: "
                            "/fill-mask), side by side with direct gRPC")
    serve.add_argument("--compare-url", metavar="URL",
                       help="also load another embedding server's OpenAI-style endpoint in the same rounds (contender "
                            "external), e.g. Infinity's http://127.0.0.1:7997/embeddings; needs --task embed")
    serve.set_defaults(run=_run_serve)

    tune = commands.add_parser("tune", help="sweep Triton batching settings on a repository copy")
    _add_common(tune)
    tune.add_argument("--bound-ms", type=float, help="p99 latency bound for the pick (tune.p99_bound_ms)")
    tune.set_defaults(run=_run_tune)

    profile = commands.add_parser("profile", help="where a served model's time goes: ONNX Runtime ops, cores per "
                                                  "process under load, the single-client floor of Triton")
    _add_common(profile)
    profile.add_argument("--concurrency", type=int, default=32, help="clients for the cores measurement, and the "
                                                                     "merged batch size of the op profile (32)")
    profile.add_argument("--seconds", type=float, default=6.0, help="per measured point (6)")
    profile.set_defaults(run=_run_profile)

    compare = commands.add_parser("compare", help="compare two result JSON files; exit 1 on a regression")
    compare.add_argument("first", help="baseline result JSON")
    compare.add_argument("second", help="candidate result JSON")
    compare.add_argument("--max-throughput-drop", type=float, default=0.10, help="allowed fractional drop (0.10)")
    compare.add_argument("--max-latency-rise", type=float, default=0.20, help="allowed fractional p99 rise (0.20)")
    compare.set_defaults(run=_run_compare)

    for name, (module_name, help_text) in MODULE_COMMANDS.items():
        module = importlib.import_module(module_name)  # argparse only at import; the benchmark imports torch when run
        benchmark = commands.add_parser(name, help=help_text, description=module.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(benchmark)
        benchmark.set_defaults(run=module.run_command)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", help="exported model repository (bertforge export)")
    parser.add_argument("--model", help="HF BERT folder: exported to a temporary repository when --repo is not "
                                        "given; feeds the PyTorch baseline")
    parser.add_argument("--task", choices=DEFAULT_TASKS, help=f"served model (default {FILL_MASK})")
    parser.add_argument("--precision", help="precision when --model is exported on the fly (default auto, as bertforge export)")
    add_config_options(parser, config_help="BenchConfig TOML file", set_example="load.max_seconds=5",
                       presets=CONFIG_DIR, quick_help="short run (preset 'quick', <= 60 s)")
    parser.add_argument("--output", help="result JSON (plots next to it); default bench/results/<benchmark>.json")
    parser.add_argument("--no-plots", action="store_true")


def _run_serve(args: argparse.Namespace) -> int:
    from bench.report import print_serve_table, provenance, write_results
    from bench.serving import run_serve_benchmark
    from bertforge.config import to_dict

    if args.api and not args.task:  # the API route decides the model
        args.task = API_TASKS[args.api]
    config = _config(args, "serve", _serve_flags(args))
    if args.url and not args.repo:
        from bertforge.errors import UserError

        raise UserError("--url needs --repo: the repository that server serves (its tokenizer cuts the texts)")
    results = provenance(to_dict(config)) | run_serve_benchmark(
        config, repo=_path(args.repo), model_dir=_path(args.model), url=args.url)
    print_serve_table(results)
    for path in write_results(results, config.output, plots=config.plots):
        print(f"written: {path}")
    return 0


def _serve_flags(args: argparse.Namespace) -> dict:
    """`bench serve`'s own flags -> BenchConfig keys (None: not given)."""
    no_baselines = False if args.no_baselines else None
    return {"load.concurrency": args.concurrency, "load.request_rate": args.rate, "texts.length": args.length,
            "texts.fixed_words": args.words, "rounds": args.rounds, "load.max_seconds": args.seconds,
            "load.max_requests": args.requests, "api": args.api, "compare_url": args.compare_url, "baselines.pipeline": no_baselines,
            "baselines.onnxruntime": no_baselines, "baselines.batching_off": no_baselines}


def _run_tune(args: argparse.Namespace) -> int:
    import tempfile

    from bench.report import provenance, write_results
    from bench.serving import resolve_repository
    from bench.tune import print_tune_table, run_tuner
    from bertforge.config import to_dict

    config = _config(args, "tune", {"tune.p99_bound_ms": args.bound_ms})
    with tempfile.TemporaryDirectory(prefix="bertforge-tune-export-") as scratch:
        repo = resolve_repository(_path(args.repo), _path(args.model), Path(scratch), config.task, print,
                                  config.precision)
        results = provenance(to_dict(config)) | run_tuner(config, repo)
    print_tune_table(results)
    for path in write_results(results, config.output, plots=False):
        print(f"written: {path}")
    return 0


def _run_profile(args: argparse.Namespace) -> int:
    import tempfile

    from bench.profile_serving import print_profile, run_profile
    from bench.report import provenance, write_results
    from bench.serving import resolve_repository
    from bertforge.config import to_dict

    if args.concurrency < 1 or args.seconds <= 0:
        from bertforge.errors import UserError

        raise UserError("--concurrency must be >= 1 and --seconds > 0")
    config = _config(args, "profile", {})
    with tempfile.TemporaryDirectory(prefix="bertforge-profile-export-") as scratch:
        repo = resolve_repository(_path(args.repo), _path(args.model), Path(scratch), config.task, print,
                                  config.precision)
        results = provenance(to_dict(config)) | run_profile(config, repo, args.concurrency, args.seconds)
    print_profile(results)
    for path in write_results(results, config.output, plots=False):
        print(f"written: {path}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from bench.report import print_compare_table
    from bench.stats import compare_results
    from bertforge.errors import UserError

    documents = []
    for name in (args.first, args.second):
        path = Path(name)
        if not path.is_file():
            raise UserError(f"result file not found: {path}")
        try:
            documents.append(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise UserError(f"{path} is not JSON ({error}); pass files written by `bertforge bench`") from None
    if documents[0].get("benchmark") != documents[1].get("benchmark"):
        raise UserError(f"cannot compare a {documents[0].get('benchmark')!r} result with a "
                        f"{documents[1].get('benchmark')!r} result")
    rows = compare_results(*documents, max_throughput_drop=args.max_throughput_drop,
                           max_latency_rise=args.max_latency_rise)
    if not rows:
        raise UserError("the two files share no (contender, load) point; nothing to compare")
    print_compare_table(rows, args.first, args.second)
    regressions = [row for row in rows if row["regression"]]
    print(f"{len(regressions)} regression(s) in {len(rows)} compared point(s)")
    return 1 if regressions else 0


def _config(args: argparse.Namespace, benchmark: str, flags: dict):
    """The BenchConfig: preset or --config file < --set < explicit flags (bertforge/cli_options.py)."""
    from bertforge.config import load_config

    common = {"task": args.task, "precision": args.precision or None, "plots": False if args.no_plots else None,
              "output": _path(args.output)}
    config = build_config(partial(load_config, BenchConfig), args, flags=given(common | flags))
    if config.output == BenchConfig().output and benchmark != "serve":
        config.output = config.output.with_name(f"{benchmark}.json")
    return config


def _integers(text: str) -> tuple[int, ...]:
    """`--concurrency 1,4,16` -> (1, 4, 16)."""
    try:
        return tuple(int(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,4,16, got {text!r}") from None


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


if __name__ == "__main__":
    from bertforge.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
