"""What the exporter's HTTP server answers on each path, apart from the HTTP machinery (server.py).

The handlers only read what the poller has already published: serving never waits on the API.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Summary
from prometheus_client.exposition import choose_encoder

from ckpt_exporter import __version__
from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.selfmetrics import SelfMetrics

TEXT = "text/plain; charset=utf-8"
OTHER_HANDLER = "other"  # the `handler` label of a path we do not serve: bounded whatever is asked


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": TEXT})


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header asks for gzip, q-values included (RFC 9110, 12.5.3).

    `gzip` (or `x-gzip`, or `*` when gzip is not named) with a weight above 0, and not below an
    explicit `identity`: `gzip;q=0` and `identity;q=1, gzip;q=0.5` get the plain body.

    >>> accepts_gzip("gzip"), accepts_gzip("gzip;q=0"), accepts_gzip("*;q=0.1"), accepts_gzip("br")
    (True, False, True, False)
    """
    weights: dict[str, float] = {}
    for element in accept_encoding.split(","):
        coding, *params = (part.strip() for part in element.split(";"))
        weight: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = None
        if coding and weight is not None and 0.0 <= weight <= 1.0:  # NaN fails both comparisons
            weights.setdefault(coding.lower(), weight)
    gzip = weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0)))
    return gzip > 0.0 and gzip >= weights.get("identity", 0.0)


class HttpMetrics:
    """The server's own requests, by handler and status code, as promhttp's handler metrics count them."""

    def __init__(self, metrics: SelfMetrics, handlers: tuple[str, ...]) -> None:
        registry = metrics.registry
        self.requests = Counter(
            "ckpt_exporter_http_requests",
            "Requests the exporter's HTTP server answered, by handler (path) and HTTP status code.",
            ["handler", "code"],
            registry=registry,
        )
        # A summary (count and sum), not a histogram: the self-metrics are rendered on every scrape,
        # and buckets for five handlers would double their cost. Prometheus' own scrape_duration_seconds
        # has the scrape's distribution.
        self.duration = Summary(
            "ckpt_exporter_http_request_duration_seconds",
            "Time from a request read to its answer written, by handler.",
            ["handler"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "ckpt_exporter_http_requests_in_flight",
            "Requests the exporter's HTTP server is answering.",
            registry=registry,
        )
        for handler in handlers:
            self.requests.labels(handler, "200")
            self.duration.labels(handler)
        self.requests.labels(OTHER_HANDLER, "404")
        self.duration.labels(OTHER_HANDLER)

    def observe(self, handler: str, code: int, started: float) -> None:
        self.requests.labels(handler, str(code)).inc()
        self.duration.labels(handler).observe(time.perf_counter() - started)


class MetricsApp:
    """The paths: the telemetry path (/metrics by default), /healthz, /readyz and the landing page /."""

    def __init__(
        self,
        jobs: ExpositionCache,
        metrics: SelfMetrics,
        ready: Callable[[], bool],
        watched_jobs: Callable[[], int] = lambda: 0,
        telemetry_path: str = "/metrics",
    ) -> None:
        self.jobs = jobs
        self.metrics = metrics
        self.ready = ready
        self.watched_jobs = watched_jobs
        self.telemetry_path = telemetry_path
        self.handlers = (telemetry_path, "/healthz", "/readyz", "/")
        self.http = HttpMetrics(metrics, self.handlers)

    def handler_of(self, path: str) -> str:
        """The `handler` label for a path: the path itself when we serve it."""
        return path if path in self.handlers else OTHER_HANDLER

    def answer(self, path: str, accept: str = "", accept_encoding: str = "") -> Response:
        """The answer to a GET of `path`, given the request's Accept and Accept-Encoding headers."""
        if path == self.telemetry_path:
            body, headers = self.metrics_response(accept, accept_encoding)
            return Response(200, body, headers)
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/readyz":
            if self.ready():
                return Response(200, b"ready\n")
            return Response(503, b"not ready: not every job has been polled yet\n")
        if path == "/":
            return Response(200, self.landing_page(), {"Content-Type": "text/html; charset=utf-8"})
        return Response(404, b"not found\n")

    def metrics_response(self, accept: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
        _, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        tail = self.metrics.render(openmetrics)
        # Caches between us and the scraper must not give one client's format or encoding to another.
        headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
        if accepts_gzip(accept_encoding):
            headers["Content-Encoding"] = "gzip"
            return self.jobs.gzip_body(openmetrics, tail), headers
        return self.jobs.body(openmetrics) + tail, headers

    def landing_page(self) -> bytes:
        metrics = html.escape(self.telemetry_path)
        links = "".join(
            f'<li><a href="{href}">{href}</a> {what}</li>'
            for href, what in (
                (metrics, "the metrics"),
                ("/healthz", "liveness"),
                ("/readyz", "readiness: 200 once every job has been polled"),
            )
        )
        return (
            "<!DOCTYPE html>\n<html><head><title>ckpt_exporter</title></head><body>\n"
            "<h1>ckpt_exporter</h1>\n<p>OpenAI fine-tuning checkpoint metrics for Prometheus.</p>\n"
            f"<p>Version {html.escape(__version__)}, watching {self.watched_jobs()} job(s).</p>\n"
            f"<ul>{links}</ul>\n</body></html>\n"
        ).encode()
