"""The exporter's own metrics: a small registry rendered on every scrape.

Per-job self-metrics (job_up, last success, errors) live in the job snapshots instead, so that a
scrape's cost does not grow with the number of jobs. The process turns prometheus_client's *_created
series off once at start-up (app.configure_process).
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from ckpt_exporter import __version__
from ckpt_exporter.layout import render_registry

ENDPOINTS = ("checkpoints", "events", "jobs", "job")  # API endpoints the exporter calls, pre-created at zero


class SelfMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # The standard process/platform/GC collectors, as prometheus_client's default registry has.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        Info("ckpt_exporter_build", "Version of the running exporter.", registry=self.registry).info(
            {"version": __version__}
        )
        self.api_requests = Counter(
            "ckpt_exporter_api_requests",
            "Requests sent to the fine-tuning API, by endpoint and HTTP status (error: no response).",
            ["endpoint", "code"],
            registry=self.registry,
        )
        for endpoint in ENDPOINTS:
            self.api_requests.labels(endpoint, "200")
        self.poll_duration = Histogram(
            "ckpt_exporter_poll_duration_seconds",
            "Duration of a poll cycle over every job.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.jobs = Gauge("ckpt_exporter_jobs", "Jobs the exporter watches.", registry=self.registry)
        self.shard_ordinal = Gauge(
            "ckpt_exporter_shard_ordinal", "This replica's shard (0-based).", registry=self.registry
        )
        self.total_shards = Gauge(
            "ckpt_exporter_total_shards", "Shards the jobs are divided into.", registry=self.registry
        )
        self.total_shards.set(1)
        # The API client's shared request budget, and the /metrics server's refusals.
        self.rate_limit_wait = Counter(
            "ckpt_exporter_rate_limit_wait_seconds",
            "Seconds API requests waited for the request budget or a rate-limit pause, summed.",
            registry=self.registry,
        )
        self.http_rejected = Counter(
            "ckpt_exporter_http_rejected",
            "Requests to the exporter's HTTP server refused, by reason (unauthorized, tls_handshake).",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("unauthorized", "tls_handshake"):
            self.http_rejected.labels(reason)
        # Keyless Azure accounts (entra.py): created at zero for each such account and reason.
        self.token_failures = Counter(
            "ckpt_exporter_token_failures",
            "Failures to get or use a Microsoft Entra ID token, by account and reason.",
            ["account", "reason"],
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, code: str) -> None:
        self.api_requests.labels(endpoint, code).inc()

    def render(self, openmetrics: bool) -> bytes:
        return render_registry(self.registry, openmetrics)
