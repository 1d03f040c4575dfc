"""The exporter's HTTP server over the wire: methods, errors, encodings, its own metrics, connections.

The server is the real MetricsServer on loopback; the clients are httpx and raw sockets, so what is
checked is what crosses the wire.
"""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import httpx
import pytest

from ckpt_exporter import __version__
from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.fake import FakeApi, FakeApiServer
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.server import MetricsApp, MetricsServer
from tests.helpers import API_KEY, ExporterProcess, parse_samples
from tests.webhelpers import Served, read_response


def raw_exchange(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Sends REQUEST on a new connection and reads until the server closes it or the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        return data


# -- methods and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz", "/", "/nope"])
def test_head_answers_as_get_without_a_body(serve: type[Served], path: str) -> None:
    served = serve()
    get = httpx.get(served.url(path), timeout=5)
    head = httpx.head(served.url(path), timeout=5)
    assert (head.status_code, head.content) == (get.status_code, b"")
    drop = {"date", "content-length"}  # the date moves; the length of /metrics grows with its own counters
    assert {k: v for k, v in head.headers.items() if k not in drop} == {
        k: v for k, v in get.headers.items() if k not in drop
    }
    assert int(head.headers["Content-Length"]) > 0


def test_head_on_a_kept_alive_connection_leaves_no_body_behind(serve: type[Served]) -> None:
    served = serve()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as conn:
        conn.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_response(conn, head_only=True)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        get = read_response(conn)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"Content-Length: 3\r\n\r\n")
    assert get.startswith(b"HTTP/1.1 200 OK\r\n") and get.endswith(b"\r\n\r\nok\n")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_other_methods_get_405_with_allow_in_plain_text(serve: type[Served], method: str) -> None:
    served = serve()
    response = httpx.request(method, served.url(), timeout=5)
    assert (response.status_code, response.headers["Allow"], response.headers["Content-Type"]) == (
        405,
        "GET, HEAD",
        "text/plain; charset=utf-8",
    )
    assert response.text == "method not allowed: use GET or HEAD\n"


def test_a_post_with_a_body_is_answered_and_its_body_not_read_as_a_request(serve: type[Served]) -> None:
    served = serve()
    body = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = raw_exchange(
        served.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert answer.count(b"HTTP/1.1") == 1 and answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"\r\nConnection: close\r\n" in answer


@pytest.mark.parametrize(
    "extra",
    [
        b"Content-Length: 36\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n24\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
        b"Content-Length: 3x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["content-length", "transfer-encoding", "unreadable-length"],
)
def test_a_get_with_a_body_is_refused_and_the_body_never_answered(serve: type[Served], extra: bytes) -> None:
    served = serve()
    answer = raw_exchange(served.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n" + extra)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"\r\nConnection: close" in head
    assert body == b"bad request: a GET or HEAD request must not have a body\n"
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled GET /healthz got no answer
    assert served.rejected("bad_request") == 1.0


def test_an_empty_body_is_no_body(serve: type[Served]) -> None:
    served = serve()
    response = httpx.get(served.url("/healthz"), headers={"Content-Length": "0"}, timeout=5)
    assert (response.status_code, response.text) == (200, "ok\n")


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"GARBAGE\r\n\r\n", b"400"), (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"414")],
)
def test_malformed_requests_get_plain_text_not_html(
    serve: type[Served], request_line: bytes, status: bytes
) -> None:
    served = serve()
    head, _, body = raw_exchange(served.port, request_line).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status) and b"Content-Type: text/plain; charset=utf-8" in head
    assert body.startswith(status) and b"<" not in body


def test_not_found_is_plain_text(serve: type[Served]) -> None:
    response = httpx.get(serve().url("/nope"), timeout=5)
    assert (response.status_code, response.text, response.headers["Content-Type"]) == (
        404,
        "not found\n",
        "text/plain; charset=utf-8",
    )


# -- encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("GZIP;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("deflate, gzip;q=0", False),
        ("*;q=0", False),
        ("identity;q=1, gzip;q=0.5", False),
        ("br", False),
        ("", False),
        ("gzip;q=nan", False),
        ("gzip;q=2", False),
    ],
)
def test_accept_encoding_q_values_are_honoured(
    serve: type[Served], accept_encoding: str, gzipped: bool
) -> None:
    served = serve()
    # httpx would add its own Accept-Encoding and decode: a raw request shows what was sent.
    answer = raw_exchange(
        served.port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Accept-Encoding: {accept_encoding}\r\n\r\n".encode(),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert (b"\r\nContent-Encoding: gzip\r\n" in head) == gzipped
    assert b"\r\nVary: Accept, Accept-Encoding\r\n" in head
    text = gzip.decompress(body) if gzipped else body
    assert b"ckpt_exporter_build_info{version=" in text


def test_landing_page_shows_version_jobs_and_links(serve: type[Served]) -> None:
    response = httpx.get(serve().url("/"), timeout=5)
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert f"<p>Version {__version__}, watching 3 job(s).</p>" in response.text
    for path in ("/metrics", "/healthz", "/readyz"):
        assert f'<a href="{path}">{path}</a>' in response.text


def test_a_telemetry_path_of_its_own(tmp_path: Path) -> None:

    app = MetricsApp(ExpositionCache(), SelfMetrics(), lambda: True, telemetry_path="/prometheus/metrics")
    server = MetricsServer(app, [("127.0.0.1", 0)])
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(base + "/prometheus/metrics", timeout=5).status_code == 200
        assert httpx.get(base + "/metrics", timeout=5).status_code == 404
        assert '<a href="/prometheus/metrics">' in httpx.get(base + "/", timeout=5).text
        assert server.urls() == [f"http://127.0.0.1:{server.port}/prometheus/metrics"]
    finally:
        server.stop()


# -- the server's own request metrics ---------------------------------------------------------


def test_request_metrics_by_handler_and_code_start_at_zero(serve: type[Served]) -> None:
    served = serve(ready=lambda: False)
    first = parse_samples(httpx.get(served.url(), timeout=5).text, "ckpt_exporter_http_request")
    zero = {
        (name, frozenset(labels.items())): 0.0
        for handler in ("/metrics", "/healthz", "/readyz", "/", "other")
        for name, labels in (
            ("ckpt_exporter_http_request_duration_seconds_count", {"handler": handler}),
            *(
                []
                if handler == "other"
                else [("ckpt_exporter_http_requests_total", {"handler": handler, "code": "200"})]
            ),
        )
    }
    zero[("ckpt_exporter_http_requests_total", frozenset({"handler": "other", "code": "404"}.items()))] = 0.0
    zero[("ckpt_exporter_http_requests_in_flight", frozenset())] = 1.0  # this scrape
    assert {key: first[key] for key in zero} == zero
    for path in ("/readyz", "/readyz", "/nope", "/healthz"):
        httpx.get(served.url(path), timeout=5)
    httpx.post(served.url(), timeout=5)
    counts = {
        (labels["handler"], labels["code"]): value
        for (name, labels_set), value in parse_samples(
            httpx.get(served.url(), timeout=5).text, "ckpt_exporter_http_requests_total"
        ).items()
        for labels in [dict(labels_set)]
    }
    assert counts == {
        ("/metrics", "200"): 1.0,
        ("/metrics", "405"): 1.0,
        ("/healthz", "200"): 1.0,
        ("/readyz", "200"): 0.0,
        ("/readyz", "503"): 2.0,
        ("/", "200"): 0.0,
        ("other", "404"): 1.0,
    }
    assert served.sample("ckpt_exporter_http_request_duration_seconds_count", {"handler": "/readyz"}) == 2.0


# -- the exporter process ---------------------------------------------------------------------


@pytest.mark.integration
def test_the_exporter_process_answers_head_405_and_q0_and_names_its_address(
    fake_api: tuple[FakeApi, FakeApiServer],
) -> None:
    api, fake = fake_api
    api.add_job("ftjob-a")
    exporter = ExporterProcess(
        {
            "CKPT_EXPORTER_API_BASE_URL": fake.base_url,
            "CKPT_EXPORTER_API_KEY": API_KEY,
            "CKPT_EXPORTER_JOBS": "ftjob-a",
            "CKPT_EXPORTER_LISTEN_ADDRESS": "0.0.0.0",
        }
    )
    try:
        exporter.wait_ready()
        head = httpx.head(exporter.url + "/metrics", timeout=5)  # curl -I
        assert (head.status_code, head.content, head.headers["Content-Type"]) == (
            200,
            b"",
            "text/plain; version=0.0.4; charset=utf-8",
        )
        post = httpx.post(exporter.url + "/metrics", timeout=5)
        assert (post.status_code, post.headers["Allow"], post.text) == (
            405,
            "GET, HEAD",
            "method not allowed: use GET or HEAD\n",
        )
        plain = raw_exchange(
            exporter.port,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip;q=0\r\nConnection: close\r\n\r\n",
        )
        assert b"\r\nContent-Encoding" not in plain.partition(b"\r\n\r\n")[0]
        assert b"\nckpt_exporter_jobs 1.0\n" in plain
        assert "watching 1 job(s)" in exporter.get("/").text
    finally:
        output = exporter.stop()
    assert f"; serving http://0.0.0.0:{exporter.port}/metrics\n" in output


def test_a_405_keeps_a_connection_the_client_asked_to_close_closed(serve: type[Served]) -> None:
    answer = raw_exchange(serve().port, b"DELETE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 ") and b"\r\nConnection: close\r\n" in answer
