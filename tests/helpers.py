"""Shared test helpers: free ports, external tools, the exporter as a real process, parsing /metrics,
certificates and the HTTP server on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from ckpt_exporter.exposition import RenderedJobs
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.server import MetricsApp, MetricsServer
from ckpt_exporter.webconfig import load_web_config

REPO = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str) -> str:
    """The tool's path; in CI (CI=true) a missing tool fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def parse_samples(text: str, prefix: str = "") -> Samples:
    """{(sample name, labels): value} for every sample whose name starts with prefix."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class ExporterProcess:
    """The real `python -m ckpt_exporter` process, configured through its environment."""

    def __init__(self, env: dict[str, str], args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}
        full_env.update(
            {
                "CKPT_EXPORTER_LISTEN_ADDRESS": "127.0.0.1",
                "CKPT_EXPORTER_LISTEN_PORT": str(self.port),
                "PYTHONUNBUFFERED": "1",
                **env,
            }
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckpt_exporter", *(args or [])],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5, **kwargs)  # type: ignore[arg-type]

    def metrics(self) -> str:
        return self.get("/metrics").text

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited early:\n{self.stop()}")
            try:
                return self.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(ready, timeout), "exporter did not become ready"

    def stop(self, timeout: float = 10) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output += out or ""
        return self.output


class DrainedExporterProcess(ExporterProcess):
    """An ExporterProcess whose output is read while it runs.

    ExporterProcess reads the pipe only at stop(): a process that logs more than the pipe holds
    (64 KiB: DEBUG logging, a long soak) blocks on its next log line until then.
    """

    def __init__(self, env: dict[str, str], args: list[str] | None = None) -> None:
        super().__init__(env, args)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, name="drain", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    def output_so_far(self) -> str:
        return "".join(self._lines)

    def stop(self, timeout: float = 10) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        self.output = "".join(self._lines)
        return self.output


# -- certificates and the HTTP server on loopback (tests of server.py and the web config) ----------


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
        app = MetricsApp(RenderedJobs(), self.metrics, ready, watched_jobs=lambda: 3)
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
