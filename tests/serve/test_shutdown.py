"""SIGTERM of `bertforge serve` under load: in-flight requests get their correct answer or a clean error, and
the process stops the API and tritonserver and exits 0 within the deadline."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

pytestmark = pytest.mark.slow  # a real `bertforge serve` (tritonserver + API)

DEADLINE_S = 20.0  # the configured --exit-timeout-secs (6 s) + the supervisor's last probe + slack


def test_sigterm_under_load_answers_or_fails_cleanly_and_exits_0(served_repo):
    from serve.client import BertforgeClient, ServingError

    process = subprocess.Popen(
        [sys.executable, "-m", "bertforge.cli", "serve", "--repo", str(served_repo), "--grpc-port", "0",
         "--http-port", "0", "--metrics-port", "0", "--no-api"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "BERTFORGE_SERVE_EXIT_TIMEOUT_S": "6"})
    try:
        output = ""
        for line in process.stdout:
            output += line
            if "Ctrl-C to stop" in line:
                break
        grpc_url = re.search(r"gRPC +(127\.0\.0\.1:\d+)", output).group(1)
        server_pid = int(re.search(r"pid (\d+)", output).group(1))
        assert "--exit-timeout-secs=6" in psutil.Process(server_pid).cmdline()  # the configured deadline
        with BertforgeClient(grpc_url, timeout_s=10, retries=0) as client:
            expected = client.embed("the committee approved the budget.")[0]
        outcomes: list = []
        stop = threading.Event()

        def send() -> None:
            with BertforgeClient(grpc_url, timeout_s=10, retries=0) as client:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        (embedding,) = client.embed("the committee approved the budget.")
                        outcomes.append((sent, "ok" if np.allclose(embedding, expected, atol=1e-5) else "wrong"))
                    except ServingError as error:
                        outcomes.append((sent, error))
                        time.sleep(0.05)

        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = process.wait(DEADLINE_S)
        stopped_after = time.monotonic() - signalled
        stop.set()
        for thread in threads:
            thread.join(20)
        assert code == 0, process.stderr.read()
        assert stopped_after < DEADLINE_S
        assert not [o for o in outcomes if o[1] == "wrong"], "a wrong answer during shutdown"
        before = [o for sent, o in outcomes if sent < signalled]
        assert len([o for o in before if o == "ok"]) >= 10, "no load before the SIGTERM"
        assert all(o == "ok" or (isinstance(o, ServingError) and str(o)) for _, o in outcomes)
        print(f"stopped {stopped_after:.1f} s after SIGTERM; {len(outcomes)} requests, "
              f"{sum(1 for _, o in outcomes if o != 'ok')} clean errors")
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
