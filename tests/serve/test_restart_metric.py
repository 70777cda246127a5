"""The supervisor's restart counts reach the API's /metrics as bertforge_triton_restarts_total{reason}."""

from __future__ import annotations

from prometheus_client import generate_latest

from serve.api.metrics import RESTARTS_FILE_ENV, ApiMetrics
from serve.supervisor import Supervisor


def test_restart_counts_are_exported_by_reason(tmp_path, monkeypatch):
    counts = tmp_path / "restarts.json"
    monkeypatch.setenv(RESTARTS_FILE_ENV, str(counts))
    metrics = ApiMetrics()
    assert b"bertforge_triton_restarts_total{" not in generate_latest(metrics.registry)  # none yet, file absent

    supervisor = Supervisor(server=None, models=[], counts_file=counts, log=lambda line: None)
    supervisor.record_restart("probe_failed")
    supervisor.record_restart("probe_failed")
    supervisor.record_restart("exited")

    exposition = generate_latest(metrics.registry).decode()
    assert 'bertforge_triton_restarts_total{reason="probe_failed"} 2.0' in exposition
    assert 'bertforge_triton_restarts_total{reason="exited"} 1.0' in exposition
