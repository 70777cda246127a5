"""`serve.process.ManagedProcess`: a real child started with its log, waited for, stopped by SIGTERM or SIGKILL."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from serve.process import ManagedProcess, url_host

IGNORES_SIGTERM = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('up', flush=True); time.sleep(60)")


def test_start_logs_output_and_stop_terminates(tmp_path):
    process = ManagedProcess.start("sleeper", [sys.executable, "-c", "print('hello', flush=True); "
                                              "import time; time.sleep(60)"], tmp_path / "logs" / "sleeper.log")
    try:
        assert process.wait_until(lambda: True if "hello" in process.log_tail() else None, 10, "it said hello") is True
        assert process.poll() is None and process.pid > 0
    finally:
        code = process.stop(timeout_s=5)
    assert code == -signal.SIGTERM and process.returncode == -signal.SIGTERM
    assert process.stop(timeout_s=5) == -signal.SIGTERM  # a second stop leaves the exited process alone


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    process = ManagedProcess.start("stubborn", [sys.executable, "-c", IGNORES_SIGTERM], tmp_path / "stubborn.log")
    process.wait_until(lambda: True if "up" in process.log_tail() else None, 10, "it was up")
    started = time.monotonic()
    assert process.stop(timeout_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_kill_reaches_the_whole_group_of_a_process_with_its_own_session(tmp_path):
    import psutil

    spawn = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
             "time.sleep(60)']); print(child.pid, flush=True); time.sleep(60)")
    process = ManagedProcess.start("parent", [sys.executable, "-c", spawn], tmp_path / "parent.log", own_session=True)
    child_pid = int(process.wait_until(lambda: process.log_tail().strip() or None, 10, "it spawned its child"))
    assert process.kill() == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while psutil.pid_exists(child_pid) and psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child outlived its group's SIGKILL"
        time.sleep(0.05)


def test_wait_until_names_the_exit_code_and_the_log_tail(tmp_path):
    log = tmp_path / "failing.log"
    process = ManagedProcess.start("failing", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], log)
    with pytest.raises(RuntimeError, match=rf"failing exited with code 3 before it was up \(log: {log}\):\nboom"):
        process.wait_until(lambda: None, 30, "it was up")


def test_log_tail_keeps_the_last_lines_and_appends_on_restart(tmp_path):
    log = tmp_path / "counter.log"
    ManagedProcess.start("counter", [sys.executable, "-c", "for n in range(100): print(n)"], log).wait(10)
    ManagedProcess.start("counter", [sys.executable, "-c", "print('again')"], log, append_log=True).wait(10)
    tail = ManagedProcess.start("tail", [sys.executable, "-c", "pass"], log, append_log=True)
    tail.wait(10)
    assert tail.log_tail(3) == "98\n99\nagain"
    assert ManagedProcess(tail.popen, "gone", tmp_path / "missing.log").log_tail() == "(no log)"


def test_url_host_brackets_ipv6_literals():
    assert url_host("127.0.0.1") == "127.0.0.1"
    assert url_host("localhost") == "localhost"
    assert url_host("::1") == "[::1]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_child_dies_with_a_launcher_killed_by_sigkill(tmp_path):
    import os
    import subprocess

    launcher = (f"import os, sys; from serve.process import ManagedProcess; p = ManagedProcess.start('sleeper', "
                f"[sys.executable, '-c', 'import time; time.sleep(60)'], {str(tmp_path / 'sleeper.log')!r}); "
                "print(p.pid, flush=True); os.kill(os.getpid(), 9)")
    result = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=60)
    child = int(result.stdout.split()[-1])
    deadline = time.monotonic() + 30  # a hang guard: the signal arrives at once
    while os.path.exists(f"/proc/{child}") and "Z" not in _state(child):
        assert time.monotonic() < deadline, "the child outlived its launcher's SIGKILL"
        time.sleep(0.1)


def test_missing_executable_is_named_before_anything_starts(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-binary-here"):
        ManagedProcess.start("ghost", ["no-such-binary-here"], tmp_path / "ghost.log")


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"
