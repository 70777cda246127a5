"""One child process that bertforge runs and owns: tritonserver (serve/launcher.py) and the API (serve/api/process.py).

`ManagedProcess.start(...)` launches a command with its output in a log file, tied to this process's life
(Linux: it gets SIGTERM when its launcher dies, even by SIGKILL); `wait_until` polls a readiness probe and names
the log when the child exits or the time runs out; `stop` sends SIGTERM, then SIGKILL, always by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

PR_SET_PDEATHSIG = 1  # linux/prctl.h
KILL_WAIT_S = 5.0  # after SIGKILL

T = TypeVar("T")


class ManagedProcess:
    """A started child: its `Popen`, its `name` (for messages) and the file its output goes to."""

    def __init__(self, popen: subprocess.Popen, name: str, log_path: Path, own_session: bool = False):
        self.popen = popen
        self.name = name
        self.log_path = Path(log_path)
        self.own_session = own_session  # SIGKILL then hits its whole process group (tritonserver's python stubs)

    @classmethod
    def start(cls, name: str, command: Sequence[str], log_path: str | Path, env: dict[str, str] | None = None,
              own_session: bool = False, append_log: bool = False) -> ManagedProcess:
        """Launch `command` with stdout and stderr to `log_path` (appended with `append_log`), stdin closed.

        Linux ties the stop-with-parent signal to the launching *thread*: start it from a thread that outlives it
        (tests, the CLI and bench start it from the main thread)."""
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if shutil.which(command[0]) is None:  # as Popen would say, before the trampoline hides it
            raise FileNotFoundError(f"{command[0]}: no such executable")
        with open(log_path, "ab" if append_log else "wb") as log:
            popen = subprocess.Popen(stopping_with_parent(command), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=own_session)
        return cls(popen, name, log_path, own_session)

    # --- state (the Popen's, so callers may treat it as one) -------------------------------------------
    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    # --- readiness -------------------------------------------------------------------------------------
    def wait_until(self, probe: Callable[[], T | None], timeout_s: float, up: str,
                   error: type[Exception] = RuntimeError, poll_s: float = 0.1) -> T:
        """Poll `probe` until it returns a value (not None); `error` naming the log and its tail if the process
        exits first or `timeout_s` passes. `up` says what was awaited ("it was ready")."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise error(f"{self.name} exited with code {self.popen.returncode} before {up} (log: {self.log_path}):\n"
                            f"{self.log_tail()}")
            value = probe()
            if value is not None:
                return value
            time.sleep(poll_s)
        raise error(f"{self.name}: still not true that {up} after {timeout_s:.0f} s (log: {self.log_path}):\n"
                    f"{self.log_tail()}")

    # --- stop ------------------------------------------------------------------------------------------
    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s` (its whole group when it has its own session). Returns the
        exit code; a process that already exited is left alone."""
        if self.popen.poll() is not None:
            return self.popen.returncode
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL now (its process group when it has its own session) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            if self.own_session:
                os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                os.kill(self.popen.pid, signal.SIGKILL)
        return self.popen.wait(KILL_WAIT_S)

    # --- log -------------------------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of its log, for error messages."""
        return log_tail(self.log_path, lines)


def log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def url_host(host: str) -> str:
    """`host` as it goes into a URL: IPv6 literals need brackets."""
    return f"[{host}]" if ":" in host else host


def stopping_with_parent(command: Sequence[str]) -> list[str]:
    """`command`, run so that it gets SIGTERM when its launcher dies (even by SIGKILL): on Linux a tiny
    Python trampoline sets PR_SET_PDEATHSIG, which survives exec, and then becomes the command (same PID).

    Not `Popen(preexec_fn=...)`: preexec_fn forks with the interpreter's locks held, and that deadlocked when
    another thread was starting a thread at the same moment (the supervisor restarting tritonserver while
    gRPC client threads spun up: Popen never returned). Without preexec_fn, Popen forks and execs in C."""
    if not sys.platform.startswith("linux"):
        return list(command)  # elsewhere: rely on stop()
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_TRAMPOLINE, str(os.getpid()), *command]


# argv: the launcher's PID, then the command. A launcher that died before prctl ran has orphaned us already:
# then the command is not started at all.
_PDEATHSIG_TRAMPOLINE = f"""import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(143)
os.execvp(sys.argv[2], sys.argv[2:])
"""
