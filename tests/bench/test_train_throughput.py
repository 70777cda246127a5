"""bench/train_throughput.py: both contenders train side by side and the report holds their ratio."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_training_benchmark_runs_both_contenders(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    config = tmp_path / "bench.toml"
    config.write_text(f'name = "bench"\n[data]\ntrain = "{tiny_corpus_dir}/train.txt"\n'
                      f'eval = "{tiny_corpus_dir}/eval.txt"\nnum_proc = 1\n[optim]\nwarmup_steps = 2\n'
                      '[log]\nevery = 1\n')
    # each contender stops at 20 steps, so what is timed does not depend on the machine's speed (a time budget
    # of 8 s logged 2 steps on a fresh clone beside the demo); the 300 s budget only guards against a hang
    output = tmp_path / "train.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.train_throughput", "--config", str(config), "--preset", "tiny", "--seq-len", "32",
         "--batch-size", "8", "--seconds", "300", "--max-steps", "20", "--tokenizer", str(tiny_tokenizer_dir), "--output", str(output),
         "--precision", "auto"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "BERTFORGE_CACHE": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    ours, theirs = report["summary"]["bertforge"], report["summary"]["hf_trainer"]
    assert ours["tokens_per_s"] > 0 and theirs["tokens_per_s"] > 0 and ours["steps"] == 20 and theirs["steps"] == 20
    assert report["speedup_tokens_per_s"] == pytest.approx(ours["tokens_per_s"] / theirs["tokens_per_s"])
    assert 0 <= ours["eval_accuracy"] <= 1 and 0 <= theirs["eval_accuracy"] <= 1
    # auto is resolved once (bf16 where this CPU's bf16 matmul is faster) and both contenders train in it
    assert ours["precision"] == theirs["precision"] == report["machine"]["precision"] in ("fp32", "bf16")
    assert "speed-up (tokens/s, bertforge / HF Trainer)" in result.stdout
