"""The HTTP server: /metrics, /healthz, /readyz, in threads of its own.

Serving never waits on the API: the handlers only read what the poller has already published.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder, gzip_accepted

from ckpt_exporter.exposition import RenderedJobs
from ckpt_exporter.selfmetrics import SelfMetrics

log = logging.getLogger(__name__)

LANDING_PAGE = b"""<html><head><title>ckpt_exporter</title></head><body>
<h1>ckpt_exporter</h1><p>OpenAI fine-tuning checkpoint metrics for Prometheus.</p>
<ul><li><a href="/metrics">/metrics</a></li><li><a href="/healthz">/healthz</a></li>
<li><a href="/readyz">/readyz</a></li></ul></body></html>
"""


class MetricsApp:
    """What the handlers serve; independent of the HTTP machinery so it can be tested directly."""

    def __init__(self, jobs: RenderedJobs, metrics: SelfMetrics, ready: Callable[[], bool]) -> None:
        self.jobs = jobs
        self.metrics = metrics
        self.ready = ready

    def metrics_response(self, accept: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
        _, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        tail = self.metrics.render(openmetrics)
        headers = {"Content-Type": content_type}
        if gzip_accepted(accept_encoding):
            headers["Content-Encoding"] = "gzip"
            return self.jobs.gzip_body(openmetrics, tail), headers
        return self.jobs.body(openmetrics) + tail, headers


class _Handler(BaseHTTPRequestHandler):
    app: MetricsApp
    protocol_version = "HTTP/1.1"
    server_version = "ckpt_exporter"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, headers = self.app.metrics_response(
                self.headers.get("Accept", ""), self.headers.get("Accept-Encoding", "")
            )
            self._send(200, body, headers)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            if self.app.ready():
                self._send(200, b"ready\n")
            else:
                self._send(503, b"not ready: not every job has been polled yet\n")
        elif path == "/":
            self._send(200, LANDING_PAGE, {"Content-Type": "text/html; charset=utf-8"})
        else:
            self._send(404, b"not found\n")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {"Content-Type": "text/plain; charset=utf-8"}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class MetricsServer:
    """A threading HTTP server bound at construction (so a bad address fails at start)."""

    def __init__(self, app: MetricsApp, address: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"app": app})
        server_class = type(
            "Server", (ThreadingHTTPServer,), {"address_family": _family(address), "daemon_threads": True}
        )
        self._server: ThreadingHTTPServer = server_class((address, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _family(address: str) -> Any:
    import socket

    return socket.AF_INET6 if ":" in address else socket.AF_INET
