"""`bertforge bench` subcommands: --help everywhere, compare's exit codes, no torch at import."""

import json
import re
import subprocess
import sys

import pytest

from bertforge.cli import main


@pytest.mark.parametrize("benchmark", ["serve", "tune", "profile", "compare", "train", "export"])
def test_every_bench_subcommand_has_help(benchmark):
    result = subprocess.run([sys.executable, "-m", "bertforge.cli", "bench", benchmark, "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("benchmark, module, flags", [
    ("train", "bench.train_throughput", ["--seq-len", "--batch-size", "--seconds", "--rounds", "--tokenizer", "--precision"]),
    ("export", "bench.export_latency", ["--model", "--build-mini", "--rounds", "--threads", "--json"]),
])
def test_bench_module_commands_help_shows_the_module_flags(benchmark, module, flags):
    """They are subcommands with the module's own flags, and `python -m <module>` still runs the same parser."""
    for command, usage in ([["-m", "bertforge.cli", "bench", benchmark], f"usage: bertforge bench {benchmark}"],
                           [["-m", module], f"usage: python -m {module}"]):
        result = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(usage), result.stdout[:200]
        assert [flag for flag in flags if flag not in result.stdout] == []


def test_bench_lists_only_benchmarks():
    """The HPA simulation measures nothing: it is deploy's (`python -m deploy.autoscale`), not a benchmark."""
    result = subprocess.run([sys.executable, "-m", "bertforge.cli", "bench", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^    (\w+) ", result.stdout.split("positional arguments:", 1)[1], re.M)
    assert {"serve", "tune", "profile", "compare", "train", "export"} <= set(listed) and "autoscale" not in listed


def test_bench_export_without_a_model_is_a_user_error(capsys):
    assert main(["bench", "export", "--rounds", "1"]) == 2
    assert "give --model DIR or --build-mini DIR" in capsys.readouterr().err


def test_bench_train_refuses_an_unknown_model_size_listing_the_known_ones(capsys):
    assert main(["bench", "train", "--preset", "huge"]) == 2
    assert "unknown preset 'huge' (no train/configs/models/huge.toml); available: base, large" in capsys.readouterr().err


def test_unknown_bench_preset_lists_the_available_ones(capsys):
    assert main(["bench", "serve", "--preset", "fastest", "--repo", "none"]) == 2
    assert "unknown preset 'fastest' (no bench/configs/fastest.toml); available: full, quick" in capsys.readouterr().err


def test_bench_modules_import_no_torch():
    code = ("import sys, bench.cli, bench.serving, bench.tune, bench.report, bench.load; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _result(path, throughput):
    path.write_text(json.dumps({"benchmark": "serve", "points": [
        {"contender": "triton", "concurrency": 16, "requests_per_s": throughput, "p99_ms": 50.0, "errors": 0}]}))
    return str(path)


def test_compare_exits_1_on_a_regression_and_0_otherwise(tmp_path, capsys):
    old, slower, same = _result(tmp_path / "a.json", 200.0), _result(tmp_path / "b.json", 120.0), _result(tmp_path / "c.json", 195.0)
    assert main(["bench", "compare", old, slower]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main(["bench", "compare", old, same]) == 0
    assert main(["bench", "compare", old, slower, "--max-throughput-drop", "0.5"]) == 0


def test_compare_rejects_missing_or_mismatched_files(tmp_path, capsys):
    old = _result(tmp_path / "a.json", 200.0)
    assert main(["bench", "compare", old, str(tmp_path / "none.json")]) == 2
    (tmp_path / "t.json").write_text(json.dumps({"benchmark": "tune", "points": []}))
    assert main(["bench", "compare", old, str(tmp_path / "t.json")]) == 2
    assert "cannot compare" in capsys.readouterr().err


def test_serve_without_repo_or_model_is_a_user_error(capsys):
    assert main(["bench", "serve", "--no-plots", "--output", "/tmp/never.json"]) == 2
    assert "--repo" in capsys.readouterr().err
