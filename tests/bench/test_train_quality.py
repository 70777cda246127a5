"""bench/train_quality.py: the yardstick's arithmetic (time to a target on a curve, medians, ratios) and one
short real round of every contender on the tiny corpus."""

import json
import math
import subprocess
import sys

import pytest

from bench.train_quality import first_reaching, summarize


def curve(*points):
    return [{"step": 10 * i, "tokens_seen": 1000 * i, "elapsed_s": seconds, "eval_loss": loss, "eval_accuracy": 0.1}
            for i, (seconds, loss) in enumerate(points, start=1)]


def run(points, cloze=0.2):
    shape = curve(*points)
    return {"curve": shape, "final": shape[-1], "probes": {"cloze_top1": cloze, "probe_knn_accuracy": 0.55}}


def test_time_to_target_is_interpolated_between_evaluations_and_none_when_never_reached():
    shape = curve((60, 6.0), (120, 5.0), (180, 4.0))
    assert first_reaching(shape, 6.5) == {"elapsed_s": 60, "tokens_seen": 1000}  # reached at the first evaluation
    assert first_reaching(shape, 4.5) == pytest.approx({"elapsed_s": 150, "tokens_seen": 2500})  # half-way
    assert first_reaching(shape, 3.9) is None


def test_summary_reports_medians_targets_and_the_new_vs_today_ratios():
    runs = {"stock": [run([(60, 7.0), (420, 6.0)]), run([(60, 7.0), (420, 6.2)]), run([(60, 7.0), (420, 5.8)])],
            "today": [run([(60, 6.0), (420, 5.0)], 0.20)] * 3,
            "new": [run([(60, 5.5), (210, 5.0), (420, 4.5)], 0.26)] * 3}
    reach = [run([(105, 5.9)])] * 3
    summary = summarize(runs, reach, minutes=7)
    stock, today, new = (summary["contenders"][name] for name in ("stock", "today", "new"))
    assert stock["eval_loss"] == {"median": 6.0, "min": 5.8, "max": 6.2, "n": 3}
    assert stock["eval_perplexity"]["median"] == pytest.approx(math.exp(6.0))
    assert today["to_stock_loss"]["seconds"]["median"] == 60  # stock's median 6.0: today is there at its first point
    assert new["to_today_loss"]["seconds"]["median"] == 210 and today["to_today_loss"]["reached"] == 3
    assert summary["new_vs_today"]["time_to_today_loss_speedup"] == pytest.approx(420 / 210)
    assert summary["new_vs_today"]["cloze_ratio"] == pytest.approx(0.26 / 0.20)
    assert stock["to_today_loss"]["reached"] == 0 and stock["to_today_loss"]["seconds"]["median"] == math.inf
    # the quarter-budget runs end at 5.9: two stock runs never get there, the third at 60 + 360 * 1.1 / 1.2 s
    assert summary["reach"]["new_quarter_loss"] == 5.9
    assert summary["reach"]["stock_seconds_to_reach"] == [None, None, pytest.approx(390)]


@pytest.mark.slow
def test_one_short_round_of_every_contender_on_the_tiny_corpus(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    """Every contender through its real entry point (bench/train_hf.py, bertforge train) for a few seconds each,
    probes included; the JSON and the PNG are written."""
    from tests.train.conftest import TINY_CONFIG

    tiny_config_file = tmp_path / "tiny.toml"
    tiny_config_file.write_text(TINY_CONFIG.format(corpus=tiny_corpus_dir, tokenizer=tiny_tokenizer_dir))
    output = tmp_path / "quality.json"
    done = subprocess.run([sys.executable, "-m", "bertforge", "bench", "quality", "--minutes", "0.15", "--pairs", "1",
                           "--stock-lr", "1e-3", "--reach", "--today-config", str(tiny_config_file),
                           "--new-config", str(tiny_config_file), "--tokenizer", str(tiny_tokenizer_dir),
                           "--workdir", str(tmp_path / "runs"), "--output", str(output)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    results = json.loads(output.read_text())
    assert set(results["runs"]) == {"stock", "stock-init", "same-start", "today", "new"} and len(results["reach_runs"]) == 1
    for name, runs in results["runs"].items():
        final = runs[0]["final"]
        assert final["eval_loss"] > 0 and final["elapsed_s"] > 0 and final["tokens_seen"] > 0, name
        assert 0 <= runs[0]["probes"]["cloze_top1"] <= 1, name
    assert output.with_suffix(".png").stat().st_size > 1000
