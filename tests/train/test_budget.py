"""The schedule over a wall-clock budget: annealed when the time runs out, continued across a resume."""

import json
import shutil

import pytest
import torch

from bertforge.config import ConfigError
from train.checkpoint import checkpoint_folders
from train.config import OptimConfig, load_train_config
from train.optim import lr_at
from train.trainer import run_training

BUDGET_MINUTES = 0.05  # 3 s of the stepping clock below; max_steps is out of reach, so the time ends the run
BUDGET_RUN = ["train.max_steps=100000", f"train.max_minutes={BUDGET_MINUTES}", "train.eval_every=0",
              "log.every=1000", "checkpoint.every=4", "checkpoint.keep=100000"]


class SteppingClock:
    """The budget's clock, made machine-independent: every reading is 0.05 s after the previous one."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.05
        return self.now


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "lr" in r]


@pytest.fixture(scope="module")
def budget_run(tiny_config_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("budget") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("train.budget.time", SteppingClock())
        return run_training(load_train_config(tiny_config_file, BUDGET_RUN), run_dir)


def test_without_a_budget_the_schedule_is_the_per_step_one():
    config = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 100, config) == pytest.approx(0.1)
    assert lr_at(9, 100, config) == pytest.approx(1.0)
    assert lr_at(55, 100, config) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(100, 100, config) == pytest.approx(0.1)
    # A budget further along than the steps takes over; one behind them changes nothing
    assert lr_at(55, 100, config, budget_used=1.0) == pytest.approx(0.1)
    assert lr_at(55, 100, config, budget_used=0.1) == lr_at(55, 100, config)
    assert lr_at(0, 100, config, budget_used=0.05) == pytest.approx(0.5)  # half-way through the warm-up share
    steps_only = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule_unit="steps")
    assert lr_at(55, 100, steps_only, budget_used=1.0) == lr_at(55, 100, config)


def test_warmup_stable_decay_holds_the_peak_then_decays_over_its_share():
    """schedule "wsd": warm-up, the peak until the last decay_fraction of the run, then linear to the floor; the
    same over a wall-clock budget."""
    config = OptimConfig(lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.1)
    assert lr_at(9, 100, config) == pytest.approx(1.0)
    assert [lr_at(step, 100, config) for step in (10, 50, 80)] == pytest.approx([1.0, 1.0, 1.0])
    assert lr_at(90, 100, config) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(100, 100, config) == pytest.approx(0.1)
    assert lr_at(0, 100, config, budget_used=0.5) == pytest.approx(1.0)
    assert lr_at(0, 100, config, budget_used=0.9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(0, 100, config, budget_used=1.0) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="decay_fraction"):
        OptimConfig(schedule="wsd", decay_fraction=0.0)


@pytest.mark.slow
def test_a_time_budget_run_ends_at_the_lr_floor(budget_run):
    steps = step_records(read_metrics(budget_run))
    assert len(steps) == 1 and 10 <= steps[-1]["step"] < 100000  # the last step is logged; the budget ended the run
    assert steps[-1]["lr"] == 0.0  # min_lr_ratio 0: the floor
    assert BUDGET_MINUTES * 60 - 0.2 <= steps[-1]["elapsed_s"] <= BUDGET_MINUTES * 60 + 0.2  # ends at the budget
    # On the way: near the peak first, then decaying (the checkpoints hold the time each step was reached)
    checkpoints = checkpoint_folders(budget_run / "checkpoints")
    used = [torch.load(c / "trainer_state.pt", weights_only=True)["elapsed_s"] / (BUDGET_MINUTES * 60)
            for c in checkpoints]
    assert used == sorted(used) and used[0] < 0.3
    assert (budget_run / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_resume_under_a_time_budget_continues_the_schedule_from_the_saved_time(budget_run, tiny_config_file, tmp_path,
                                                                              monkeypatch):
    config = load_train_config(tiny_config_file, BUDGET_RUN)
    budget_s = BUDGET_MINUTES * 60
    # Keep only a checkpoint from around the middle of the budget, as if the run had been killed there
    run_dir = tmp_path / "resumed"
    shutil.copytree(budget_run, run_dir)
    shutil.rmtree(run_dir / "model")
    elapsed = {c: torch.load(c / "trainer_state.pt", weights_only=True)["elapsed_s"]
               for c in checkpoint_folders(run_dir / "checkpoints")}
    middle = min(elapsed, key=lambda c: abs(elapsed[c] / budget_s - 0.5))
    for folder in checkpoint_folders(run_dir / "checkpoints"):
        if folder != middle:
            shutil.rmtree(folder)
    saved_step, used = int(middle.name.split("-")[1]), elapsed[middle] / budget_s
    assert 0.15 < used < 0.85
    logged_before = len(read_metrics(run_dir))

    monkeypatch.setattr("train.budget.time", SteppingClock())
    run_training(load_train_config(tiny_config_file, [*BUDGET_RUN, "log.every=1"]), run_dir, resume=True)

    resumed = step_records(read_metrics(run_dir)[logged_before:])
    assert resumed[0]["step"] == saved_step + 1  # log.every is 1 here
    # The first resumed step's LR is the schedule's at the saved time (plus start-up), not a fresh budget's peak
    assert lr_at(saved_step, config.train.max_steps, config.optim, used + 0.05) <= resumed[0]["lr"]
    assert resumed[0]["lr"] <= lr_at(saved_step, config.train.max_steps, config.optim, used)
    # ... and it ends at the floor when the whole budget (both processes together) is spent
    assert resumed[-1]["lr"] == 0.0
    assert resumed[-1]["elapsed_s"] <= budget_s + 0.2
