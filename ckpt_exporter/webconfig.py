"""TLS and basic auth for /metrics, from a web configuration file in the Prometheus exporter-toolkit's
format (`--web.config.file` of node_exporter and friends), so an existing file works here too:

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # mutual TLS
      client_ca_file: clients-ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2b$12$...           # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')
    auth_excluded_paths: [/healthz, /readyz]

Both are off without a file (or with an empty one). The file is checked at start, with a one-line
error that names the bad key. Every path needs the password when basic auth is on, as in the toolkit;
`auth_excluded_paths` (also the toolkit's) lets kubelet probes reach /healthz and /readyz without it.
This module reads and checks the file; webtls.py re-reads certificates when they change (cert-manager
renewals), webauth.py checks passwords, webwatch.py re-reads this file when it changes.

What the toolkit has and Python's ssl module cannot do (accept a client certificate without verifying
it: RequestClientCert, RequireAnyClientCert), and the toolkit's Go-specific tuning (cipher_suites,
curve_preferences, client_allowed_sans, inline PEM, rate_limit), are refused with a clear error
rather than ignored.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_exporter.yamlfile import YamlFileError, read_yaml

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Headers the toolkit lets a web config set, with their allowed values (None: any).
EXTRA_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_UNSUPPORTED = {
    "tls_server_config.cert": "inline PEM is not supported; use cert_file",
    "tls_server_config.key": "inline PEM is not supported; use key_file",
    "tls_server_config.client_ca": "inline PEM is not supported; use client_ca_file",
    "tls_server_config.cipher_suites": "not supported (Python's defaults apply)",
    "tls_server_config.curve_preferences": "not supported (Python's defaults apply)",
    "tls_server_config.client_allowed_sans": "not supported; use a dedicated client CA instead",
    "rate_limit": "not supported",
}
_IGNORED = {"tls_server_config.prefer_server_cipher_suites", "http_server_config.http2"}
_KNOWN = {
    "": {"tls_server_config", "http_server_config", "basic_auth_users", "auth_excluded_paths", "rate_limit"},
    "tls_server_config": {
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
        "cert",
        "key",
        "client_ca",
        "cipher_suites",
        "curve_preferences",
        "client_allowed_sans",
        "prefer_server_cipher_suites",
    },
    "http_server_config": {"http2", "headers"},
}
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$")


class WebConfigError(Exception):
    """The web config is unusable; the message is one line naming the key."""


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file, *((self.client_ca_file,) if self.client_ca_file else ()))


@dataclass(frozen=True)
class WebConfig:
    path: Path | None = None
    tls: TlsSettings | None = None
    users: dict[str, str] = field(default_factory=dict)  # user -> bcrypt hash
    auth_excluded_paths: frozenset[str] = frozenset()
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


def load_web_config(path: Path) -> WebConfig:
    """Read and check the file (certificates included); WebConfigError says what is wrong."""
    try:
        raw = read_yaml(path)
    except YamlFileError as exc:
        raise WebConfigError(f"{path}: {exc}") from None
    if raw is None:
        raw = {}
    _check_keys(_mapping(raw, ""), "")
    config = WebConfig(
        path=path,
        tls=_tls(_mapping(raw.get("tls_server_config") or {}, "tls_server_config"), path.parent),
        users=_users(raw.get("basic_auth_users")),
        auth_excluded_paths=_excluded(raw.get("auth_excluded_paths")),
        headers=_headers(_mapping(raw.get("http_server_config") or {}, "http_server_config")),
    )
    if config.tls is not None:
        build_tls_context(config.tls)  # the certificates load and match their key
    return config


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebConfigError(f"{where or 'the file'}: must be a mapping")
    return value


def _check_keys(raw: dict[str, Any], where: str) -> None:
    for key, value in raw.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in _KNOWN[where]:
            raise WebConfigError(f"{name}: unknown key")
        if name in _UNSUPPORTED and value not in (None, "", [], {}):
            raise WebConfigError(f"{name}: {_UNSUPPORTED[name]}")
        if not where and key in _KNOWN and value is not None:
            _check_keys(_mapping(value, name), key)


def _string(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebConfigError(f"{where}.{key}: must be a string")
    return value


def _tls(raw: dict[str, Any], base: Path) -> TlsSettings | None:
    where = "tls_server_config"
    values = {key: _string(raw, key, where) for key in _KNOWN[where] - _IGNORED_KEYS}
    if not any(values.values()):
        return None  # as in the toolkit: an empty tls_server_config means plain HTTP
    cert, key = values["cert_file"], values["key_file"]
    if cert is None:
        raise WebConfigError(f"{where}.cert_file: missing (TLS needs cert_file and key_file)")
    if key is None:
        raise WebConfigError(f"{where}.key_file: missing (TLS needs cert_file and key_file)")
    auth = values["client_auth_type"] or "NoClientCert"
    if auth not in CLIENT_AUTH_TYPES:
        hint = (
            " (Python's TLS cannot accept a client certificate without verifying it)"
            if auth in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
            else ""
        )
        raise WebConfigError(
            f"{where}.client_auth_type: {auth!r} is not one of {', '.join(CLIENT_AUTH_TYPES)}{hint}"
        )
    ca = values["client_ca_file"]
    if ca is not None and auth == "NoClientCert":
        raise WebConfigError(f"{where}.client_ca_file: set without a client_auth_type that checks clients")
    if ca is None and auth != "NoClientCert":
        raise WebConfigError(f"{where}.client_ca_file: {auth} needs the CA that signs client certificates")
    versions = {}
    for bound, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        version = values[bound] or default
        if version not in TLS_VERSIONS:
            raise WebConfigError(f"{where}.{bound}: {version!r} is not one of {', '.join(TLS_VERSIONS)}")
        versions[bound] = version
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise WebConfigError(f"{where}.min_version: higher than max_version")
    return TlsSettings(
        cert_file=base / cert,
        key_file=base / key,
        client_ca_file=base / ca if ca is not None else None,
        client_auth_type=auth,
        **versions,
    )


_IGNORED_KEYS = {key.split(".", 1)[1] for key in (*_IGNORED, *_UNSUPPORTED) if "." in key}


def _users(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise WebConfigError("basic_auth_users: must be a mapping of user: bcrypt hash")
    users = {}
    for user, hashed in raw.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"basic_auth_users: {user!r} is not a valid user name (no ':')")
        if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            raise WebConfigError(f"basic_auth_users.{user}: not a bcrypt hash ($2b$..., 60 characters)")
        users[user] = hashed
    return users


def _excluded(raw: Any) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(p, str) and p.startswith("/") for p in raw):
        raise WebConfigError("auth_excluded_paths: must be a list of paths such as /healthz")
    return frozenset(raw)


def _headers(raw: dict[str, Any]) -> dict[str, str]:
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError("http_server_config.headers: must be a mapping")
    for name, value in headers.items():
        if name not in EXTRA_HEADERS:
            raise WebConfigError(f"http_server_config.headers.{name}: this header cannot be set")
        allowed = EXTRA_HEADERS[name]
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            raise WebConfigError(f"http_server_config.headers.{name}: must be one of {allowed}")
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            raise WebConfigError(f"http_server_config.headers.{name}: a control character (a line break?)")
    return dict(headers)


# -- TLS -------------------------------------------------------------------------------------


def build_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(
            f"tls_server_config.cert_file/key_file: cannot load {tls.cert_file} with {tls.key_file}: "
            f"{_ssl_reason(exc)}"
        ) from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                f"tls_server_config.client_ca_file: cannot load {tls.client_ca_file}: {_ssl_reason(exc)}"
            ) from None
    context.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    return context


def _ssl_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
