"""Self-healing: watch tritonserver with a real inference per model; restart it on the same ports when one fails.

`Supervisor(server).start()` runs a thread that every `interval_s` sends each model a tiny request through
gRPC with a deadline (serve/health.py: the probe of the API's /health). A failed probe (e.g. "Stub process 'embed_0_0' is
not healthy" after its python stub died), a probe past its deadline, or tritonserver's exit restarts
tritonserver on the SAME ports, with exponential backoff between restarts (capped). Each event is one log line;
`restarts` counts them by reason.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

INTERVAL_S = 2.0  # between probe rounds
PROBE_TIMEOUT_S = 3.0  # one probe inference slower than this is a failure (a hung model)
BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0  # wait before the n-th restart in a row: 1, 2, 4 ... 30 s


class Supervisor:
    def __init__(self, server, models: list[str], interval_s: float = INTERVAL_S,
                 probe_timeout_s: float = PROBE_TIMEOUT_S, log: Callable[[str], None] | None = None,
                 counts_file: Path | None = None, tasks: dict[str, str] | None = None):
        self.server = server  # a started serve.launcher.TritonServer
        self.models = list(models)
        self.tasks = tasks or {}  # model name -> task, for models not named after their task (export --name)
        self.interval_s, self.probe_timeout_s = interval_s, probe_timeout_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.restarts: collections.Counter[str] = collections.Counter()  # reason -> count
        self.counts_file = counts_file  # the API exports it as bertforge_triton_restarts_total{reason}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bertforge-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.probe_timeout_s + 30)

    def check(self) -> tuple[str, str] | None:
        """(reason, detail) of the first failure, or None when tritonserver answers every model."""
        from serve.client import BertforgeClient
        from serve.health import probe, probe_text

        if self.server.process.poll() is not None:
            return "exited", f"tritonserver exited with code {self.server.process.returncode}"
        with BertforgeClient(self.server.endpoints.grpc_url, timeout_s=self.probe_timeout_s, retries=0) as client:
            for model in self.models:
                try:
                    task = self.tasks.get(model, model)
                    probe(client, model, task, probe_text(self.server.repo, model, task))
                except Exception as error:  # noqa: BLE001 - any failure of the probe is a failure of the model
                    status = getattr(error, "status", None)
                    reason = "probe_timeout" if status == "DEADLINE_EXCEEDED" else "probe_failed"
                    return reason, f"{model}: {error}"
        return None

    def record_restart(self, reason: str) -> None:
        """Count one restart; the counts go to `counts_file` (atomically) for the API's /metrics."""
        self.restarts[reason] += 1
        if self.counts_file is not None:
            from bertforge.files import write_json_atomically

            write_json_atomically(self.counts_file, dict(self.restarts))

    def _run(self) -> None:
        failures_in_a_row = 0
        while not self._stop.wait(self.interval_s):
            failure = self.check()
            if failure is None:
                failures_in_a_row = 0
                continue
            reason, detail = failure
            if self._stop.is_set():
                return
            backoff = min(BACKOFF_S * 2 ** failures_in_a_row, MAX_BACKOFF_S) if failures_in_a_row else 0.0
            failures_in_a_row += 1
            self.record_restart(reason)
            self.log(f"[supervisor] restarting tritonserver (reason {reason}, restart {sum(self.restarts.values())}, "
                     f"after {backoff:.0f} s): {detail.splitlines()[0][:300]}")
            if self._stop.wait(backoff):
                return
            started = time.monotonic()
            try:
                self.server.restart()
            except Exception as error:  # noqa: BLE001 - logged; the next round tries again, with more backoff
                self.log(f"[supervisor] restart failed: {str(error).splitlines()[0][:300]}")
                continue
            self.log(f"[supervisor] tritonserver back (pid {self.server.pid}) in {time.monotonic() - started:.1f} s")
