"""/metrics over TLS, mutual TLS and basic auth, from an exporter-toolkit web config file.

The certificates are made here (cryptography), the server is the real MetricsServer on loopback,
and the clients are httpx and raw sockets: what crosses the wire is what is checked.
"""

from __future__ import annotations

import logging
import select
import socket
from pathlib import Path

import bcrypt
import httpx
import pytest
from cryptography import x509

from tests.helpers import wait_for
from tests.webhelpers import Pki, Served

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


# -- TLS -------------------------------------------------------------------------------------


def test_no_file_and_an_empty_file_serve_plain_http(serve: type[Served]) -> None:
    for text in (None, "", "tls_server_config: {}\n"):
        served = serve(text)
        assert served.server.scheme == "http"
        assert httpx.get(served.url(), timeout=5).status_code == 200


def test_tls_serves_metrics_and_refuses_plain_http(serve: type[Served], pki: Pki) -> None:
    served = serve(pki.tls_config())
    response = httpx.get(served.url(), verify=pki.client_context(), timeout=5)
    assert (response.status_code, served.url().startswith("https://")) == (200, True)
    assert b"ckpt_exporter_build_info" in response.content
    with pytest.raises(httpx.TransportError):
        httpx.get(served.url(scheme="http"), timeout=5)
    assert wait_for(lambda: served.rejected("tls_handshake") == 1.0, 5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(served.url(), timeout=5)  # the client does not trust our CA: its choice, no metric


def test_mutual_tls_requires_a_client_certificate_from_the_ca(serve: type[Served], pki: Pki) -> None:
    served = serve(
        pki.tls_config(
            f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.client_ca.cert}\n"
        )
    )
    ok = httpx.get(served.url(), verify=pki.client_context(pki.client), timeout=5)
    assert ok.status_code == 200
    for client in (None, pki.rogue_client):
        with pytest.raises(httpx.TransportError):
            httpx.get(served.url(), verify=pki.client_context(client), timeout=5)
    assert wait_for(lambda: served.rejected("tls_handshake") == 2.0, 5)


def test_verify_client_cert_if_given(serve: type[Served], pki: Pki) -> None:
    served = serve(
        pki.tls_config(
            f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki.client_ca.cert}\n"
        )
    )
    assert httpx.get(served.url(), verify=pki.client_context(), timeout=5).status_code == 200
    assert httpx.get(served.url(), verify=pki.client_context(pki.client), timeout=5).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(served.url(), verify=pki.client_context(pki.rogue_client), timeout=5)


def test_renewed_certificate_is_served_without_a_restart(
    serve: type[Served], pki: Pki, tmp_path: Path
) -> None:
    # Copies, so the module's PKI stays as it was for the other tests.
    for pem in ("server.crt", "server.key"):
        (tmp_path / pem).write_bytes((pki.directory / pem).read_bytes())
    served = serve(
        f"tls_server_config:\n  cert_file: {tmp_path / 'server.crt'}\n  key_file: {tmp_path / 'server.key'}\n"
    )

    def serial() -> int:
        context = pki.client_context()
        with (
            socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return int(x509.load_der_x509_certificate(der).serial_number)

    before = serial()
    new_cert = pki.issue_server(tmp_path)
    assert new_cert.serial_number != before
    # The web config's watcher checks the files once a second; new connections then get the new one.
    assert wait_for(lambda: serial() == new_cert.serial_number, 10)


def test_a_silent_client_does_not_hold_up_others(serve: type[Served], pki: Pki) -> None:
    served = serve(pki.tls_config())
    with socket.create_connection(("127.0.0.1", served.port), timeout=5):  # no handshake, ever
        # Its handshake would time out after 30 s; the scrape's own timeout is 5 s.
        assert httpx.get(served.url(), verify=pki.client_context(), timeout=5).status_code == 200


# -- basic auth ------------------------------------------------------------------------------


def test_basic_auth_right_wrong_missing(serve: type[Served]) -> None:
    served = serve(f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    assert httpx.get(served.url(), auth=("prometheus", PASSWORD), timeout=5).status_code == 200
    for auth in (("prometheus", "wrong"), ("nobody", PASSWORD), None):
        response = httpx.get(served.url(), auth=auth, timeout=5)
        assert (response.status_code, response.headers["WWW-Authenticate"]) == (
            401,
            'Basic realm="ckpt_exporter"',
        )
        assert b"ckpt_exporter" not in response.content.replace(b"Unauthorized", b"")
    # Every path is protected, as in the exporter-toolkit, unless excluded.
    for path in ("/healthz", "/readyz", "/", "/nope"):
        assert httpx.get(served.url(path), timeout=5).status_code == 401
    assert served.rejected("unauthorized") == 7.0


def test_auth_excluded_paths_let_probes_in(serve: type[Served]) -> None:
    served = serve(f"basic_auth_users:\n  prometheus: '{HASH}'\nauth_excluded_paths: [/healthz, /readyz]\n")
    assert [httpx.get(served.url(p), timeout=5).status_code for p in ("/healthz", "/readyz", "/metrics")] == [
        200,
        200,
        401,
    ]


def test_tls_and_basic_auth_together_and_extra_headers(serve: type[Served], pki: Pki) -> None:
    served = serve(
        pki.tls_config()
        + f"basic_auth_users:\n  prometheus: '{HASH}'\n"
        + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
    )
    response = httpx.get(served.url(), verify=pki.client_context(), auth=("prometheus", PASSWORD), timeout=5)
    assert response.status_code == 200
    assert (response.headers["X-Frame-Options"], response.headers["X-Content-Type-Options"]) == (
        "deny",
        "nosniff",
    )


def test_tls_and_basic_auth_on_a_kept_alive_connection_answer_in_one_record(
    serve: type[Served], pki: Pki
) -> None:
    """Headers and body in one write, so one TLS record: with two and Nagle, the body waits 40 ms."""
    served = serve(pki.tls_config())
    context = pki.client_context()
    with (
        socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        for _ in range(5):
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            select.select([conn], [], [], 5)
            assert conn.recv(65536).endswith(b"\r\nContent-Length: 3\r\n\r\nok\n")


@pytest.mark.parametrize(
    ("valid", "problem"),
    [((-48, -24), "expired at"), ((24, 48), "is not valid before")],
    ids=["expired", "not-yet-valid"],
)
def test_a_certificate_out_of_its_validity_is_served_with_a_warning(
    serve: type[Served],
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    valid: tuple[int, int],
    problem: str,
) -> None:
    import datetime

    pki.issue_server(tmp_path, valid=tuple(datetime.timedelta(hours=h) for h in valid))
    caplog.set_level(logging.WARNING, logger="ckpt_exporter.webtls")
    served = serve(
        f"tls_server_config:\n  cert_file: {tmp_path / 'server.crt'}\n  key_file: {tmp_path / 'server.key'}\n"
    )
    warnings = [r.getMessage() for r in caplog.records if r.name == "ckpt_exporter.webtls"]
    assert len(warnings) == 1 and f"TLS certificate {tmp_path / 'server.crt'} {problem} " in warnings[0]
    assert warnings[0].endswith("; serving it anyway, but clients that verify it will refuse it")
    unverified = httpx.get(served.url("/healthz"), verify=False, timeout=5)
    assert (unverified.status_code, unverified.text) == (200, "ok\n")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(served.url("/healthz"), verify=pki.client_context(), timeout=5)
    # Once an hour, not once a connection.
    assert len([r for r in caplog.records if r.name == "ckpt_exporter.webtls"]) == 1


def test_a_renewal_to_an_expired_certificate_is_warned_about(
    serve: type[Served], pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import datetime

    pki.issue_server(tmp_path)
    served = serve(
        f"tls_server_config:\n  cert_file: {tmp_path / 'server.crt'}\n  key_file: {tmp_path / 'server.key'}\n"
    )
    caplog.set_level(logging.INFO, logger="ckpt_exporter.webtls")
    assert httpx.get(served.url("/healthz"), verify=pki.client_context(), timeout=5).status_code == 200
    assert [r.getMessage() for r in caplog.records if r.name == "ckpt_exporter.webtls"] == []
    pki.issue_server(tmp_path, valid=(datetime.timedelta(days=-2), datetime.timedelta(days=-1)))

    def messages_now() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "ckpt_exporter.webtls"]

    assert wait_for(lambda: len(messages_now()) >= 2, 10), messages_now()  # the watcher's next check
    assert httpx.get(served.url("/healthz"), verify=False, timeout=5).status_code == 200
    messages = messages_now()
    assert messages[0] == "TLS certificate files changed: new connections use them"
    assert f"TLS certificate {tmp_path / 'server.crt'} expired at " in messages[1]
