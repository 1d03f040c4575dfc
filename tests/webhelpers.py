"""Shared helpers of the HTTP server's tests: certificates, the real MetricsServer on loopback, and
reading a raw HTTP response. (tests/helpers.py has the rest; this keeps each under 350 lines.)"""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.server import MetricsApp, MetricsServer
from ckpt_exporter.webconfig import load_web_config


@dataclass
class Pem:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue_certificate(
    directory: Path,
    stem: str,
    common_name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None,
    *,
    ca: bool = False,
    server: bool = False,
    valid: tuple[datetime.timedelta, datetime.timedelta] = (
        datetime.timedelta(minutes=-5),
        datetime.timedelta(days=1),
    ),
) -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate (self-signed without an issuer) in DIRECTORY/STEM.crt and .key; `valid` is
    (not before, not after) relative to now."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer[1].subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid[0])
        .not_valid_after(now + valid[1])
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
    cert = builder.sign(issuer[0] if issuer else key, hashes.SHA256())
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
    """A server CA and its server certificate (localhost, 127.0.0.1), a client CA and its client, and a
    client from a CA nobody trusts."""

    directory: Path
    server_ca: Pem
    server: Pem
    client_ca: Pem
    client: Pem
    rogue_client: Pem
    server_ca_pair: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]

    @classmethod
    def make(cls, d: Path) -> Pki:
        server_ca, ca_key, ca_cert = issue_certificate(d, "server-ca", "server CA", None, ca=True)
        server, _, _ = issue_certificate(d, "server", "localhost", (ca_key, ca_cert), server=True)
        client_ca, client_ca_key, client_ca_cert = issue_certificate(
            d, "client-ca", "client CA", None, ca=True
        )
        client, _, _ = issue_certificate(d, "client", "prometheus", (client_ca_key, client_ca_cert))
        _, rogue_key, rogue_cert = issue_certificate(d, "rogue-ca", "rogue CA", None, ca=True)
        rogue_client, _, _ = issue_certificate(d, "rogue", "prometheus", (rogue_key, rogue_cert))
        return cls(d, server_ca, server, client_ca, client, rogue_client, (ca_key, ca_cert))

    def issue_server(self, directory: Path, **kwargs: Any) -> x509.Certificate:
        """A new server certificate from the same CA in DIRECTORY/server.crt and .key (a renewal)."""
        _, _, cert = issue_certificate(
            directory, "server", "localhost", self.server_ca_pair, server=True, **kwargs
        )
        return cert

    def client_context(self, client: Pem | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.server_ca.cert))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context

    def tls_config(self, extra: str = "") -> str:
        return f"tls_server_config:\n  cert_file: {self.server.cert}\n  key_file: {self.server.key}\n{extra}"


class Served:
    """The real MetricsServer on loopback (port 0), with a web config written from text."""

    def __init__(
        self,
        directory: Path,
        config_text: str | None = None,
        ready: Callable[[], bool] = lambda: True,
        **server_args: Any,
    ) -> None:
        config = None
        if config_text is not None:
            self.config_path = directory / "web-config.yml"
            self.config_path.write_text(config_text)
            config = load_web_config(self.config_path)
        self.metrics = SelfMetrics()
        app = MetricsApp(ExpositionCache(), self.metrics, ready, watched_jobs=lambda: 3)
        self.server = MetricsServer(app, server_args.pop("listen", [("127.0.0.1", 0)]), config, **server_args)
        self.server.start()

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, path: str = "/metrics", scheme: str | None = None) -> str:
        return f"{scheme or self.server.scheme}://127.0.0.1:{self.port}{path}"

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})

    def rejected(self, reason: str) -> float | None:
        return self.sample("ckpt_exporter_http_rejected_total", {"reason": reason})


def read_response(conn: socket.socket | ssl.SSLSocket, head_only: bool = False) -> bytes:
    """One whole HTTP/1.1 response read from a raw connection (headers, then Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0 if head_only else int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
