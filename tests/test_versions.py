"""bertforge.versions: one home for installed versions, used by `--version` and by every benchmark's provenance."""

import subprocess
import sys

import numpy

from bertforge.versions import installed_version


def test_installed_version_of_a_distribution_or_none():
    assert installed_version("numpy") == numpy.__version__
    assert installed_version("no-such-distribution-for-bertforge") is None


def test_version_flag_and_bench_provenance_report_the_same_versions(monkeypatch):
    import bench.report

    result = subprocess.run([sys.executable, "-m", "bertforge", "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == f"bertforge {installed_version('bertforge')}"
    versions = bench.report.provenance()["versions"]
    assert versions["numpy"] == numpy.__version__ and versions["bertforge"] == installed_version("bertforge")
    monkeypatch.setattr(bench.report, "installed_version", lambda name: None if name == "torch" else "1.0")
    assert "torch" not in bench.report.provenance()["versions"]  # not installed: left out, not null
