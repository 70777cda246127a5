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
    rows = {row["row"]: row for row in json.loads(output.read_text())}
    train_rows = [name for name in rows if name.startswith("train ")]
    assert sorted(train_rows) == sorted(f"train fp32 {mode} {head} head" for mode in ("eager", "compiled")
                                        for head in ("sparse", "dense"))
    assert all(rows[name]["tokens_per_s"] > 0 for name in train_rows)
    assert rows["infer pytorch fp32 b1x32"]["median_ms"] > 0
    assert rows["infer onnxruntime fp32 b4x32"]["sequences_per_s"] > 0
    assert "GPU check on cpu" in result.stdout


def test_gpu_check_refuses_to_run_without_cuda_unless_dry():
    result = subprocess.run([sys.executable, "bench/gpu_check.py"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--dry-run" in result.stderr
