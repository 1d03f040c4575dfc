"""Keyless sign-in with Microsoft Entra ID: `Authorization: Bearer <token>` from azure-identity.

azure-identity's DefaultAzureCredential finds the identity (environment credentials, AKS workload
identity, managed identity, a developer's Azure CLI login) and caches its tokens; this module asks
it for one when azure-identity's own rules say a refresh is due, and otherwise reuses the token it
holds, so that a request costs no call into azure-identity:

- a token with a `refresh_on` (azure-identity sets it for tokens of two hours or more) is kept
  until then; any other until five minutes before it expires (azure-identity's refresh offset);
- within those five minutes azure-identity refreshes at most every 30 s and keeps the old token if
  the refresh fails, so it is asked again every 30 s until the token is about to expire;
- a token shorter-lived than that is never refreshed early by azure-identity (it does not ask its
  endpoint twice within 30 s while the token is valid): in its last EXPIRY_MARGIN seconds the
  requests wait for it to expire and take the new one, rather than being sent with a token that
  will have expired when they arrive.

One fetch at a time per account, shared by every request that needs it. A 401 answered to a
token makes one fresh token (from a new credential: azure-identity's cache would hand back the
token it holds) and one retry; the API client does that (api.py, `Reauthentication`), where the
401's body is read within the byte cap like any other. When no token can be had the request fails at once
with SignInFailed (a job's poll then fails: job_up 0), the cause is logged once, counted by a
bounded reason, and the next try comes at the next request after RETRY_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from ckpt_exporter.logging_setup import forget_secret, redact, register_secret
from ckpt_exporter.models import SignInFailed

log = logging.getLogger(__name__)

DEFAULT_SCOPE = "https://cognitiveservices.azure.com/.default"
# Bounded values of ckpt_exporter_token_failures_total{reason}; docs/operations.md says what to do.
TOKEN_FAILURE_REASONS = (
    "unavailable",
    "unreachable",
    "endpoint_error",
    "rejected",
    "timeout",
    "api_rejected",
)
REFRESH_OFFSET = 300.0  # azure-identity's DEFAULT_REFRESH_OFFSET
RECHECK_SECONDS = 30.0  # azure-identity's DEFAULT_TOKEN_REFRESH_RETRY_DELAY
EXPIRY_MARGIN = 2.0  # a token this close to expiry is not sent (it could expire on the way)
RETRY_SECONDS = 2.0  # after a failed fetch, requests fail at once for this long, then try again
FETCH_TIMEOUT = 60.0  # azure-identity spends ~5 s retrying a failing endpoint; a hung one stops here
# Environment variables azure-identity reads that hold secrets: redacted from the logs.
SECRET_VARIABLES = (
    "IDENTITY_HEADER",
    "MSI_SECRET",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
)


class TokenCredential(Protocol):
    """What we use of azure-identity's async credentials."""

    async def get_token_info(self, *scopes: str) -> Any: ...

    async def close(self) -> None: ...


class IdentityTraffic:
    """What the last fetch saw of the identity endpoint (azure-core's request/response hooks)."""

    def __init__(self) -> None:
        self.requests = 0
        self.last_status: int | None = None

    def reset(self) -> None:
        self.requests, self.last_status = 0, None

    def on_request(self, request: Any) -> None:
        self.requests += 1

    def on_response(self, response: Any) -> None:
        self.last_status = response.http_response.status_code


CredentialFactory = Callable[[IdentityTraffic], TokenCredential]


def default_credential(client_id: str | None) -> CredentialFactory:
    """DefaultAzureCredential, with `client_id` as the user-assigned (or workload) identity."""

    def make(traffic: IdentityTraffic) -> TokenCredential:
        from azure.identity.aio import DefaultAzureCredential

        options: dict[str, Any] = {
            "raw_request_hook": traffic.on_request,
            "raw_response_hook": traffic.on_response,
        }
        if client_id:
            options.update(managed_identity_client_id=client_id, workload_identity_client_id=client_id)
        credential: TokenCredential = DefaultAzureCredential(**options)
        return credential

    return make


@dataclass(frozen=True)
class _Held:
    token: str
    expires_on: float
    ask_at: float  # when azure-identity is asked again


class TokenSource:
    """An account's Entra ID tokens for one scope; see the module docstring for when it asks."""

    def __init__(
        self,
        scope: str = DEFAULT_SCOPE,
        *,
        account: str = "default",
        credential: CredentialFactory | None = None,
        client_id: str | None = None,
        on_failure: Callable[[str], None] | None = None,
        retry_seconds: float = RETRY_SECONDS,
        fetch_timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self._scope = scope
        self._account = account
        self._factory = credential or default_credential(client_id)
        self._credential: TokenCredential | None = None
        self._on_failure = on_failure or (lambda reason: None)
        self._retry_seconds = retry_seconds
        self._fetch_timeout = fetch_timeout
        self._traffic = IdentityTraffic()
        self._held: _Held | None = None
        self._fetch: asyncio.Future[_Held] | None = None
        self._failure: tuple[str, str] | None = None  # (cause, message) of the last failed fetch
        self._retry_at = 0.0  # monotonic time before which a failed fetch is not repeated
        self._logged: str | None = None  # the cause last logged
        self._registered: deque[str] = deque()  # tokens redacted from the logs (the last few)
        for name in SECRET_VARIABLES:
            register_secret(os.environ.get(name))

    async def token(self) -> str:
        held = self._held
        if held is not None and time.time() < held.ask_at:
            return held.token
        return (await self._refresh(wait_out_expiry=True)).token

    async def renew(self, stale: str) -> str:
        """A token to retry with after the API answered 401 to `stale`."""
        held = self._held
        if held is not None and held.token != stale and time.time() < held.expires_on - EXPIRY_MARGIN:
            return held.token  # renewed meanwhile, by another request
        return (await self._refresh(wait_out_expiry=False, fresh=True)).token

    async def close(self) -> None:
        if self._credential is not None:
            await self._credential.close()

    def rejected_by_api(self, status: int, message: str) -> SignInFailed:
        """The API refused a fresh token: the identity lacks the role, or the scope is wrong."""
        return self._failed(
            "api_rejected",
            f"the API rejected the Entra ID token (HTTP {status}: {message}): "
            "give the identity the role Cognitive Services OpenAI Contributor on the resource, "
            "and check azure_token_scope",
            fetch=False,
        )

    def accepted_by_api(self) -> None:
        if self._logged == "api_rejected":
            self._logged = None
            log.info("account %s: the API accepts the Entra ID token again", self._account)

    # -- fetching ------------------------------------------------------------------------------

    async def _refresh(self, *, wait_out_expiry: bool, fresh: bool = False) -> _Held:
        if self._fetch is None or self._fetch.done():
            if self._failure is not None and time.monotonic() < self._retry_at:
                raise SignInFailed(*self._failure)
            self._fetch = asyncio.ensure_future(self._fetch_token(wait_out_expiry, fresh))
            self._fetch.add_done_callback(_retrieve)
        # Shielded: a request that gives up (its own timeout) does not cancel the others' fetch.
        return await asyncio.shield(self._fetch)

    async def _fetch_token(self, wait_out_expiry: bool, fresh: bool) -> _Held:
        if fresh and self._credential is not None:
            # The API refused a token azure-identity still holds as valid (clocks apart, a token
            # revoked): only a new credential, with an empty cache, asks its endpoint again.
            credential, self._credential = self._credential, None
            await credential.close()
        try:
            async with asyncio.timeout(self._fetch_timeout):
                info = await self._ask()
                held = self._held
                if wait_out_expiry and held is not None and info.token == held.token:
                    # azure-identity hands out the token it has until that expires: wait for it.
                    wait = info.expires_on - time.time()
                    if wait <= EXPIRY_MARGIN:
                        await asyncio.sleep(max(wait, 0.0) + 0.05)
                        info = await self._ask()
        except Exception as exc:
            raise self._failed(*self._cause(exc)) from None
        return self._accepted(info)

    async def _ask(self) -> Any:
        self._traffic.reset()
        if self._credential is None:
            self._credential = self._factory(self._traffic)
        return await self._credential.get_token_info(self._scope)

    def _accepted(self, info: Any) -> _Held:
        now = time.time()
        expires_on = float(info.expires_on)
        if info.refresh_on and info.refresh_on > now:
            ask_at = float(info.refresh_on)
        elif expires_on - REFRESH_OFFSET > now:
            ask_at = expires_on - REFRESH_OFFSET
        else:
            ask_at = now + RECHECK_SECONDS
        held = _Held(info.token, expires_on, min(ask_at, expires_on - EXPIRY_MARGIN))
        if self._held is None:
            log.info("account %s: signed in with Microsoft Entra ID", self._account)
        if self._held is None or held.token != self._held.token:
            self._remember(held.token)
        self._held, self._failure = held, None
        if self._logged not in (None, "api_rejected"):
            log.info("account %s: signed in with Entra ID again", self._account)
            self._logged = None
        return held

    def _remember(self, token: str) -> None:
        """Redact the new token from the logs; forget the oldest (expired) ones."""
        register_secret(token)
        self._registered.append(token)
        while len(self._registered) > 3:
            forget_secret(self._registered.popleft())

    # -- failures ------------------------------------------------------------------------------

    def _cause(self, exc: Exception) -> tuple[str, str]:
        """(reason, what happened) from the exception and what the identity endpoint answered."""
        status, detail = self._traffic.last_status, _detail(exc)
        if isinstance(exc, TimeoutError):
            return "timeout", f"no token within {self._fetch_timeout:g}s"
        if status is not None and 400 <= status < 500 and status != 429:
            return "rejected", f"the identity endpoint refused the request (HTTP {status}): {detail}"
        if status is not None:
            return "endpoint_error", f"the identity endpoint answered HTTP {status}: {detail}"
        if self._traffic.requests:
            return "unreachable", f"the identity endpoint did not answer: {detail}"
        return "unavailable", f"no identity to sign in with: {detail}"

    def _failed(self, cause: str, message: str, *, fetch: bool = True) -> SignInFailed:
        self._on_failure(cause)
        if fetch:  # the next fetch waits a little
            self._failure = (cause, message)
            self._retry_at = time.monotonic() + self._retry_seconds
        if self._logged != cause:
            self._logged = cause
            then = (
                f"tried again every {self._retry_seconds:g}s" if fetch else "polls go on at the poll interval"
            )
            log.error("account %s: no Entra ID token (%s): %s; %s", self._account, cause, message, then)
        return SignInFailed(cause, message)


def _retrieve(future: asyncio.Future[_Held]) -> None:
    if not future.cancelled():
        future.exception()  # a failure nobody waited for is not "never retrieved"


def _detail(exc: Exception) -> str:
    """One line of azure-identity's message: for DefaultAzureCredential's list of attempts, the last."""
    text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    attempts = [line for line in lines if re.match(r"^\w+Credential: ", line)]
    line = attempts[-1] if attempts else lines[0] if lines else type(exc).__name__
    return redact(line[:240])


class EntraAuth(httpx.Auth):
    """Authorization: Bearer <token>. A 401 to it is answered by the API client (api.py, where every
    body is read within its cap): `renew`, one more attempt, and `refused` if that fails too."""

    def __init__(self, tokens: TokenSource) -> None:
        self._tokens = tokens

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("Entra ID sign-in needs the async client")
        yield request  # pragma: no cover

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._tokens.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            self._tokens.accepted_by_api()

    async def renew(self, refused: httpx.Request) -> None:
        await self._tokens.renew(refused.headers.get("Authorization", "").removeprefix("Bearer "))

    def refused(self, status: int, message: str) -> SignInFailed:
        return self._tokens.rejected_by_api(status, message)
