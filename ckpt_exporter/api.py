"""The fine-tuning API's endpoints, over one shared httpx.AsyncClient.

The client speaks in pages; what to ask for (and when to stop) is the diff layer's business. Every
attempt goes through the account's RequestGate (gate.py); failures are retried as the official
OpenAI SDK retries them (retries.py); what is left is an ApiError with a bounded reason.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from ckpt_exporter.bodies import MAX_JSON_VALUES, BadEncoding, TooLarge, json_values_at_most
from ckpt_exporter.gate import RequestGate, WaitObserver, rate_budget
from ckpt_exporter.logging_setup import redact
from ckpt_exporter.models import ApiError, ListPage
from ckpt_exporter.retries import Retryable, RetryPolicy, is_retryable, retry_after_seconds
from ckpt_exporter.transport import MAX_RESPONSE_BYTES, Reply, Transport, Unsendable, is_timeout

RequestObserver = Callable[[str, str], None]  # (endpoint, code)


class Reauthentication(Protocol):
    """A credential that can be renewed when the API answers 401 to it (keyless Azure: entra.py)."""

    async def renew(self, refused: httpx.Request) -> None:
        """Get a fresh credential for the next attempt, `refused`'s having been refused."""

    def refused(self, status: int, message: str) -> ApiError:
        """The error for a fresh credential refused as well."""


class ApiClient:
    """GETs JSON from the API through one shared gate (slots, rate-limit pause, rate budget).

    `max_requests_per_second` caps the requests of all jobs together, evenly spaced (None: no
    cap), unless a `gate` of the caller's is given. `sleep`, `clock` and `rng` are injectable so
    that tests need no real waiting.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        max_retries: int = 2,
        max_in_flight: int = 16,
        max_requests_per_second: float | None = None,
        observe: RequestObserver | None = None,
        observe_wait: WaitObserver | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        attempt_timeout: float | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        gate: RequestGate | None = None,
        account: str = "default",
        reauthentication: Reauthentication | None = None,
    ) -> None:
        self._transport = Transport(http, max_response_bytes)
        self._reauthentication = reauthentication
        budget = rate_budget(max_requests_per_second) if max_requests_per_second is not None else None
        self.gate = gate or RequestGate(
            max_in_flight, budget, observe_wait=observe_wait, account=account, sleep=sleep, clock=clock
        )
        self._retries = RetryPolicy(max_retries, sleep, rng)
        self._observe = observe or (lambda endpoint, code: None)
        # A whole attempt (connect, headers, body) must end within this; httpx's own timeouts
        # bound each read, so a server that drips a byte at a time would otherwise hold us.
        read_timeout = self._transport.read_timeout
        self._attempt_timeout = attempt_timeout or (3 * read_timeout if read_timeout else None)

    async def _get_once(self, endpoint: str, job: str | None, path: str, params: dict[str, Any]) -> Reply:
        async with self.gate.turn(job):
            try:
                async with asyncio.timeout(self._attempt_timeout):
                    reply = await self._transport.get(path, params)
                if reply.status == 401 and self._reauthentication is not None:
                    reply = await self._with_a_fresh_credential(endpoint, reply, path, params)
            except httpx.TransportError:
                self._observe(endpoint, "error")
                raise
            except TimeoutError:
                self._observe(endpoint, "error")
                raise httpx.ReadTimeout(f"no complete response within {self._attempt_timeout:g}s") from None
            except TooLarge as exc:
                self._observe(endpoint, str(exc.status))
                raise ApiError("too_large", str(exc), status=exc.status) from None
            except BadEncoding as exc:
                self._observe(endpoint, str(exc.status))
                raise ApiError("bad_encoding", str(exc), status=exc.status) from None
            except Unsendable as exc:
                raise ApiError(
                    "invalid_request",
                    f"the request cannot be sent ({exc}): a control character in the API key, or an "
                    "id or cursor from the API too long for a URL",
                ) from None
        self._observe(endpoint, str(reply.status))
        self.gate.note_rate_limit(reply.response)
        if reply.status >= 400:
            self.gate.note_retry_after(job, reply.response)
            if is_retryable(reply.response):
                raise Retryable(reply)
        return reply

    async def _with_a_fresh_credential(
        self, endpoint: str, refused: Reply, path: str, params: dict[str, Any]
    ) -> Reply:
        """One fresh credential and one more attempt after a 401; a 401 to it too is the
        credential's failure (SignInFailed for Entra ID), not a retryable answer."""
        assert self._reauthentication is not None
        self._observe(endpoint, "401")
        await self._reauthentication.renew(refused.response.request)
        async with asyncio.timeout(self._attempt_timeout):
            reply = await self._transport.get(path, params)
        if reply.status == 401:
            self._observe(endpoint, "401")
            raise self._reauthentication.refused(401, error_message(reply))
        return reply

    async def get_json(
        self, endpoint: str, path: str, params: dict[str, Any] | None = None, *, job: str | None = None
    ) -> Any:
        """GET a JSON document about `job` (None: the account's listing), retrying what the OpenAI
        SDK retries; ApiError when it fails for good."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            reply = await self._retries.run(
                lambda: self._get_once(endpoint, job, path, clean), lambda: self.gate.held_for(job)
            )
        except Retryable as exc:
            reply = exc.reply
        except httpx.TransportError as exc:
            # The transport's own exception says more than httpx-aiohttp's mapping of it.
            what = type(exc.__cause__ or exc).__name__
            if is_timeout(exc):
                raise ApiError("timeout", f"timed out ({what})") from None
            raise ApiError("transport", f"connection failed ({what})") from None
        if 300 <= reply.status < 400:  # redirects are not followed: a 3xx body is not the data
            raise ApiError(
                f"http_{reply.status}",
                f"HTTP {reply.status}: a redirect, not followed (check api_base_url)",
                status=reply.status,
            )
        if reply.status >= 400:
            raise ApiError(
                f"http_{reply.status}",
                f"HTTP {reply.status}{_STATUS_HINTS.get(reply.status, '')}: {error_message(reply)}",
                status=reply.status,
                retry_after=retry_after_seconds(reply.response),
            )
        if (values := json_values_at_most(reply.body)) > MAX_JSON_VALUES:
            raise ApiError(
                "too_large", f"the response holds up to {values} JSON values, over {MAX_JSON_VALUES}"
            )
        try:
            return json.loads(reply.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError("malformed_json", f"response is not JSON ({type(exc).__name__})") from None

    async def list_page(
        self,
        endpoint: str,
        path: str,
        *,
        after: str | None,
        limit: int,
        extra: dict[str, Any] | None = None,
        job: str | None = None,
    ) -> ListPage:
        params = {"after": after, "limit": limit, **(extra or {})}
        document = await self.get_json(endpoint, path, params, job=job)
        try:
            page = ListPage.model_validate(document)
        except ValidationError:
            raise ApiError("bad_envelope", "response is not a list page (data, has_more)") from None
        if len(page.data) > limit:
            raise ApiError(
                "too_large", f"the page holds {len(page.data)} items, more than the {limit} asked for"
            )
        return page

    async def list_checkpoints(self, job_id: str, *, after: str | None, limit: int) -> ListPage:
        return await self.list_page(
            "checkpoints", f"{_job_path(job_id)}/checkpoints", after=after, limit=limit, job=job_id
        )

    async def list_jobs(
        self, *, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> ListPage:
        """A page of the account's jobs (newest first), optionally filtered by metadata."""
        extra = {f"metadata[{key}]": value for key, value in (metadata or {}).items()}
        return await self.list_page("jobs", "fine_tuning/jobs", after=after, limit=limit, extra=extra)

    async def list_events(self, job_id: str, *, after: str | None, limit: int) -> ListPage:
        return await self.list_page(
            "events", f"{_job_path(job_id)}/events", after=after, limit=limit, job=job_id
        )

    async def get_job(self, job_id: str) -> Any:
        """One job's raw document (validated by the caller, like list items)."""
        return await self.get_json("job", _job_path(job_id), job=job_id)


def _job_path(job_id: str) -> str:
    return f"fine_tuning/jobs/{quote(job_id, safe='')}"


# What a final status means, for the one log line an operator reads (docs/operations.md).
_STATUS_HINTS = {
    401: " (the API key was rejected: check api_key / api_key_file, and that the key is not revoked)",
    403: " (the key lacks access: check its permissions, and organization / project)",
    404: " (no such fine-tuning job, or not visible to this key's project: check the job id)",
    429: " (rate limited)",
}


def error_message(reply: Reply) -> str:
    """The API's own error message, one line, without any key it might echo."""
    if json_values_at_most(reply.body) > MAX_JSON_VALUES:
        return reply.response.reason_phrase or "error"
    try:
        message = json.loads(reply.body)["error"]["message"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return reply.response.reason_phrase or "error"
    if not isinstance(message, str) or not message:
        return reply.response.reason_phrase or "error"
    return redact(message.splitlines()[0][:200])
