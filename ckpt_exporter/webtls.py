"""The server's TLS context, rebuilt when its certificate, key or CA files change (cert-manager renewals).

A renewal half written (a key that does not match yet) keeps the previous context, with a warning. A
certificate outside its validity period is still served (refusing to serve would take the metrics
down with it, and a client that does not verify it still works) but says so in a WARNING, at load
and again every hour while it lasts, because every client that verifies it refuses it.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ckpt_exporter.filestamp import FileStamp, file_stamp
from ckpt_exporter.webconfig import TlsSettings, WebConfigError, build_tls_context

log = logging.getLogger(__name__)

VALIDITY_WARNING_INTERVAL_SECONDS = 3600.0


def validity(cert_file: Path) -> tuple[datetime, datetime] | None:
    """(not before, not after) of the file's first certificate; None when it cannot be read."""
    from cryptography import x509  # only with TLS: the import alone costs the process about 14 MB

    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return None  # build_tls_context has said what is wrong with the file
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def validity_problem(cert_file: Path, period: tuple[datetime, datetime] | None, now: datetime) -> str | None:
    """Why the certificate (valid over `period`) is not valid at `now`, or None when it is."""
    if period is None:
        return None
    not_before, not_after = period
    if now > not_after:
        return f"TLS certificate {cert_file} expired at {not_after:%Y-%m-%dT%H:%M:%SZ}"
    if now < not_before:
        return f"TLS certificate {cert_file} is not valid before {not_before:%Y-%m-%dT%H:%M:%SZ}"
    return None


class TlsContexts:
    """`current()`: the SSLContext for a new connection, re-read when a file changed."""

    def __init__(
        self,
        tls: TlsSettings,
        clock: Callable[[], float] = time.time,
        warn_every: float = VALIDITY_WARNING_INTERVAL_SECONDS,
    ) -> None:
        self._tls = tls
        self._clock = clock
        self._warn_every = warn_every
        self._stamps = self._stat()
        self._context = build_tls_context(tls)
        self._period = validity(tls.cert_file)
        self._warned_at: float | None = None
        self._check_validity()

    def _stat(self) -> tuple[FileStamp | None, ...]:
        return tuple(file_stamp(path) for path in self._tls.files())

    def current(self) -> ssl.SSLContext:
        return self._context

    def refresh(self) -> None:
        """Rebuild the context when a file changed (cert-manager renewals); warn of an invalid
        certificate at most every `warn_every` seconds. Called by the web config's watcher."""
        stamps = self._stat()
        if stamps != self._stamps:
            self._stamps = stamps
            try:
                self._context = build_tls_context(self._tls)
            except WebConfigError as exc:
                log.warning("TLS files changed but cannot be used, keeping the previous ones: %s", exc)
            else:
                log.info("TLS certificate files changed: new connections use them")
                self._period = validity(self._tls.cert_file)
                self._warned_at = None
        self._check_validity()

    def _check_validity(self) -> None:
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < self._warn_every:
            return
        problem = validity_problem(self._tls.cert_file, self._period, datetime.fromtimestamp(now, UTC))
        if problem is not None:
            self._warned_at = now
            log.warning("%s; serving it anyway, but clients that verify it will refuse it", problem)
