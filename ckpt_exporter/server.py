"""The HTTP server: /metrics, /healthz, /readyz and / on one or more addresses, with TLS and basic auth.

Each listen address has its own listening socket and accept thread; each connection a thread of its
own, up to `max_connections` per address. At the limit a new connection sheds the connection that has
been idle longest (a kept-alive one between requests, one still sending its request, or one in its
TLS handshake), so a flood of silent connections cannot lock Prometheus out; only when every one is
busy answering is the new one closed. The listen backlog is the system's maximum (SOMAXCONN), not
socketserver's 5, so a burst of connections is queued instead of waiting for SYN retransmits.

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
from collections import OrderedDict
from collections.abc import Sequence
from http.server import ThreadingHTTPServer
from typing import Any

from ckpt_exporter.handler import CONNECTION_TIMEOUT_SECONDS, Handler, Rejections
from ckpt_exporter.routes import MetricsApp
from ckpt_exporter.webconfig import WebConfig
from ckpt_exporter.webwatch import LiveWebConfig

__all__ = ["MAX_CONNECTIONS", "MetricsApp", "MetricsServer"]

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # per listen address; Prometheus (HA pairs included) and the probes need a few


class Connections:
    """A server's open connections, by client address: the idle ones oldest first, and the busy ones.

    A connection is idle from its accept to its request read, and again after each answer.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._idle: OrderedDict[Any, socket.socket] = OrderedDict()
        self._busy: dict[Any, socket.socket] = {}
        self._lock = threading.Lock()

    def admit(self, client: Any, connection: socket.socket) -> tuple[bool, Any]:
        """Registers a new connection: (admitted, the client whose idle connection was shed for it).

        Not admitted only when every connection is busy answering.
        """
        with self._lock:
            shed = None
            if len(self._idle) + len(self._busy) >= self._limit:
                if not self._idle:
                    return False, None
                shed, oldest = self._idle.popitem(last=False)
                _shutdown(oldest, socket.SHUT_RDWR)
            self._idle[client] = connection
            return True, shed

    def busy(self, client: Any) -> None:
        with self._lock:
            connection = self._idle.pop(client, None)
            if connection is not None:
                self._busy[client] = connection

    def idle(self, client: Any) -> None:
        with self._lock:
            connection = self._busy.pop(client, None)
            if connection is not None:
                self._idle[client] = connection

    def remove(self, client: Any) -> None:
        with self._lock:
            self._idle.pop(client, None)
            self._busy.pop(client, None)

    def wake_all(self) -> None:
        """Every handler blocked reading a next request sees the end of it and closes."""
        with self._lock:
            for connection in (*self._idle.values(), *self._busy.values()):
                _shutdown(connection, socket.SHUT_RD)


def _shutdown(connection: socket.socket, how: int) -> None:
    # The accepted socket itself: TLS runs on a duplicate of it, so this never touches TLS state
    # under a handler that is writing, and the descriptor stays open until the connection is removed.
    with contextlib.suppress(OSError):
        connection.shutdown(how)


class ListeningServer(ThreadingHTTPServer):
    """One listen address."""

    daemon_threads = True
    request_queue_size = max(128, socket.SOMAXCONN)

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[Handler],
        web: LiveWebConfig | None,
        rejections: Rejections,
        max_connections: int,
    ) -> None:
        self.address_family = _family(address[0])
        self.stopping = False
        self.web = web
        self.rejections = rejections
        self.connections = Connections(max_connections)
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, client = super().get_request()
        # Answers are one write each (handler.py); without Nagle no write waits for the peer's ACK.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, client

    def verify_request(self, request: Any, client_address: Any) -> bool:
        admitted, shed = self.connections.admit(client_address, request)
        if shed is not None:
            detail = f"the connection idle longest was closed to make room for one from {client_address[0]}"
            self.rejections.note("too_many_connections", shed[0], detail)
        elif not admitted:
            detail = "every connection is busy answering"
            self.rejections.note("too_many_connections", client_address[0], detail)
        return admitted

    def finish_request(self, request: Any, client_address: Any) -> None:
        connection = request
        try:
            tls = self.web.current().tls if self.web is not None else None
            if tls is not None:
                connection = self._handshake(request, client_address, tls.current())
            if connection is not None:
                super().finish_request(connection, client_address)
        finally:
            self.connections.remove(client_address)
            if connection is not request and connection is not None:
                connection.close()

    def _handshake(self, request: socket.socket, client_address: Any, context: ssl.SSLContext) -> Any:
        request.settimeout(CONNECTION_TIMEOUT_SECONDS)
        try:
            # On a duplicate: wrap_socket would detach `request`, which Connections shuts down.
            return context.wrap_socket(request.dup(), server_side=True)
        except (ssl.SSLError, OSError) as exc:
            # A client that connects and says nothing (a TCP probe) is no news; a failed
            # handshake (no client certificate, plain HTTP, an untrusted CA) is.
            quiet = isinstance(exc, ssl.SSLEOFError | ConnectionError | TimeoutError)
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self.rejections.note("tls_handshake", client_address[0], f"TLS handshake failed: {reason}", quiet)
            return None

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error serving %s", client_address[0], exc_info=True)


class MetricsServer:
    """The exporter's HTTP(S) server, bound at construction (so a bad address fails at start).

    `listen`: (host, port) pairs, `("0.0.0.0", 9842)` or `("::1", 0)` (0: any free port; `addresses`
    then says which). Every address serves the same app with the same web config. An address that
    cannot be bound: OSError whose strerror names it (`cannot listen on [::1]:9842: Address already
    in use`), the others closed.
    """

    def __init__(
        self,
        app: MetricsApp,
        listen: Sequence[tuple[str, int]],
        web_config: WebConfig | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        web = LiveWebConfig(web_config) if web_config is not None else None
        self._web = web
        handler = type("Handler", (Handler,), {"app": app, "web": web})
        self.scheme = web.scheme if web is not None else "http"
        self.telemetry_path = app.telemetry_path
        rejections = Rejections(app)
        self._servers: list[ListeningServer] = []
        for host, port in listen:
            try:
                self._servers.append(ListeningServer((host, port), handler, web, rejections, max_connections))
            except OSError as exc:
                for server in self._servers:
                    server.server_close()
                named = f"cannot listen on {_host(host)}:{port}: {exc.strerror or exc}"
                raise OSError(exc.errno, named) from None
        self._threads = [
            threading.Thread(target=server.serve_forever, name=f"http-{index}", daemon=True)
            for index, server in enumerate(self._servers)
        ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each listening socket is bound to, in the order given."""
        return [(str(server.server_address[0]), int(server.server_address[1])) for server in self._servers]

    @property
    def port(self) -> int:
        """The first address' port."""
        return self.addresses[0][1]

    def urls(self) -> list[str]:
        """`http://0.0.0.0:9842/metrics`, `https://[::1]:9842/metrics`: where each socket serves metrics."""
        return [f"{self.scheme}://{_host(host)}:{port}{self.telemetry_path}" for host, port in self.addresses]

    def start(self) -> None:
        if self._web is not None:
            self._web.start()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        if self._web is not None:
            self._web.stop()
        for server in self._servers:
            server.stopping = True
        for server, thread in zip(self._servers, self._threads, strict=True):
            if thread.is_alive():
                server.shutdown()
            server.connections.wake_all()
            server.server_close()


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
