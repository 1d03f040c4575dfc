"""The HTTP server: /metrics, /healthz, /readyz, in threads of its own, optionally TLS and basic auth.

Serving never waits on the API: the handlers only read what the poller has already published.
TLS handshakes happen in the connection's own thread, under a timeout, so a slow or silent client
never holds up the others. While stopping, answers carry `Connection: close` and idle keep-alive
connections are woken and closed, so a scrape gets an answer or a closed connection, never a hang.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder, gzip_accepted

from ckpt_exporter.exposition import RenderedJobs
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.webconfig import BasicAuth, TlsContexts, WebConfig

log = logging.getLogger(__name__)

# A connection idle this long (between keep-alive requests, or in its TLS handshake) is closed.
CONNECTION_TIMEOUT_SECONDS = 30.0
REJECTION_LOG_INTERVAL_SECONDS = 60.0

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


class _Rejections:
    """Counts refused requests by reason; logs a reason at most once a minute (scrapers retry)."""

    def __init__(self, metrics: SelfMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._counter = metrics.http_rejected
        self._clock = clock
        self._logged: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, reason: str, client: str, detail: str, quiet: bool = False) -> None:
        self._counter.labels(reason).inc()
        now = self._clock()
        with self._lock:
            loud = not quiet and now - self._logged.get(reason, -1e18) >= REJECTION_LOG_INTERVAL_SECONDS
            if loud:
                self._logged[reason] = now
        if loud:
            log.warning(
                "refused a request from %s (%s): %s; more within %gs are only counted "
                "(ckpt_exporter_http_rejected_total)",
                client,
                reason,
                detail,
                REJECTION_LOG_INTERVAL_SECONDS,
            )
        else:
            log.debug("refused a request from %s (%s): %s", client, reason, detail)


class _Handler(BaseHTTPRequestHandler):
    app: MetricsApp
    auth: BasicAuth | None = None
    open_paths: frozenset[str] = frozenset()
    extra_headers: dict[str, str] = {}
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "ckpt_exporter"
    timeout = CONNECTION_TIMEOUT_SECONDS

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if (
            self.auth is not None
            and path not in self.open_paths
            and not self.auth.check(self.headers.get("Authorization"))
        ):
            detail = "wrong user or password" if self.headers.get("Authorization") else "no credentials"
            self.server.rejections.note("unauthorized", self.client_address[0], detail)
            self._send(
                401,
                b"Unauthorized\n",
                {
                    "Content-Type": "text/plain; charset=utf-8",
                    "WWW-Authenticate": 'Basic realm="ckpt_exporter"',
                },
            )
        elif path == "/metrics":
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
        for name, value in {
            **(headers or {"Content-Type": "text/plain; charset=utf-8"}),
            **self.extra_headers,
        }.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: TlsContexts | None = None
    rejections: _Rejections

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        self.stopping = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        connection = request
        if self.tls is not None:
            request.settimeout(CONNECTION_TIMEOUT_SECONDS)
            try:
                connection = self.tls.current().wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                # A client that connects and says nothing (a TCP probe) is no news; a failed
                # handshake (no client certificate, plain HTTP, an untrusted CA) is.
                quiet = isinstance(exc, ssl.SSLEOFError | ConnectionError | TimeoutError)
                reason = getattr(exc, "reason", None) or type(exc).__name__
                self.rejections.note(
                    "tls_handshake", client_address[0], f"TLS handshake failed: {reason}", quiet
                )
                return
        with self._connections_lock:
            self._connections.add(connection)
        try:
            super().finish_request(connection, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            if connection is not request:
                connection.close()

    def close_idle_connections(self) -> None:
        """Wake every handler blocked reading a next request: it sees the end and closes."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # socket.socket's own shutdown: SSLSocket.shutdown would tear down its TLS state under a
            # handler that may still be writing an answer.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RD)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error serving %s", client_address[0], exc_info=True)


class MetricsServer:
    """A threading HTTP(S) server bound at construction (so a bad address fails at start)."""

    def __init__(self, app: MetricsApp, address: str, port: int, web_config: WebConfig | None = None) -> None:
        web = web_config or WebConfig()
        handler = type(
            "Handler",
            (_Handler,),
            {
                "app": app,
                "auth": BasicAuth(web.users) if web.users else None,
                "open_paths": web.auth_excluded_paths,
                "extra_headers": dict(web.headers),
            },
        )
        server_class = type(
            "Server",
            (_Server,),
            {
                "address_family": _family(address),
                "tls": TlsContexts(web.tls) if web.tls is not None else None,
                "rejections": _Rejections(app.metrics),
            },
        )
        self.scheme = web.scheme
        self._server: _Server = server_class((address, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.stopping = True
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.close_idle_connections()
        self._server.server_close()


def _family(address: str) -> Any:
    return socket.AF_INET6 if ":" in address else socket.AF_INET
