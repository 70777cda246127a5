"""Prometheus metrics of the API itself (Triton's own stay on its metrics port), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bertforge_api_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("bertforge_api_errors", "HTTP requests answered with an error, by route, status and code",
                              ["route", "status", "code"], registry=self.registry)
        self.latency = Histogram("bertforge_api_request_seconds", "time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("bertforge_api_batch_size", "texts per request, by route", ["route"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.tokens = Counter("bertforge_api_tokens", "tokens of the texts sent to each model (after truncation)",
                              ["model"], registry=self.registry)
        self.truncations = Counter("bertforge_api_truncations", "texts cut to the model's maximum length",
                                   ["model"], registry=self.registry)
        self.in_flight = Gauge("bertforge_api_in_flight", "inference requests being answered now",
                               registry=self.registry)
        self.rejected = Counter("bertforge_api_rejected", "requests refused with 429 at the in-flight cap",
                                registry=self.registry)
        self.registry.register(TritonRestarts())


RESTARTS_FILE_ENV = "BERTFORGE_RESTARTS_FILE"  # set by `bertforge serve`: its supervisor's restart counts (JSON)


class TritonRestarts:
    """`bertforge_triton_restarts_total{reason}`: restarts of tritonserver by `bertforge serve`'s supervisor.

    The supervisor runs in the `bertforge serve` process and writes its counts to a file; this collector reads
    it at each scrape, so the API process needs no channel of its own to the supervisor."""

    def collect(self):
        import json
        import os
        from pathlib import Path

        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("bertforge_triton_restarts", "tritonserver restarts by the supervisor, by reason",
                                     labels=["reason"])
        path = os.environ.get(RESTARTS_FILE_ENV)
        try:
            counts = json.loads(Path(path).read_text()) if path else {}
        except (OSError, ValueError):
            counts = {}
        for reason, count in sorted(counts.items()):
            family.add_metric([reason], float(count))
        yield family
