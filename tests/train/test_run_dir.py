"""bertforge/run_dir.py: the run folder's layout, its state (fresh / started / finished) and whether a config may
resume it, and why; on hand-made folders and on a real finished run."""

from pathlib import Path

import pytest

from bertforge.config import save_config
from bertforge.run_dir import RESUME_INVARIANTS, RunDir, RunStatus, checkpoint_folders
from train.config import load_train_config


@pytest.fixture
def tiny_config(tiny_config_file):
    return load_train_config(tiny_config_file)


def started_run(folder: Path, config) -> RunDir:
    run = RunDir(folder)
    run.path.mkdir(parents=True)
    save_config(config, run.config_file)
    return run


def test_the_default_folder_is_runs_slash_name_unless_a_run_dir_is_given(tmp_path):
    assert RunDir.for_run("demo") == RunDir(Path("runs") / "demo")
    assert RunDir.for_run("demo", "") == RunDir("runs/demo")
    assert RunDir.for_run("demo", tmp_path / "mine").path == tmp_path / "mine"
    assert RunDir(RunDir(tmp_path)) == RunDir(tmp_path) and Path(RunDir(tmp_path)) == tmp_path


def test_layout(tmp_path):
    run = RunDir(tmp_path)
    assert (run.config_file, run.tokenizer_dir, run.checkpoints_dir, run.model_dir) == (
        tmp_path / "config.toml", tmp_path / "tokenizer", tmp_path / "checkpoints", tmp_path / "model")
    assert (run.metrics_file, run.tensorboard_dir, run.loss_curve_file) == (
        tmp_path / "metrics.jsonl", tmp_path / "tensorboard", tmp_path / "loss_curve.png")


def test_a_missing_or_empty_folder_is_fresh_and_not_resumable(tmp_path, tiny_config):
    for run in (RunDir(tmp_path / "missing"), RunDir(tmp_path)):
        assert run.status is RunStatus.FRESH and not run.holds_training()
        verdict = run.resumability(tiny_config)
        assert not verdict.resumable and "holds no run yet" in verdict.reason and verdict.differences == ()


def test_started_holds_training_once_a_checkpoint_exists_and_finished_once_model_is_written(tmp_path, tiny_config):
    run = started_run(tmp_path / "run", tiny_config)
    assert run.status is RunStatus.STARTED and not run.holds_training()  # killed before its first checkpoint
    (run.checkpoints_dir / "step-20").mkdir(parents=True)
    assert run.status is RunStatus.STARTED and run.holds_training()
    run.model_dir.mkdir()
    assert run.status is RunStatus.STARTED  # a model/ folder without config.json is not a finished model
    (run.model_dir / "config.json").write_text("{}")
    assert run.status is RunStatus.FINISHED and run.holds_training()
    verdict = run.resumability(tiny_config)
    assert verdict.resumable and "finished run of the same setup" in verdict.reason, verdict


def test_a_different_setup_is_not_resumable_and_the_reason_names_each_key(tmp_path, tiny_config_file, tiny_config):
    run = started_run(tmp_path / "run", tiny_config)
    # what the weights and the data position do not depend on may change
    assert run.resumability(load_train_config(tiny_config_file, ["train.max_steps=999", "log.every=1"])).resumable
    other = load_train_config(tiny_config_file, ["model.num_hidden_layers=3", "train.seed=7"])
    verdict = run.resumability(other)
    assert not verdict.resumable
    assert verdict.differences == ("model.num_hidden_layers: 2 -> 3", "train.seed: 1234 -> 7")
    assert "started run of a different setup" in verdict.reason and "model.num_hidden_layers: 2 -> 3" in verdict.reason


def test_the_objective_picks_its_resume_invariants(tmp_path, continued_config_file, source_mlm):
    simcse = ["train.objective=simcse", f"model.init_from={source_mlm}"]
    run = started_run(tmp_path / "run", load_train_config(continued_config_file, simcse))
    assert set(RESUME_INVARIANTS) == {"mlm", "simcse"}
    assert run.resumability(load_train_config(continued_config_file, [*simcse, "simcse.temperature=0.1"])).resumable
    verdict = run.resumability(load_train_config(continued_config_file, [*simcse, "simcse.pooling=cls"]))
    assert verdict.differences == ("simcse.pooling: 'mean' -> 'cls'",)


def test_checkpoint_folders_are_the_numbered_ones_in_step_order(tmp_path):
    for name in ("step-100", "step-20", ".tmp-step-30", "step-latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-5").write_text("a file, not a checkpoint")
    assert [p.name for p in checkpoint_folders(tmp_path)] == ["step-20", "step-100"]
    assert checkpoint_folders(tmp_path / "missing") == []


def test_a_real_finished_run_reads_as_finished_and_resumable_by_its_own_config(trained_run, tiny_config):
    run = RunDir(trained_run)
    assert run.status is RunStatus.FINISHED
    assert run.config_file.is_file() and (run.tokenizer_dir / "tokenizer.json").is_file()
    assert run.metrics_file.is_file() and run.loss_curve_file.is_file()
    assert [p.name for p in checkpoint_folders(run.checkpoints_dir)] == ["step-60", "step-80"]
    assert run.resumability(tiny_config).resumable
