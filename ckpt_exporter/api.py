"""The fine-tuning API client: one shared httpx.AsyncClient, retries by tenacity, a global budget.

The client speaks in pages; what to ask for (and when to stop) is the diff layer's business.

Every attempt goes through the same gate, shared by all jobs: a slot (at most `max_in_flight`
requests at once, the jobs listing's pages first in line), then a pause while the API's rate-limit
headers say the account is nearly out of requests, then the request-rate budget
(`max_requests_per_second`, no bursts). Failures are retried as the official OpenAI SDK retries
them; what is left is an ApiError with a bounded reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from aiolimiter import AsyncLimiter
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ckpt_exporter.logging_setup import redact, register_secret
from ckpt_exporter.models import ListPage
from ckpt_exporter.slots import PrioritySlots

log = logging.getLogger(__name__)

# The official OpenAI SDK's retry constants.
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 120.0  # a longer Retry-After is not waited out in place: the poller holds the job
RETRYABLE_STATUSES = frozenset({408, 409, 429})

# A page of 100 checkpoints is about 50 KB; anything near this is not a checkpoint list.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# x-ratelimit-reset-requests is honoured up to this long (a garbled header must not stop us for days).
MAX_RATE_LIMIT_PAUSE = 3600.0

RequestObserver = Callable[[str, str], None]  # (endpoint, code)
WaitObserver = Callable[[float], None]  # seconds a request waited for the rate budget


class ApiError(Exception):
    """A request that failed for good (retries spent, or not retryable).

    `reason` is one of a small fixed set, fit for a metric label. `retry_after` is the wait, in
    seconds from when the error was raised, that the API asked for (Retry-After, retry-after-ms):
    no request for the same job should go out before it has passed.
    """

    def __init__(
        self, reason: str, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Reply:
    """A response whose body has been read (within MAX_RESPONSE_BYTES)."""

    response: httpx.Response
    body: bytes

    @property
    def status(self) -> int:
        return self.response.status_code


class _Retryable(Exception):
    def __init__(self, reply: _Reply) -> None:
        super().__init__(f"HTTP {reply.status}")
        self.reply = reply


class KeySource:
    """The API key, from settings or a mounted file that is re-read when it changes (rotation).

    Every key it hands out is registered for redaction from the logs.
    """

    def __init__(self, key: str | None = None, key_file: Path | None = None) -> None:
        self._key = key
        self._file = key_file
        self._stamp: tuple[int, int] | None = None
        register_secret(key)

    def get(self) -> str | None:
        if self._file is not None:
            try:
                stat = self._file.stat()
            except OSError:
                return self._key  # keep the last key we read while a Secret is being swapped
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if stamp != self._stamp:
                try:
                    key = self._file.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError):
                    return self._key
                register_secret(key)
                if key and self._key is not None and key != self._key:
                    log.info("the API key file %s changed: using the new key", self._file)
                self._key = key or self._key
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
            return _finite_wait(float(header) / 1000.0)
        except ValueError:
            pass
    header = response.headers.get("retry-after")
    if header is None:
        return None
    try:
        return _finite_wait(float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    return _finite_wait(when.timestamp() - (time.time() if now is None else now))


def _finite_wait(seconds: float) -> float | None:
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite: ignore
        return None
    return max(seconds, 0.0)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration as the API's x-ratelimit-reset-* headers write them.

    >>> parse_duration("6m0s"), parse_duration("250ms"), parse_duration("1h2m3.5s")
    (360.0, 0.25, 3723.5)
    """
    text = text.strip()
    if not text:
        return None
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


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


def _is_timeout(exc: httpx.TransportError) -> bool:
    """A timeout, not some other transport failure.

    httpx-aiohttp maps every aiohttp connection error (a reset, a server that hung up) to
    httpx.ConnectTimeout, so the underlying cause decides.
    """
    if not isinstance(exc, httpx.TimeoutException):
        return False
    cause = exc.__cause__
    return cause is None or isinstance(cause, TimeoutError)


class ApiClient:
    """GETs JSON from the API through one shared gate (slots, rate-limit pause, rate budget).

    `max_requests_per_second` caps the requests of all jobs together, evenly spaced (None: no
    cap). When a response says the account has `max_in_flight` requests or fewer left
    (x-ratelimit-remaining-requests), no request goes out until x-ratelimit-reset-requests has
    passed. `sleep`, `clock` and `rng` are injectable so that tests need no real waiting.
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
    ) -> None:
        self._http = http
        self._base_url = str(http.base_url)  # ends with "/"
        self._extensions = {"timeout": http.timeout.as_dict()}
        self._max_retries = max_retries
        self._slots = PrioritySlots(max_in_flight)  # held per attempt, not during backoff
        self._low_water = max_in_flight  # requests that may be in flight when an answer arrives
        # No bursts: one request per 1/rate seconds, in arrival order (aiolimiter is FIFO-fair).
        self._budget = (
            AsyncLimiter(1, 1.0 / max_requests_per_second) if max_requests_per_second is not None else None
        )
        self._paused_until = 0.0  # clock() time before which no request goes out (rate-limit headers)
        # Per job (the id in the request's path): clock() time before which no request about that
        # job goes out, and the status that asked for it (Retry-After, retry-after-ms).
        self._held: dict[str, tuple[float, int]] = {}
        self._observe = observe or (lambda endpoint, code: None)
        self._observe_wait = observe_wait or (lambda seconds: None)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        # A whole attempt (connect, headers, body) must end within this; httpx's own timeouts
        # bound each read, so a server that drips a byte at a time would otherwise hold us.
        read_timeout = http.timeout.read
        self._attempt_timeout = attempt_timeout or (3 * read_timeout if read_timeout else None)
        self._max_response_bytes = max_response_bytes

    # -- the gate --------------------------------------------------------------------------

    async def _wait_for_budget(self) -> None:
        started = self._clock()
        while True:
            while (pause := self._paused_until - self._clock()) > 0:
                await self._sleep(pause)
            if self._budget is not None:
                await self._budget.acquire()
            # A pause that began while we queued for the budget holds us too; then a fresh turn,
            # so that the requests queued meanwhile do not all go at once when it ends.
            if self._paused_until <= self._clock():
                break
        waited = self._clock() - started
        if waited > 0:
            self._observe_wait(waited)

    def _note_rate_limit(self, response: httpx.Response) -> None:
        """Pause every request until the reset when the account is nearly out of requests."""
        remaining = response.headers.get("x-ratelimit-remaining-requests")
        reset = response.headers.get("x-ratelimit-reset-requests")
        if remaining is None or reset is None:
            return
        try:
            left = int(remaining)
        except ValueError:
            return
        seconds = parse_duration(reset)
        if left > self._low_water or seconds is None or seconds <= 0:
            return
        now = self._clock()
        until = now + min(seconds, MAX_RATE_LIMIT_PAUSE)
        if until > self._paused_until:
            if self._paused_until <= now:
                log.info(
                    "API rate limit nearly reached (%d request(s) left): pausing requests for %.3gs",
                    left,
                    until - now,
                )
            self._paused_until = until

    # -- one attempt -----------------------------------------------------------------------

    async def _wait_for_job(self, job: str | None) -> None:
        """Keep a request about a job back while the API asked to wait for that job.

        Every endpoint of the job (checkpoints, events, the job itself) waits, not only the request
        that got the Retry-After. A wait beyond MAX_RETRY_AFTER is not slept here: the request fails
        at once with the same status, and the poller holds the job.
        """
        if job is None:
            return
        while (held := self._held.get(job)) is not None:
            until, status = held
            wait = until - self._clock()
            if wait <= 0:
                self._held.pop(job, None)
                return
            if wait > MAX_RETRY_AFTER:
                raise ApiError(
                    f"http_{status}",
                    f"HTTP {status} asked to wait before the next request about this job: {wait:.0f}s left",
                    status=status,
                    retry_after=wait,
                )
            await self._sleep(wait)

    def _note_retry_after(self, job: str | None, response: httpx.Response) -> None:
        asked = retry_after_seconds(response)
        if job is None or asked is None or asked <= 0:
            return
        until = self._clock() + asked
        if until > self._held.get(job, (0.0, 0))[0]:
            self._held[job] = (until, response.status_code)

    async def _get_once(self, endpoint: str, path: str, params: dict[str, Any]) -> _Reply:
        job = _job_in(path)
        await self._wait_for_job(job)
        # The jobs listing (no job in its path) is walked page after page: it goes first in line.
        async with self._slots.hold(urgent=job is None):
            await self._wait_for_budget()
            try:
                async with asyncio.timeout(self._attempt_timeout):
                    reply = await self._fetch(path, params)
            except httpx.TransportError:
                self._observe(endpoint, "error")
                raise
            except TimeoutError:
                self._observe(endpoint, "error")
                raise httpx.ReadTimeout(f"no complete response within {self._attempt_timeout:g}s") from None
            except _TooLarge as exc:
                self._observe(endpoint, str(exc.status))
                raise ApiError("too_large", str(exc), status=exc.status) from None
            except Exception as exc:
                # A transport library's own error that slipped through its mapping (httpx-aiohttp
                # re-raises what it does not know): a failed attempt like any other.
                if not (isinstance(exc, OSError | EOFError) or _is_transport_library_error(exc)):
                    raise
                self._observe(endpoint, "error")
                log.debug("request failed with %s", type(exc).__name__)
                raise httpx.TransportError(f"{type(exc).__name__}") from exc
        self._observe(endpoint, str(reply.status))
        self._note_rate_limit(reply.response)
        if reply.status >= 400:
            self._note_retry_after(job, reply.response)
        if reply.status >= 400 and is_retryable(reply.response):
            raise _Retryable(reply)
        return reply

    def _request(self, path: str, params: dict[str, Any]) -> httpx.Request:
        """The GET for `path` (relative to the base URL) with `params` after the client's own.

        Built here rather than by `client.stream("GET", path, params=...)`: httpx's request builder
        parses and merges the URL three times over, about a sixth of the exporter's CPU.
        """
        own = [(key, value) for key, value in self._http.params.multi_items() if key not in params]
        query = urlencode([*own, *params.items()], quote_via=quote)
        url = httpx.URL(f"{self._base_url}{path}?{query}" if query else f"{self._base_url}{path}")
        request = httpx.Request("GET", url, headers=self._http.headers, extensions=self._extensions)
        if self._http.cookies:  # what the API set (e.g. a load balancer's), sent back as httpx does
            self._http.cookies.set_cookie_header(request)
        return request

    async def _fetch(self, path: str, params: dict[str, Any]) -> _Reply:
        response = await self._http.send(self._request(path, params), stream=True)
        async with contextlib.aclosing(response):
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self._max_response_bytes:
                raise _TooLarge(response.status_code, int(declared), self._max_response_bytes)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self._max_response_bytes:
                    raise _TooLarge(response.status_code, size, self._max_response_bytes)
                chunks.append(chunk)
        return _Reply(response, b"".join(chunks))

    # -- retries -----------------------------------------------------------------------------

    def _stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self._max_retries + 1:
            return True
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable):
            asked = retry_after_seconds(exc.reply.response)
            # Longer than we wait in place: give up now and let the poller hold the job.
            return asked is not None and asked > MAX_RETRY_AFTER
        return False

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable):
            asked = retry_after_seconds(exc.reply.response)
            if asked is not None and 0 < asked <= MAX_RETRY_AFTER:
                # The job's hold, noted when the answer came, is the one clock to wait by.
                held = self._held.get(_job_in(state.args[1]) or "")
                return max(held[0] - self._clock(), 0.0) if held is not None else asked
        return backoff_seconds(state.attempt_number, self._rng)

    async def _get_with_retries(self, endpoint: str, path: str, params: dict[str, Any]) -> _Reply:
        """The first attempt, then tenacity's retries only if it failed in a way worth retrying.

        Nearly every request succeeds at once, and a retry object per request costs as much CPU as
        the rest of the request; so tenacity is handed the first attempt's failure as its own first
        attempt (the same attempt numbers, waits and stops as if it had made it).
        """
        try:
            return await self._get_once(endpoint, path, params)
        except BaseException as exc:
            if not _should_retry(exc):
                raise
            first: BaseException | None = exc

        async def attempt(endpoint: str, path: str, params: dict[str, Any]) -> _Reply:
            nonlocal first
            if first is not None:
                failure, first = first, None
                raise failure
            return await self._get_once(endpoint, path, params)

        retrying = AsyncRetrying(
            stop=self._stop,
            wait=self._wait,
            retry=retry_if_exception(_should_retry),
            sleep=self._sleep,
            reraise=True,
        )
        reply: _Reply = await retrying(attempt, endpoint, path, params)
        return reply

    async def get_json(self, endpoint: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON document, retrying what the OpenAI SDK retries; ApiError when it fails for good."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            reply = await self._get_with_retries(endpoint, path, clean)
        except _Retryable as exc:
            reply = exc.reply
        except httpx.TransportError as exc:
            # The transport's own exception says more than httpx-aiohttp's mapping of it.
            what = type(exc.__cause__ or exc).__name__
            if _is_timeout(exc):
                raise ApiError("timeout", f"timed out ({what})") from None
            raise ApiError("transport", f"connection failed ({what})") from None
        if reply.status >= 400:
            raise ApiError(
                f"http_{reply.status}",
                f"HTTP {reply.status}{_STATUS_HINTS.get(reply.status, '')}: {_error_message(reply)}",
                status=reply.status,
                retry_after=retry_after_seconds(reply.response),
            )
        try:
            return json.loads(reply.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError("malformed_json", f"response is not JSON ({type(exc).__name__})") from None

    async def list_page(
        self, endpoint: str, path: str, *, after: str | None, limit: int, extra: dict[str, Any] | None = None
    ) -> ListPage:
        document = await self.get_json(endpoint, path, {"after": after, "limit": limit, **(extra or {})})
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
            "checkpoints", f"fine_tuning/jobs/{quote(job_id, safe='')}/checkpoints", after=after, limit=limit
        )

    async def list_jobs(
        self, *, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> ListPage:
        """A page of the account's jobs (newest first), optionally filtered by metadata."""
        extra = {f"metadata[{key}]": value for key, value in (metadata or {}).items()}
        return await self.list_page("jobs", "fine_tuning/jobs", after=after, limit=limit, extra=extra)

    async def list_events(self, job_id: str, *, after: str | None, limit: int) -> ListPage:
        return await self.list_page(
            "events", f"fine_tuning/jobs/{quote(job_id, safe='')}/events", after=after, limit=limit
        )

    async def get_job(self, job_id: str) -> Any:
        """One job's raw document (validated by the caller, like list items)."""
        return await self.get_json("job", f"fine_tuning/jobs/{quote(job_id, safe='')}")


_JOB_PATH = re.compile(r"^/?fine_tuning/jobs/([^/?#]+)")


def _job_in(path: str) -> str | None:
    """The (encoded) job id a request is about, from its path; None for the jobs listing."""
    match = _JOB_PATH.match(path)
    return match.group(1) if match else None


class _TooLarge(Exception):
    def __init__(self, status: int, size: int, cap: int) -> None:
        super().__init__(f"the response is larger than {cap} bytes (at least {size})")
        self.status = status


def _is_transport_library_error(exc: Exception) -> bool:
    """aiohttp's errors (the transport under httpx-aiohttp), without importing aiohttp here."""
    return any(cls.__module__.startswith("aiohttp") for cls in type(exc).__mro__)


# What a final status means, for the one log line an operator reads (docs/operations.md).
_STATUS_HINTS = {
    401: " (the API key was rejected: check api_key / api_key_file, and that the key is not revoked)",
    403: " (the key lacks access: check its permissions, and organization / project)",
    404: " (no such fine-tuning job, or not visible to this key's project: check the job id)",
    429: " (rate limited)",
}


def _error_message(reply: _Reply) -> str:
    """The API's own error message, one line, without any key it might echo."""
    try:
        message = json.loads(reply.body)["error"]["message"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return reply.response.reason_phrase or "error"
    if not isinstance(message, str) or not message:
        return reply.response.reason_phrase or "error"
    return redact(message.splitlines()[0][:200])


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
