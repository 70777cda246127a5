"""`serve.launcher`: clear platform errors, failed starts carry the log tail, the process is always stopped."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time

import psutil
import pytest

from bertforge.served_model import ServedModelDir
from bertforge.tasks import EMBED, FILL_MASK
from serve import launcher
from serve.launcher import LaunchError, TritonServer, check_platform, running_server


def test_platform_errors_say_what_is_missing(monkeypatch):
    check_platform()  # this machine can run it
    monkeypatch.setattr(launcher, "installed_version", lambda name: "2.1.0")
    with pytest.raises(LaunchError, match=r"numpy<2"):
        check_platform()
    monkeypatch.undo()
    monkeypatch.setattr(launcher.os, "confstr", lambda name: "glibc 2.31")
    with pytest.raises(LaunchError, match=r"glibc >= 2.35 \(found glibc 2.31\)"):
        check_platform()
    monkeypatch.undo()
    real = sysconfig.get_config_var
    monkeypatch.setattr(launcher.sysconfig, "get_config_var",
                        lambda name: 0 if name == "Py_ENABLE_SHARED" else real(name))
    with pytest.raises(LaunchError, match="shared libpython"):
        check_platform()


def test_repository_without_weights_is_explained(tmp_path):
    # The committed repository without what an export writes (the demo may have exported into it)
    shutil.copytree(launcher.Path(__file__).resolve().parents[2] / "model_repository", tmp_path / "repo",
                    ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data", "tokenizer", "serving.json",
                                                  "export_report*.json", "export_config.toml", "__pycache__"))
    with pytest.raises(LaunchError, match=r"missing .*fill_mask/1/model.onnx.*bertforge export"):
        with running_server(tmp_path / "repo", grpc_port=0, http_port=0, metrics_port=0):
            pass
    with pytest.raises(LaunchError, match="model repository not found"):
        with running_server(tmp_path / "nowhere", grpc_port=0, http_port=0, metrics_port=0):
            pass


@pytest.mark.slow
def test_clean_exit_removes_the_work_folder_a_failed_start_keeps_it(served_repo, tmp_path):
    with running_server(served_repo, grpc_port=0, http_port=0, metrics_port=0) as server:
        assert (server.workdir / "tritonserver.log").is_file()
    assert not server.workdir.exists()
    broken = tmp_path / "broken"
    shutil.copytree(served_repo, broken)
    ServedModelDir.in_repo(broken, FILL_MASK).onnx_file.write_bytes(b"not an onnx file")
    with pytest.raises(LaunchError) as caught:
        with running_server(broken, grpc_port=0, http_port=0, metrics_port=0, ready_timeout_s=60):
            pass
    log = str(caught.value).split("(log: ")[1].split(")")[0]
    assert launcher.Path(log).is_file()  # the log a failure names is still there


@pytest.mark.slow
def test_failed_start_reports_the_log_tail_and_leaves_no_process(served_repo, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(served_repo, broken)
    ServedModelDir.in_repo(broken, EMBED).onnx_file.write_bytes(b"not an onnx file")
    server = TritonServer(broken, "127.0.0.1", 0, 0, 0)
    with pytest.raises(LaunchError, match=r"(?s)exited with code .*embed") as caught:
        server.start(ready_timeout_s=60)
    assert f"log: {server.log_path}" in str(caught.value)
    assert server.process.poll() is not None


@pytest.mark.slow
def test_server_dies_with_a_launcher_that_is_killed(served_repo):
    code = (f"import os; from serve.launcher import TritonServer; s = TritonServer({str(served_repo)!r}, '127.0.0.1', 0, 0, 0); "
            "s.start(); print(s.pid, flush=True); os._exit(0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    server_pid = int(result.stdout.split()[-1])
    deadline = time.monotonic() + 30
    while _alive(server_pid):
        assert time.monotonic() < deadline, "tritonserver outlived its launcher"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_wait_until_returns_the_probe_value_or_names_the_exit_and_the_timeout(tmp_path):
    import sys

    from serve.launcher import LaunchError
    from serve.process import ManagedProcess

    log = tmp_path / "server.log"
    exited = ManagedProcess.start("tritonserver", [sys.executable, "-c", "print('last'); raise SystemExit(3)"], log)
    exited.wait(30)
    with pytest.raises(LaunchError, match=rf"tritonserver exited with code 3 before it was ready \(log: {log}\):\nlast"):
        exited.wait_until(lambda: None, 30, "it was ready", LaunchError)
    running = ManagedProcess.start("the API process", [sys.executable, "-c", "import time; time.sleep(30)"],
                                   tmp_path / "api.log")
    try:
        with pytest.raises(RuntimeError, match="the API process: still not true that it listened after"):
            running.wait_until(lambda: None, 0.3, "it listened")
        answers = iter([None, None, "http://127.0.0.1:1"])
        assert running.wait_until(lambda: next(answers), 5, "up", poll_s=0.01) == "http://127.0.0.1:1"
    finally:
        running.kill()
