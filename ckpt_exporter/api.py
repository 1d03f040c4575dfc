"""The fine-tuning API client: one shared httpx.AsyncClient, retries by tenacity.

The client speaks in pages; what to ask for (and when to stop) is the diff layer's business.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from ckpt_exporter.models import ListPage

# The official OpenAI SDK's retry constants.
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 120.0
RETRYABLE_STATUSES = frozenset({408, 409, 429})

RequestObserver = Callable[[str, str], None]  # (endpoint, code)


class ApiError(Exception):
    """A request that failed for good (retries spent, or not retryable).

    `reason` is one of a small fixed set, fit for a metric label.
    """

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class _Retryable(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class KeySource:
    """The API key, from settings or a mounted file that is re-read when it changes (rotation)."""

    def __init__(self, key: str | None = None, key_file: Path | None = None) -> None:
        self._key = key
        self._file = key_file
        self._stamp: tuple[int, int] | None = None

    def get(self) -> str | None:
        if self._file is not None:
            try:
                stat = self._file.stat()
            except OSError:
                return self._key  # keep the last key we read while a Secret is being swapped
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if stamp != self._stamp:
                self._key = self._file.read_text(encoding="utf-8").strip() or self._key
                self._stamp = stamp
        return self._key


class ApiKeyAuth(httpx.Auth):
    """Authorization: Bearer KEY (OpenAI), or api-key: KEY (Azure)."""

    def __init__(self, keys: KeySource, header: str = "Authorization") -> None:
        self._keys = keys
        self._header = header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = self._keys.get()
        if key:
            request.headers[self._header] = f"Bearer {key}" if self._header == "Authorization" else key
        yield request


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """The wait the server asks for: retry-after-ms, else Retry-After (seconds or an HTTP date)."""
    header = response.headers.get("retry-after-ms")
    if header is not None:
        try:
            return max(float(header) / 1000.0, 0.0)
        except ValueError:
            pass
    header = response.headers.get("retry-after")
    if header is None:
        return None
    try:
        return max(float(header), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def backoff_seconds(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """min(0.5 * 2^(attempt-1), 8) seconds, times a jitter in [0.75, 1.0]."""
    delay: float = min(INITIAL_RETRY_DELAY * 2.0 ** (attempt - 1), MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * rng())


def _should_retry(exc: BaseException) -> bool:
    return isinstance(exc, _Retryable | httpx.TransportError)


def is_retryable(response: httpx.Response) -> bool:
    hint = response.headers.get("x-should-retry")
    if hint == "true":
        return True
    if hint == "false":
        return False
    return response.status_code in RETRYABLE_STATUSES or response.status_code >= 500


class ApiClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        max_retries: int = 2,
        max_in_flight: int = 16,
        observe: RequestObserver | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._http = http
        self._max_retries = max_retries
        self._slots = asyncio.Semaphore(max_in_flight)  # held per attempt, not during backoff
        self._observe = observe or (lambda endpoint, code: None)
        self._sleep = sleep
        self._rng = rng

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable):
            asked = retry_after_seconds(exc.response)
            if asked is not None and asked <= MAX_RETRY_AFTER:
                return asked
        return backoff_seconds(state.attempt_number, self._rng)

    async def _get_once(self, endpoint: str, path: str, params: dict[str, Any]) -> httpx.Response:
        try:
            async with self._slots:
                response = await self._http.get(path, params=params)
        except httpx.TransportError:
            self._observe(endpoint, "error")
            raise
        self._observe(endpoint, str(response.status_code))
        if response.status_code >= 400 and is_retryable(response):
            raise _Retryable(response)
        return response

    async def get_json(self, endpoint: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON document, retrying what the OpenAI SDK retries; ApiError when it fails for good."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_should_retry),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            response: httpx.Response = await retrying(self._get_once, endpoint, path, clean)
        except _Retryable as exc:
            response = exc.response
        except httpx.TimeoutException as exc:
            raise ApiError("timeout", f"timed out after retries: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise ApiError("transport", f"connection failed after retries: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise ApiError(
                f"http_{response.status_code}",
                f"HTTP {response.status_code}: {_error_message(response)}",
                status=response.status_code,
            )
        try:
            return json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError("malformed_json", f"response is not JSON ({type(exc).__name__})") from None

    async def list_page(
        self, endpoint: str, path: str, *, after: str | None, limit: int, extra: dict[str, Any] | None = None
    ) -> ListPage:
        document = await self.get_json(endpoint, path, {"after": after, "limit": limit, **(extra or {})})
        try:
            return ListPage.model_validate(document)
        except ValidationError:
            raise ApiError("bad_envelope", "response is not a list page (data, has_more)") from None

    async def list_checkpoints(self, job_id: str, *, after: str | None, limit: int) -> ListPage:
        return await self.list_page(
            "checkpoints", f"fine_tuning/jobs/{quote(job_id, safe='')}/checkpoints", after=after, limit=limit
        )

    async def list_jobs(
        self, *, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> ListPage:
        """A page of the account's jobs (newest first), optionally filtered by metadata."""
        extra = {f"metadata[{key}]": value for key, value in (metadata or {}).items()}
        return await self.list_page("jobs", "fine_tuning/jobs", after=after, limit=limit, extra=extra)

    async def get_job(self, job_id: str) -> Any:
        """One job's raw document (validated by the caller, like list items)."""
        return await self.get_json("job", f"fine_tuning/jobs/{quote(job_id, safe='')}")


def _error_message(response: httpx.Response) -> str:
    """The API's own error message (never echoes request headers, so never the key)."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase or "error"
    return str(message).splitlines()[0][:200] if message else response.reason_phrase


def make_http_client(
    base_url: str,
    *,
    auth: httpx.Auth | None,
    headers: dict[str, str],
    timeout: float,
    max_connections: int,
    transport: str = "aiohttp",
    params: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """One AsyncClient per process: keep-alive connections, timeouts, the API's base URL."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    async_transport: httpx.AsyncBaseTransport
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        async_transport = AiohttpTransport(limits=limits)
    else:
        async_transport = httpx.AsyncHTTPTransport(limits=limits)
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/",
        auth=auth,
        headers=headers,
        params=params,
        timeout=httpx.Timeout(timeout),
        transport=async_transport,
        follow_redirects=False,
    )
