"""One HTTP/1.1 connection of the exporter's server: requests read, checked, answered, counted.

- GET and HEAD on every path (HEAD: the same status and headers, no body); any other method gets
  405 with `Allow: GET, HEAD`. Every error body is plain text.
- A GET or HEAD that carries a body (Content-Length above 0, or any Transfer-Encoding) is refused
  with 400 and the connection closed: its body would otherwise be read as the next request.
- Each answer, headers and body, goes out in one write: with two, Nagle's algorithm holds the second
  until the client's delayed ACK, 40 ms on every kept-alive answer (the server sets TCP_NODELAY too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from ckpt_exporter import __version__
from ckpt_exporter.routes import OTHER_HANDLER, MetricsApp, Response
from ckpt_exporter.webwatch import LiveWebConfig

if TYPE_CHECKING:
    from ckpt_exporter.server import ListeningServer

log = logging.getLogger(__name__)

# A connection idle this long (between keep-alive requests, or in its TLS handshake) is closed.
CONNECTION_TIMEOUT_SECONDS = 30.0
REJECTION_LOG_INTERVAL_SECONDS = 60.0
REJECTION_REASONS = ("unauthorized", "tls_handshake", "bad_request", "too_many_connections")
ALLOWED_METHODS = ("GET", "HEAD")
MAX_REQUEST_LINE = 65536


class Rejections:
    """Counts refused requests by reason; logs a reason at most once a minute (scrapers retry)."""

    def __init__(self, app: MetricsApp, clock: Callable[[], float] = time.monotonic) -> None:
        self._counter = app.metrics.http_rejected
        for reason in REJECTION_REASONS:
            self._counter.labels(reason)
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


class Handler(BaseHTTPRequestHandler):
    app: MetricsApp
    web: LiveWebConfig | None = None
    server: ListeningServer
    protocol_version = "HTTP/1.1"
    server_version = f"ckpt_exporter/{__version__}"
    timeout = CONNECTION_TIMEOUT_SECONDS
    _started = 0.0

    def handle_one_request(self) -> None:
        """BaseHTTPRequestHandler's, with every method dispatched here and the connection's state kept."""
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            self._handle()
        except TimeoutError:
            self.close_connection = True

    def _handle(self) -> None:
        self._started = time.perf_counter()
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return
        if not self.parse_request():
            return  # send_error has answered (and counted) it
        path = self.path.split("?", 1)[0]
        # Busy from here to the answer: a connection still sending its request can be shed.
        self.server.connections.busy(self.client_address)
        self.app.http.in_flight.inc()
        try:
            status = self._answer(path)
        finally:
            self.app.http.in_flight.dec()
            self.server.connections.idle(self.client_address)
        self.app.http.observe(self.app.handler_of(path), status, self._started)

    def _answer(self, path: str) -> int:
        if self.command not in ALLOWED_METHODS:
            # A body we do not read would be taken for the next request.
            self.close_connection = self.close_connection or self._has_body()
            return self._send(Response(405, b"method not allowed: use GET or HEAD\n"), {"Allow": "GET, HEAD"})
        if self._has_body():
            self._reject("bad_request", "a GET or HEAD request with a body")
            self.close_connection = True
            return self._send(Response(400, b"bad request: a GET or HEAD request must not have a body\n"))
        state = self.web.current() if self.web is not None else None
        if state is not None and state.auth is not None and path not in state.config.auth_excluded_paths:
            authorization = self.headers.get("Authorization")
            if not state.auth.check(authorization, self.client_address[0]):
                self._reject("unauthorized", "wrong user or password" if authorization else "no credentials")
                unauthorized = Response(401, b"Unauthorized\n")
                return self._send(unauthorized, {"WWW-Authenticate": 'Basic realm="ckpt_exporter"'})
        accept, accept_encoding = self.headers.get("Accept", ""), self.headers.get("Accept-Encoding", "")
        return self._send(self.app.answer(path, accept, accept_encoding))

    def _has_body(self) -> bool:
        if "Transfer-Encoding" in self.headers:
            return True
        length = self.headers.get("Content-Length")
        if length is None:
            return False
        try:
            return int(length) != 0
        except ValueError:
            return True  # a length we cannot read: we cannot tell where the next request starts

    def _reject(self, reason: str, detail: str) -> None:
        self.server.rejections.note(reason, self.client_address[0], detail)

    def _send(self, response: Response, extra: dict[str, str] | None = None) -> int:
        """Writes the status line, headers and (unless HEAD) body in one write; returns the status."""
        state = self.web.current() if self.web is not None else None
        headers = {
            "Server": self.version_string(),
            "Date": self.date_time_string(),
            **response.headers,
            **(extra or {}),
            **(state.config.headers if state is not None else {}),
            "Content-Length": str(len(response.body)),
        }
        if self.server.stopping:
            self.close_connection = True
        if self.close_connection:
            headers["Connection"] = "close"
        phrase = HTTPStatus(response.status).phrase
        head = f"HTTP/1.1 {response.status} {phrase}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        body = b"" if self.command == "HEAD" else response.body
        self.wfile.write(head.encode("latin-1") + b"\r\n" + body)
        self.log_request(response.status, len(body))
        return response.status

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's refusals (a malformed request line or headers), in plain text."""
        status = HTTPStatus(code)
        self._reject("bad_request", f"{status.value} {message or status.phrase}")
        self.close_connection = True
        self._send(Response(status.value, f"{status.value} {message or status.phrase}\n".encode()))
        self.app.http.observe(OTHER_HANDLER, status.value, self._started)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
