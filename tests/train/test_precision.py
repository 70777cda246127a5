"""train.precision = "auto": measured once per process, explained in the log; bf16 on CPU trains."""

import pytest
import torch

import train.precision as precision
from train.config import load_train_config
from train.logger import read_metrics
from train.trainer import run_training


def test_explicit_precision_is_kept_and_cpu_auto_follows_the_measurement(monkeypatch):
    assert precision.choose_precision("bf16", use_cuda=False) == ("bf16", "train.precision = 'bf16'")
    # while auto never picks bf16 on CPU, nothing is measured (the probe took 40-76 s where bf16 is emulated)
    monkeypatch.setattr(precision, "CPU_AUTO_PICKS_BF16", False)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: pytest.fail("measured although auto cannot pick bf16"))
    chosen, why = precision.choose_precision("auto", use_cuda=False)
    assert chosen == "fp32" and "train.precision = 'bf16'" in why
    monkeypatch.setattr(precision, "CPU_AUTO_PICKS_BF16", True)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 0.6)  # emulated bf16 (AVX2-only CPUs)
    chosen, why = precision.choose_precision("auto", use_cuda=False)
    assert chosen == "fp32" and "0.60x" in why and "needs >= 1.3x" in why
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 4.0)  # AMX
    assert precision.choose_precision("auto", use_cuda=False) == ("bf16", "auto: bf16 autocast matmul runs 4.00x fp32 "
                                                                   f"on this CPU ({torch.get_num_threads()} threads)")


def test_cpu_probe_measures_once_per_process():
    precision.cpu_bf16_speedup.cache_clear()
    first = precision.cpu_bf16_speedup()
    assert first > 0 and precision.cpu_bf16_speedup() == first
    assert precision.cpu_bf16_speedup.cache_info().misses == 1


def test_bf16_autocast_trains_on_cpu_and_logs_held_out_loss_during_the_run(tiny_config_file, tmp_path):
    chosen = "bf16"
    config = load_train_config(tiny_config_file, [f"train.precision={chosen}", "train.max_steps=40"])
    run_dir = run_training(config, tmp_path / "run")
    metrics = read_metrics(run_dir)
    assert [m["precision"] for m in metrics if "precision" in m] == [chosen]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0] - 0.5, losses  # finite, falling
    held_out = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    assert [step for step, _ in held_out] == [20, 40]  # eval_every = 20, then the final evaluation
    assert all(m["eval_s"] > 0 for m in metrics if "eval_loss" in m)


@pytest.mark.parametrize("screen, full_probe_runs", [(0.014, False), (0.51, True)])
def test_the_small_screen_settles_emulated_bf16_without_the_full_probe(monkeypatch, screen, full_probe_runs):
    """Emulated bf16 (AVX2-only CPUs, ~0.014x fp32) is settled by the 256-wide screen instead of ~40 s of full
    probe in every training process; native bf16, 0.51 on the screen (autocast's casts), gets the full probe."""
    sizes = []

    def speedup(size: int, repeats: int) -> float:
        sizes.append(size)
        return screen if size == precision.SCREEN_SIZE else 2.0

    monkeypatch.setattr(precision, "_matmul_speedup", speedup)
    precision.cpu_bf16_speedup.cache_clear()
    try:
        assert precision.cpu_bf16_speedup() == (2.0 if full_probe_runs else screen)
        assert sizes == ([precision.SCREEN_SIZE, precision.PROBE_SIZE] if full_probe_runs else [precision.SCREEN_SIZE])
    finally:
        precision.cpu_bf16_speedup.cache_clear()
