"""The int8 gate's verdict on trained models is stable: other seeds pass with margin (auto picks int8)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
@pytest.mark.int8_kernel
def test_verdict_is_stable_on_trained_models(seed, tiny_config_file, tmp_path):
    """Models trained with other seeds (the tiny test config, real CLI) pass the int8 gate with margin."""
    from export import export_to_repository
    from export.config import ParityGates
    from tests.conftest import COUNTED_SEARCH
    from tests.train.conftest import run_cli

    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", str(tiny_config_file), "--run-dir", str(run_dir), "--set", f"train.seed={seed}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = export_to_repository(run_dir / "model", tmp_path / "repo", progress=False, **COUNTED_SEARCH)
    gates = ParityGates()
    _, fill = report.tasks["fill_mask"].served
    text = fill.parity["by_source"]["text"]
    assert text["masked_tokens"] >= gates.min_masks
    assert text["tie_aware_agreement"] >= gates.int8_tie_aware + 0.01 and text["top5_containment"] >= gates.int8_top5 + 0.01
    _, embed = report.tasks["embed"].served
    assert embed.parity["by_source"]["text"]["min_cosine"] >= 0.995
