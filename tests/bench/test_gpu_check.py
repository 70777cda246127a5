"""bench/gpu_check.py runs its every code path on CPU with --dry-run (the GPU run itself needs a device)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_gpu_check_dry_run_produces_every_row(tmp_path):
    output = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--output", str(output)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())
    assert {"machine", "versions", "git", "command"} <= set(results) and results["config"]["dry_run"]  # bench.report
    rows = {row["row"]: row for row in results["rows"]}
    assert not [row for row in rows.values() if "error" in row]
    train_rows = [name for name in rows if name.startswith("train ")]
    levers = ["train bert fp32 compiled sparse head b8", "train bert fp32 compiled sparse head b4 vocab 512"]  # 500 -> 512
    modern = [f"train modernbert fp32 {mode} sparse head b4" for mode in ("eager", "compiled")]
    assert sorted(train_rows) == sorted([*(f"train bert fp32 {mode} {head} head b4" for mode in ("eager", "compiled")
                                           for head in ("sparse", "dense")), *levers, *modern])
    assert all(rows[name]["tokens_per_s"] > 0 for name in train_rows)
    assert rows["matmul fp32 256^3"]["flops_per_s"] > 1e8
    assert rows["infer pytorch fp32 b1x32"]["median_ms"] > 0
    assert rows["infer onnxruntime fp32 b4x32"]["sequences_per_s"] > 0
    assert "GPU check on cpu" in result.stdout


def test_a_failing_row_becomes_an_error_row_and_the_exit_status_says_so():
    from bench.gpu_check import _guarded

    def out_of_memory():
        raise RuntimeError("CUDA out of memory")

    assert _guarded("train x", out_of_memory) == {"row": "train x", "error": "RuntimeError: CUDA out of memory"}
    assert _guarded("infer y", out_of_memory, many=True)[0]["row"] == "infer y"
    assert _guarded("fine", lambda: {"row": "fine"}) == {"row": "fine"}


def test_gpu_check_refuses_to_run_without_cuda_unless_dry():
    result = subprocess.run([sys.executable, "bench/gpu_check.py"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--dry-run" in result.stderr


@pytest.mark.slow
def test_gpu_run_dry_run_rehearses_the_device_session(tmp_path, tiny_corpus_dir):
    """bench/gpu_run.sh --dry-run: every step of the GPU session on CPU, one JSON with every figure."""
    import os
    from pathlib import Path

    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "BERTFORGE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    (tmp_path / "wheels").mkdir()  # the device's cp312 wheels (.whl/) would not install into this interpreter
    result = subprocess.run(["bash", "bench/gpu_run.sh", "--dry-run", "--out", str(out), "--wheels", str(tmp_path / "wheels"),
                             "--train", str(tiny_corpus_dir / "train.txt"), "--eval", str(tiny_corpus_dir / "eval.txt")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((out / "gpu_run.json").read_text())
    assert report["command"].startswith("bash bench/gpu_run.sh --dry-run --out") and report["config"]["dry_run"]
    assert {"machine", "versions", "git"} <= set(report)  # written through bench.report, like every benchmark
    steps = {step["step"]: step["rc"] for step in report["steps"]}
    names = ("environment", "gpu_check", "train_modernbert", "train", "resume")
    assert {name: steps.get(name) for name in names} == dict.fromkeys(names, 0), steps
    assert isinstance(report["export_fp16"]["rc"], int)  # recorded either way (CPU EP: not decisive)
    assert any(row["row"].startswith("train bert fp32 eager sparse head") for row in report["gpu_check"])
    assert report["train"]["tokens_per_s_median"] > 0 and report["train"]["held_out"]
    assert report["train_modernbert"]["tokens_per_s_median"] > 0 and report["train_modernbert"]["held_out"]
    assert all(loss is not None for loss in report["recipes_at_equal_time"].values())
    assert report["resume"]["final_step"] == report["resume"]["from_step"] + 3
    assert (out / "metrics.jsonl").is_file() and (out / "gpu_run.log").is_file()
