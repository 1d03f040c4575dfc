"""When to try a request again, and how long to wait: as the official OpenAI SDK does.

The wait the API asks for (retry-after-ms, Retry-After), the rate-limit headers' durations, the
SDK's exponential backoff, and the tenacity loop that applies them.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ckpt_exporter.transport import Reply

# The official OpenAI SDK's retry constants.
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 120.0  # a longer Retry-After is not waited out in place: the poller holds the job
RETRYABLE_STATUSES = frozenset({408, 409, 429})
T = TypeVar("T")


class Retryable(Exception):
    """An answer worth another attempt (429, 5xx, x-should-retry: true)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"HTTP {reply.status}")
        self.reply = reply


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


def is_retryable(response: httpx.Response) -> bool:
    hint = response.headers.get("x-should-retry")
    if hint == "true":
        return True
    if hint == "false":
        return False
    return response.status_code in RETRYABLE_STATUSES or response.status_code >= 500


def should_retry(exc: BaseException) -> bool:
    return isinstance(exc, Retryable | httpx.TransportError)


class RetryPolicy:
    """Up to `max_retries` more attempts; waits by the API's ask (see `held_for`) or the backoff.

    `held_for()` gives the time left on the gate's hold for the request (noted when the answer
    came), which is the one clock a Retry-After is waited by.
    """

    def __init__(
        self,
        max_retries: int,
        sleep: Callable[[float], Awaitable[None]],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.max_retries = max_retries
        self._sleep = sleep
        self._rng = rng

    async def run(self, attempt: Callable[[], Awaitable[T]], held_for: Callable[[], float | None]) -> T:
        """The first attempt, then tenacity's retries only if it failed in a way worth retrying.

        Nearly every request succeeds at once, and a retry object per request costs as much CPU as
        the rest of the request; so tenacity is handed the first attempt's failure as its own first
        attempt (the same attempt numbers, waits and stops as if it had made it).
        """
        try:
            return await attempt()
        except BaseException as exc:
            if not should_retry(exc):
                raise
            first: BaseException | None = exc

        async def again() -> T:
            nonlocal first
            if first is not None:
                failure, first = first, None
                raise failure
            return await attempt()

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, Retryable):
                asked = retry_after_seconds(exc.reply.response)
                if asked is not None and 0 < asked <= MAX_RETRY_AFTER:
                    held = held_for()
                    return held if held is not None else asked
            return backoff_seconds(state.attempt_number, self._rng)

        retrying = AsyncRetrying(
            stop=self._stop,
            wait=wait,
            retry=retry_if_exception(should_retry),
            sleep=self._sleep,
            reraise=True,
        )
        result: T = await retrying(again)
        return result

    def _stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.max_retries + 1:
            return True
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Retryable):
            asked = retry_after_seconds(exc.reply.response)
            # Longer than we wait in place: give up now and let the poller hold the job.
            return asked is not None and asked > MAX_RETRY_AFTER
        return False
