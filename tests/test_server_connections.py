"""The exporter's HTTP server and its connections: listen addresses, the backlog, the connection
limit, one write per answer, and stopping. Real MetricsServer on loopback, raw sockets as clients.
"""

from __future__ import annotations

import select
import socket
import threading

import httpx
import pytest

from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.server import MetricsApp, MetricsServer
from tests.helpers import wait_for
from tests.webhelpers import Served, read_response

# -- listening and connections ----------------------------------------------------------------


def test_serves_on_every_listen_address(serve: type[Served]) -> None:
    served = serve(listen=[("127.0.0.1", 0), ("::1", 0)])
    (v4, p4), (v6, p6) = served.server.addresses
    assert (v4, v6) == ("127.0.0.1", "::1") and p4 != 0 and p6 != 0
    assert httpx.get(f"http://127.0.0.1:{p4}/healthz", timeout=5).text == "ok\n"
    assert httpx.get(f"http://[::1]:{p6}/healthz", timeout=5).text == "ok\n"
    assert served.server.urls() == [f"http://127.0.0.1:{p4}/metrics", f"http://[::1]:{p6}/metrics"]


def test_a_taken_address_fails_at_construction_and_frees_the_others(serve: type[Served]) -> None:
    taken = serve()
    with pytest.raises(OSError) as caught:
        serve(listen=[("127.0.0.1", 0), ("127.0.0.1", taken.port)])
    assert caught.value.strerror == f"cannot listen on 127.0.0.1:{taken.port}: Address already in use"


def test_a_burst_of_connections_is_queued_by_the_backlog() -> None:
    """Nothing accepts (the server is bound but not started): the kernel's queue alone holds them.

    With socketserver's backlog of 5, connections after the sixth wait for SYN retransmits that
    never succeed while nobody accepts.
    """

    server = MetricsServer(MetricsApp(ExpositionCache(), SelfMetrics(), lambda: True), [("127.0.0.1", 0)])
    clients = [socket.socket() for _ in range(100)]
    try:
        for client in clients:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", server.port))
        _, writable, _ = select.select([], clients, [], 10)
        pending = set(clients) - set(writable)
        deadline = 10.0
        while pending and deadline > 0:  # select returns as soon as one is ready: collect the rest
            _, more, _ = select.select([], list(pending), [], 0.5)
            pending -= set(more)
            deadline -= 0.5
        assert [c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for c in clients] == [0] * 100
        assert not pending
    finally:
        for client in clients:
            client.close()
        server.stop()


def test_a_flood_of_idle_connections_sheds_the_oldest_and_metrics_still_answer(serve: type[Served]) -> None:
    served = serve(max_connections=8)
    idle = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(20)]
    try:
        assert wait_for(lambda: served.rejected("too_many_connections") == 12.0, 10)
        response = httpx.get(served.url(), timeout=5)  # one more: sheds one more idle connection
        assert response.status_code == 200
        assert served.rejected("too_many_connections") == 13.0
        closed = [conn.recv(1) == b"" for conn in idle[:13]]  # shed: the server closed them
        assert closed == [True] * 13
        idle[13].settimeout(0.2)
        with pytest.raises(TimeoutError):
            idle[13].recv(1)  # still open: shedding stops at the limit
    finally:
        for conn in idle:
            conn.close()


def test_when_every_connection_is_busy_a_new_one_is_closed(serve: type[Served]) -> None:
    entered, release = threading.Semaphore(0), threading.Event()

    def ready() -> bool:
        entered.release()
        return release.wait(10)

    served = serve(ready=ready, max_connections=2)
    busy = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(2)]
    try:
        for conn in busy:
            conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.acquire(timeout=5) and entered.acquire(timeout=5)  # both are being answered
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as third:
            assert third.recv(1) == b""  # closed at once: nothing to shed
        assert served.rejected("too_many_connections") == 1.0
        release.set()
        assert [read_response(conn).split(b"\r\n", 1)[0] for conn in busy] == [b"HTTP/1.1 200 OK"] * 2
    finally:
        release.set()
        for conn in busy:
            conn.close()


def test_a_kept_alive_answer_arrives_in_one_piece(serve: type[Served]) -> None:
    """Headers and body in one write: with two and Nagle, the body waits for the delayed ACK (40 ms)."""
    served = serve()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as conn:
        for _ in range(5):
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            select.select([conn], [], [], 5)
            assert conn.recv(65536).endswith(b"\r\nContent-Length: 3\r\n\r\nok\n")


def test_stopping_answers_close_the_connection(serve: type[Served]) -> None:
    entered, release = threading.Event(), threading.Event()

    def ready() -> bool:
        entered.set()
        return release.wait(5)

    served = serve(ready=ready)
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as conn:
        conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.wait(5)
        stopper = threading.Thread(target=served.server.stop)
        stopper.start()
        stopper.join(5)
        release.set()
        answer = read_response(conn)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close\r\n" in answer
        assert conn.recv(1) == b""


def test_stop_closes_keep_alive_connections_instead_of_leaving_them_hanging(serve: type[Served]) -> None:
    served = serve()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_response(conn)
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" not in answer
        served.server.stop()
        conn.settimeout(3)
        assert conn.recv(4096) == b""  # closed, not hanging
