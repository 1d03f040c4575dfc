"""/metrics security: TLS, mutual TLS and basic auth from an exporter-toolkit web config file.

The certificates are made here (cryptography), the server is the real MetricsServer on loopback,
and the clients are httpx and raw sockets: what crosses the wire is what is checked.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckpt_exporter.exposition import RenderedJobs
from ckpt_exporter.fake import FakeApi, FakeApiServer
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.server import MetricsApp, MetricsServer
from ckpt_exporter.webconfig import BasicAuth, WebConfig, WebConfigError, load_web_config
from tests.conftest import API_KEY
from tests.helpers import ExporterProcess, wait_for

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests


# -- certificates ----------------------------------------------------------------------------


@dataclass
class Pem:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    directory: Path,
    stem: str,
    common_name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer[1].subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    signer = issuer[0] if issuer else key
    cert = builder.sign(signer, hashes.SHA256())
    pem = Pem(directory / f"{stem}.crt", directory / f"{stem}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pem, key, cert


@dataclass
class Pki:
    directory: Path
    server_ca: Pem
    server: Pem
    client_ca: Pem
    client: Pem
    rogue_client: Pem
    server_ca_pair: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]

    def reissue_server(self) -> x509.Certificate:
        """A new server certificate in the same files (a renewal)."""
        _, _, cert = _issue(self.directory, "server", "localhost", self.server_ca_pair, server=True)
        return cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    server_ca, ca_key, ca_cert = _issue(d, "server-ca", "server CA", None, ca=True)
    server, _, _ = _issue(d, "server", "localhost", (ca_key, ca_cert), server=True)
    client_ca, client_ca_key, client_ca_cert = _issue(d, "client-ca", "client CA", None, ca=True)
    client, _, _ = _issue(d, "client", "prometheus", (client_ca_key, client_ca_cert))
    _, rogue_key, rogue_cert = _issue(d, "rogue-ca", "rogue CA", None, ca=True)
    rogue_client, _, _ = _issue(d, "rogue", "prometheus", (rogue_key, rogue_cert))
    return Pki(d, server_ca, server, client_ca, client, rogue_client, (ca_key, ca_cert))


def client_context(pki: Pki, client: Pem | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.server_ca.cert))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


# -- a server under test ---------------------------------------------------------------------


@dataclass
class Served:
    server: MetricsServer
    metrics: SelfMetrics

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, path: str = "/metrics", scheme: str | None = None) -> str:
        return f"{scheme or self.server.scheme}://127.0.0.1:{self.port}{path}"

    def rejected(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ckpt_exporter_http_rejected_total", {"reason": reason}
        )
        return value if value is not None else -1.0


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    started: list[MetricsServer] = []

    def start(config_text: str | None) -> Served:
        config = None
        if config_text is not None:
            path = tmp_path / "web-config.yml"
            path.write_text(config_text)
            config = load_web_config(path)
        metrics = SelfMetrics()
        server = MetricsServer(MetricsApp(RenderedJobs(), metrics, lambda: True), "127.0.0.1", 0, config)
        server.start()
        started.append(server)
        return Served(server, metrics)

    yield start
    for server in started:
        server.stop()


def tls_config(pki: Pki, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n{extra}"


# -- TLS -------------------------------------------------------------------------------------


def test_no_file_and_an_empty_file_serve_plain_http(serve: object) -> None:
    for text in (None, "", "tls_server_config: {}\n"):
        served = serve(text)  # type: ignore[operator]
        assert served.server.scheme == "http"
        assert httpx.get(served.url(), timeout=5).status_code == 200


def test_tls_serves_metrics_and_refuses_plain_http(serve: object, pki: Pki) -> None:
    served = serve(tls_config(pki))  # type: ignore[operator]
    response = httpx.get(served.url(), verify=client_context(pki), timeout=5)
    assert (response.status_code, served.url().startswith("https://")) == (200, True)
    assert b"ckpt_exporter_build_info" in response.content
    with pytest.raises(httpx.TransportError):
        httpx.get(served.url(scheme="http"), timeout=5)
    assert wait_for(lambda: served.rejected("tls_handshake") == 1.0, 5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(served.url(), timeout=5)  # the client does not trust our CA: its choice, no metric


def test_mutual_tls_requires_a_client_certificate_from_the_ca(serve: object, pki: Pki) -> None:
    served = serve(  # type: ignore[operator]
        tls_config(
            pki, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.client_ca.cert}\n"
        )
    )
    ok = httpx.get(served.url(), verify=client_context(pki, pki.client), timeout=5)
    assert ok.status_code == 200
    for client in (None, pki.rogue_client):
        with pytest.raises(httpx.TransportError):
            httpx.get(served.url(), verify=client_context(pki, client), timeout=5)
    assert wait_for(lambda: served.rejected("tls_handshake") == 2.0, 5)


def test_verify_client_cert_if_given(serve: object, pki: Pki) -> None:
    served = serve(  # type: ignore[operator]
        tls_config(
            pki, f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki.client_ca.cert}\n"
        )
    )
    assert httpx.get(served.url(), verify=client_context(pki), timeout=5).status_code == 200
    assert httpx.get(served.url(), verify=client_context(pki, pki.client), timeout=5).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(served.url(), verify=client_context(pki, pki.rogue_client), timeout=5)


def test_renewed_certificate_is_served_without_a_restart(serve: object, pki: Pki, tmp_path: Path) -> None:
    # Copies, so the module's PKI stays as it was for the other tests.
    for pem in ("server.crt", "server.key"):
        (tmp_path / pem).write_bytes((pki.directory / pem).read_bytes())
    served = serve(
        f"tls_server_config:\n  cert_file: {tmp_path / 'server.crt'}\n  key_file: {tmp_path / 'server.key'}\n"
    )  # type: ignore[operator]

    def serial() -> int:
        context = client_context(pki)
        with (
            socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return int(x509.load_der_x509_certificate(der).serial_number)

    before = serial()
    renewed = Pki(
        tmp_path, pki.server_ca, pki.server, pki.client_ca, pki.client, pki.rogue_client, pki.server_ca_pair
    )
    new_cert = renewed.reissue_server()
    assert new_cert.serial_number != before
    assert serial() == new_cert.serial_number


def test_a_silent_client_does_not_hold_up_others(serve: object, pki: Pki) -> None:
    served = serve(tls_config(pki))  # type: ignore[operator]
    with socket.create_connection(("127.0.0.1", served.port), timeout=5):  # no handshake, ever
        started = time.monotonic()
        assert httpx.get(served.url(), verify=client_context(pki), timeout=5).status_code == 200
        assert time.monotonic() - started < 2.0


# -- basic auth ------------------------------------------------------------------------------


def test_basic_auth_right_wrong_missing(serve: object) -> None:
    served = serve(f"basic_auth_users:\n  prometheus: '{HASH}'\n")  # type: ignore[operator]
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


def test_auth_excluded_paths_let_probes_in(serve: object) -> None:
    served = serve(f"basic_auth_users:\n  prometheus: '{HASH}'\nauth_excluded_paths: [/healthz, /readyz]\n")  # type: ignore[operator]
    assert [httpx.get(served.url(p), timeout=5).status_code for p in ("/healthz", "/readyz", "/metrics")] == [
        200,
        200,
        401,
    ]


def test_tls_and_basic_auth_together_and_extra_headers(serve: object, pki: Pki) -> None:
    served = serve(  # type: ignore[operator]
        tls_config(pki)
        + f"basic_auth_users:\n  prometheus: '{HASH}'\n"
        + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
    )
    response = httpx.get(served.url(), verify=client_context(pki), auth=("prometheus", PASSWORD), timeout=5)
    assert response.status_code == 200
    assert (response.headers["X-Frame-Options"], response.headers["X-Content-Type-Options"]) == (
        "deny",
        "nosniff",
    )


def test_bcrypt_runs_once_per_credentials() -> None:
    calls: list[bytes] = []

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return bcrypt.checkpw(password, hashed)

    auth = BasicAuth({"prometheus": HASH}, checkpw=counting_checkpw)
    header = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    wrong = "Basic " + base64.b64encode(b"prometheus:nope").decode()
    assert [auth.check(header) for _ in range(50)] == [True] * 50
    assert [auth.check(wrong) for _ in range(3)] == [False] * 3
    assert calls == [PASSWORD.encode(), b"nope"]
    for garbage in (None, "", "Bearer x", "Basic !!!", "Basic " + "bm9jb2xvbg==", "basic"):
        assert auth.check(garbage) is False
    assert len(calls) == 2  # malformed headers never reach bcrypt


def test_cached_scrape_is_fast_with_a_real_cost() -> None:
    slow_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(12)).decode()
    auth = BasicAuth({"p": slow_hash})
    header = "Basic " + base64.b64encode(b"p:pw").decode()
    # CPU time of this thread: a preemption or another thread's work does not count.
    started = time.thread_time()
    assert auth.check(header)
    first = time.thread_time() - started
    started = time.thread_time()
    assert auth.check(header)
    second = time.thread_time() - started
    assert first > 0.05 and second < 0.005, (first, second)


# -- shutdown --------------------------------------------------------------------------------


def test_stop_closes_keep_alive_connections_instead_of_leaving_them_hanging(serve: object) -> None:
    served = serve(None)  # type: ignore[operator]
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\nok\n"):  # the whole answer, kept alive
            answer += conn.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" not in answer
        started = time.monotonic()
        served.server.stop()
        conn.settimeout(3)
        assert conn.recv(4096) == b""  # closed, not hanging
        assert time.monotonic() - started < 2.0


def test_answers_while_stopping_close_the_connection(serve: object) -> None:
    served = serve(None)  # type: ignore[operator]
    served.server._server.stopping = True  # the state stop() sets first
    response = httpx.get(served.url("/healthz"), timeout=5)
    assert (response.status_code, response.headers["Connection"]) == (200, "close")


# -- validation ------------------------------------------------------------------------------


TLS = "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config: [1]\n", "tls_server_config: must be a mapping"),
        ("tls_config:\n  cert_file: a\n", "tls_config: unknown key"),
        ("tls_server_config:\n  cert_file: a\n  keyfile: b\n", "tls_server_config.keyfile: unknown key"),
        ("tls_server_config:\n  key_file: {key}\n", "tls_server_config.cert_file: missing"),
        ("tls_server_config:\n  cert_file: {cert}\n", "tls_server_config.key_file: missing"),
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: {key}\n",
            "cannot load /nonexistent.crt",
        ),
        (
            "tls_server_config:\n  cert_file: {key}\n  key_file: {key}\n",
            "tls_server_config.cert_file/key_file",
        ),
        (
            TLS + "  client_auth_type: Maybe\n",
            "'Maybe' is not one of",
        ),
        (
            TLS + "  client_auth_type: RequireAnyClientCert\n",
            "cannot accept a client certificate without verifying it",
        ),
        (
            TLS + "  client_ca_file: {cert}\n",
            "client_ca_file: set without",
        ),
        (
            TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
            "client_ca_file: RequireAndVerifyClientCert needs",
        ),
        (
            TLS + "  min_version: TLS14\n",
            "min_version: 'TLS14'",
        ),
        (
            TLS + "  min_version: TLS13\n  max_version: TLS12\n",
            "min_version: higher than max_version",
        ),
        ("tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "cipher_suites: not supported"),
        ("tls_server_config:\n  cert: '-----BEGIN'\n", "tls_server_config.cert: inline PEM is not supported"),
        ("basic_auth_users:\n  prometheus: hunter2\n", "basic_auth_users.prometheus: not a bcrypt hash"),
        ("basic_auth_users: [a]\n", "basic_auth_users: must be a mapping"),
        ("basic_auth_users:\n  'a:b': '{hash}'\n", "'a:b' is not a valid user name"),
        ("auth_excluded_paths: healthz\n", "auth_excluded_paths: must be a list"),
        ("rate_limit:\n  interval: 1s\n", "rate_limit: not supported"),
        ("http_server_config:\n  headers:\n    Server: x\n", "headers.Server: this header cannot be set"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: always\n", "X-Frame-Options: must be one of"),
        ("tls_server_config:\n  cert_file: [\n", "invalid YAML at line 3"),
        ("- a\n", "the file: must be a mapping"),
    ],
)
def test_bad_web_configs_name_the_key(tmp_path: Path, pki: Pki, text: str, message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text.format(cert=pki.server.cert, key=pki.server.key, hash=HASH))
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, pki: Pki) -> None:
    for pem in ("server.crt", "server.key"):
        (tmp_path / pem).write_bytes((pki.directory / pem).read_bytes())
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    config = load_web_config(tmp_path / "web.yml")
    assert config.tls is not None and config.tls.cert_file == tmp_path / "server.crt"
    assert (config.scheme, WebConfig().scheme) == ("https", "http")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "ckpt_exporter", *args],
        env={**base, "CKPT_EXPORTER_API_KEY": API_KEY, "CKPT_EXPORTER_JOBS": "ftjob-a", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (None, "cannot read"),
        ("basic_auth_users:\n  prometheus: hunter2\n", "basic_auth_users.prometheus: not a bcrypt hash"),
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
            "/nonexistent.crt",
        ),
    ],
)
def test_a_bad_web_config_exits_2_with_one_line(tmp_path: Path, text: str | None, named: str) -> None:
    path = tmp_path / "web.yml"
    if text is not None:
        path.write_text(text)
    for command in (["check-config"], []):
        done = run_cli(*command, env={"CKPT_EXPORTER_WEB_CONFIG_FILE": str(path)})
        lines = done.stderr.splitlines()
        assert (done.returncode, len(lines)) == (2, 1), done.stderr
        assert lines[0].startswith(
            "ckpt-exporter: invalid setting web_config_file (CKPT_EXPORTER_WEB_CONFIG_FILE): "
        )
        assert named in lines[0] and "Traceback" not in done.stderr


@pytest.mark.integration
def test_the_exporter_serves_https_with_basic_auth(tmp_path: Path, pki: Pki) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        tls_config(pki) + f"basic_auth_users:\n  prometheus: '{HASH}'\nauth_excluded_paths: [/healthz]\n"
    )
    api = FakeApi(api_key=API_KEY)
    api.add_job("ftjob-a")
    api.add_checkpoint("ftjob-a", 10, {"train_loss": 0.25})
    with FakeApiServer(api) as fake:
        exporter = ExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": fake.base_url,
                "CKPT_EXPORTER_API_KEY": API_KEY,
                "CKPT_EXPORTER_JOBS": "ftjob-a",
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.5",
                "CKPT_EXPORTER_WEB_CONFIG_FILE": str(web),
            }
        )
        url = f"https://127.0.0.1:{exporter.port}"
        try:

            def scraped() -> bool:
                try:
                    response = httpx.get(
                        url + "/metrics", verify=client_context(pki), auth=("prometheus", PASSWORD), timeout=5
                    )
                except httpx.TransportError:
                    return False
                return (
                    'openai_fine_tuning_checkpoint_train_loss{job_id="ftjob-a",step="10"} 0.25'
                    in response.text
                )

            assert wait_for(scraped, 20), exporter.stop()  # the process starts, as in wait_ready
            assert httpx.get(url + "/metrics", verify=client_context(pki), timeout=5).status_code == 401
            assert httpx.get(url + "/healthz", verify=client_context(pki), timeout=5).status_code == 200
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)
        finally:
            output = exporter.stop()
        assert exporter.proc.returncode == 0, output
        assert f"serving https://127.0.0.1:{exporter.port}/metrics" in output
