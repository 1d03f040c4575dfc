"""A simulated Microsoft Entra ID token endpoint: a real HTTP server (aiohttp) on loopback.

It speaks what azure-identity sends, so that the exporter signs in through azure-identity itself:

- the App Service managed-identity protocol, which azure-identity reads from IDENTITY_ENDPOINT and
  IDENTITY_HEADER: `GET <endpoint>?api-version=2019-08-01&resource=<scope without /.default>`
  (plus `client_id=` for a user-assigned identity) with the secret in `X-IDENTITY-HEADER`, answered
  with `access_token`, `expires_on` (epoch seconds, as a string), `resource` and `token_type`;
  plain HTTP is fine here, as on App Service itself;
- the OAuth 2.0 client-credentials grant at `POST /<tenant>/oauth2/v2.0/token`, with a client
  secret (EnvironmentCredential) or a federated assertion (WorkloadIdentityCredential, AKS). For
  these azure-identity requires an https authority (AZURE_AUTHORITY_HOST), so the server can serve
  TLS with a self-signed certificate made on the spot (`tls=True`; trust `ca_file`). MSAL, which
  azure-identity's synchronous credentials use, also reads `/<tenant>/v2.0/.well-known/
  openid-configuration` (with disable_instance_discovery): it is served too.

Tokens are HS256 JWTs whose `exp` is their expiry, signed with a key only this process knows; the
fake API accepts a Bearer token when `token_checker(key)` says it is genuine and unexpired.

    identity = FakeIdentity(lifetime=20)
    with FakeIdentityServer(identity) as server:
        os.environ |= {"IDENTITY_ENDPOINT": server.identity_endpoint,
                       "IDENTITY_HEADER": identity.identity_header}
        api = FakeApi(token_check=identity.token_checker())
"""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from ckpt_exporter.fake.certs import self_signed

DEFAULT_AUDIENCE = "https://cognitiveservices.azure.com"  # the resource of the scope .../.default
APP_SERVICE_PATH = "/msi/token"
APP_SERVICE_API_VERSION = "2019-08-01"
TENANT_ID = "00000000-0000-0000-0000-00000000f00d"


def token_checker(
    secret: str, audience: str = DEFAULT_AUDIENCE, clock_skew: float = 0.0
) -> Callable[[str], bool]:
    """Whether a Bearer token was issued with `secret` for `audience` and has not expired.

    `clock_skew`: how far the API's clock runs ahead of the identity endpoint's (tokens are then
    refused that many seconds before the expiry the endpoint announced).
    """

    def check(token: str) -> bool:
        try:
            claims = jwt.decode(
                token, secret, algorithms=["HS256"], audience=audience, options={"require": ["exp"]}
            )
        except jwt.PyJWTError:
            return False
        return time.time() + clock_skew < float(claims["exp"])

    return check


@dataclass(frozen=True)
class IssuedToken:
    at: float
    expires_on: int
    route: str  # app_service, client_secret, workload_identity
    client_id: str | None


@dataclass
class FakeIdentity:
    """The identity provider's state; safe to change from any thread while the server runs.

    `client_ids`: the user-assigned identities that exist (a request for another one is answered
    400, as App Service answers a wrong client id). `client_secrets` and `federated_tokens`: per
    client id, the secret or the federated assertion the OAuth route accepts.
    """

    lifetime: float = 3600.0
    identity_header: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    signing_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    client_ids: frozenset[str] = frozenset()
    client_secrets: dict[str, str] = field(default_factory=dict)
    federated_tokens: dict[str, str] = field(default_factory=dict)
    issued: list[IssuedToken] = field(default_factory=list)
    requests: int = 0
    failing_status: int | None = None  # every token request is answered with this status
    hang_seconds: float = 0.0  # every token request waits this long before its answer
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail(self, status: int = 500) -> None:
        """Answer every token request with `status` until `recover()`."""
        self.failing_status = status

    def recover(self) -> None:
        self.failing_status, self.hang_seconds = None, 0.0

    def hang(self, seconds: float) -> None:
        """Hold every token request this long before answering, until `recover()`."""
        self.hang_seconds = seconds

    def token_checker(self, clock_skew: float = 0.0) -> Callable[[str], bool]:
        return token_checker(self.signing_key, clock_skew=clock_skew)

    def issued_tokens(self) -> list[IssuedToken]:
        with self._lock:
            return list(self.issued)

    def issue(self, audience: str, route: str, client_id: str | None) -> tuple[str, int]:
        now = time.time()
        expires_on = int(now + self.lifetime)
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{TENANT_ID}/",
            "iat": int(now),
            "nbf": int(now),
            "exp": expires_on,
            "appid": client_id or "system-assigned",
            "idtyp": "app",
            "jti": secrets.token_hex(8),  # no two tokens alike, even within a second
        }
        token = jwt.encode(claims, self.signing_key, algorithm="HS256")
        with self._lock:
            self.issued.append(IssuedToken(now, expires_on, route, client_id))
        return token, expires_on

    def _count(self) -> int | None:
        with self._lock:
            self.requests += 1
        return self.failing_status

    # -- the App Service managed-identity protocol ------------------------------------------

    async def app_service(self, request: web.Request) -> web.Response:
        if self.hang_seconds:
            await asyncio.sleep(self.hang_seconds)
        if (status := self._count()) is not None:
            return web.json_response({"statusCode": status, "message": "Simulated failure"}, status=status)
        if request.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return web.json_response(
                {"statusCode": 401, "message": "X-IDENTITY-HEADER is missing or wrong"}, status=401
            )
        query = request.query
        resource = query.get("resource")
        if query.get("api-version") != APP_SERVICE_API_VERSION or not resource:
            return web.json_response(
                {"statusCode": 400, "message": "api-version or resource missing"}, status=400
            )
        client_id = query.get("client_id")
        if client_id is not None and client_id not in self.client_ids:
            message = (
                "No User Assigned or Delegated Managed Identity found for specified ClientId/ResourceId."
            )
            return web.json_response({"statusCode": 400, "message": message}, status=400)
        token, expires_on = self.issue(resource, "app_service", client_id)
        body = {
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id or "system-assigned",
        }
        return web.json_response(body)

    # -- the OAuth 2.0 client-credentials grant ---------------------------------------------

    async def oauth_token(self, request: web.Request) -> web.Response:
        if self.hang_seconds:
            await asyncio.sleep(self.hang_seconds)
        if (status := self._count()) is not None:
            return _oauth_error(status, "temporarily_unavailable", "AADSTS90033: Simulated failure.")
        form = await request.post()
        client_id, scope = str(form.get("client_id", "")), str(form.get("scope", ""))
        if form.get("grant_type") != "client_credentials" or not scope.endswith("/.default"):
            return _oauth_error(400, "invalid_request", "AADSTS900144: grant_type or scope missing.")
        if "client_secret" in form:
            route, accepted = "client_secret", self.client_secrets.get(client_id) == form["client_secret"]
        else:
            route = "workload_identity"
            accepted = self.federated_tokens.get(client_id) == form.get("client_assertion")
        if not accepted:
            return _oauth_error(401, "invalid_client", "AADSTS7000215: Invalid client secret or assertion.")
        token, expires_on = self.issue(scope.removesuffix("/.default"), route, client_id)
        lifetime = max(expires_on - int(time.time()), 0)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }
        )

    async def openid_configuration(self, request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}/{request.match_info['tenant']}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(APP_SERVICE_PATH, self.app_service)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.oauth_token)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self.openid_configuration)
        return app


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


class FakeIdentityServer:
    """Runs a FakeIdentity on loopback in a thread of its own; `tls=True` serves https."""

    def __init__(
        self, identity: FakeIdentity, host: str = "127.0.0.1", port: int = 0, tls: bool = False
    ) -> None:
        self.identity = identity
        self.host = host
        self.port = port
        self.ca_file: Path | None = None  # the certificate to trust, with tls
        self._tls = tls
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-identity", daemon=True)

    @property
    def base_url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}"

    @property
    def identity_endpoint(self) -> str:
        """For IDENTITY_ENDPOINT (the App Service managed-identity route)."""
        return self.base_url + APP_SERVICE_PATH

    @property
    def authority_host(self) -> str:
        """For AZURE_AUTHORITY_HOST (the client-secret and workload-identity routes; needs tls)."""
        return self.base_url

    def export_environment(self) -> None:
        """Point azure-identity's managed-identity route at this server (in this process)."""
        os.environ["IDENTITY_ENDPOINT"] = self.identity_endpoint
        os.environ["IDENTITY_HEADER"] = self.identity.identity_header

    def start(self) -> FakeIdentityServer:
        context = self._tls_context() if self._tls else None
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(context), self._loop).result(timeout=10)
        return self

    def _tls_context(self) -> ssl.SSLContext:
        self._dir = tempfile.TemporaryDirectory(prefix="fake-identity-")
        cert, key = Path(self._dir.name) / "cert.pem", Path(self._dir.name) / "key.pem"
        self_signed(cert, key, self.host)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.ca_file = cert
        return context

    async def _start(self, context: ssl.SSLContext | None) -> None:
        self._runner = web.AppRunner(self.identity.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=context)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if self._dir is not None:
            self._dir.cleanup()

    def __enter__(self) -> FakeIdentityServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
