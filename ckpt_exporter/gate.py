"""The gate every request attempt goes through, shared by all jobs of an account.

In order: the job's own hold (the API asked to wait before the next request about it), a slot (at
most `max_in_flight` requests at once, the jobs listing's pages first in line), a pause while the
API's rate-limit headers say the account is nearly out of requests, then the request-rate budget
(`max_requests_per_second`, no bursts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import httpx
from aiolimiter import AsyncLimiter

from ckpt_exporter.models import ApiError
from ckpt_exporter.retries import MAX_RETRY_AFTER, parse_duration, retry_after_seconds
from ckpt_exporter.slots import PrioritySlots

# The API client's logger: operators filter on it (docs/operations.md quotes its lines).
log = logging.getLogger("ckpt_exporter.api")

# x-ratelimit-reset-requests is honoured up to this long (a garbled header must not stop us for days).
MAX_RATE_LIMIT_PAUSE = 3600.0
# A Retry-After is honoured up to this long: `1e9` or a date in 9999 must not hold a job for years.
MAX_HOLD = 600.0

WaitObserver = Callable[[float], None]  # seconds a request waited for the rate budget


class Budget(Protocol):
    async def acquire(self) -> None: ...


def rate_budget(max_requests_per_second: float) -> Budget:
    """No bursts: one request per 1/rate seconds, in arrival order (aiolimiter is FIFO-fair)."""
    limiter: Budget = AsyncLimiter(1, 1.0 / max_requests_per_second)
    return limiter


class RequestGate:
    """Slots, the rate-limit pause, the rate budget and the per-job holds of one account.

    `budget` spaces the requests (None: no cap; see `rate_budget`). `sleep` and `clock` are
    injectable so that tests need no real waiting.
    """

    def __init__(
        self,
        max_in_flight: int = 16,
        budget: Budget | None = None,
        *,
        observe_wait: WaitObserver | None = None,
        account: str = "default",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = PrioritySlots(max_in_flight)  # held per attempt, not during backoff
        self._low_water = max_in_flight  # requests that may be in flight when an answer arrives
        self._budget = budget
        self._paused_until = 0.0  # clock() time before which no request goes out (rate-limit headers)
        # Per job: clock() time before which no request about that job goes out, and the status
        # that asked for it (Retry-After, retry-after-ms).
        self._held: dict[str, tuple[float, int]] = {}
        self._account_hold: tuple[float, int] = (0.0, 0)  # (until, status) of a 429's hold
        self._account = account
        self._observe_wait = observe_wait or (lambda seconds: None)
        self._sleep = sleep
        self._clock = clock

    @asynccontextmanager
    async def turn(self, job: str | None) -> AsyncIterator[None]:
        """Wait for the holds, a slot, the pause and the budget; hold the slot meanwhile.

        A hold that began while the request queued for the budget sends it back to wait for the
        hold outside its slot: no request goes out during a hold.
        """
        while True:
            await self.wait_for_hold(job)
            # The jobs listing (no job) is walked page after page: it goes first in line.
            async with self.slots.hold(urgent=job is None):
                if await self._wait_for_budget(job):
                    yield
                    return

    async def _wait_for_budget(self, job: str | None) -> bool:
        """Wait for the pause and the budget; False if a hold began meanwhile."""
        started = self._clock()
        try:
            while True:
                while (pause := self._paused_until - self._clock()) > 0:
                    await self._sleep(pause)
                if self._budget is not None:
                    await self._budget.acquire()
                if self._hold(job)[0] > self._clock():
                    return False
                # A pause that began while we queued for the budget holds us too; then a fresh
                # turn, so that the requests queued meanwhile do not all go at once when it ends.
                if self._paused_until <= self._clock():
                    return True
        finally:
            waited = self._clock() - started
            if waited > 0:
                self._observe_wait(waited)

    def note_rate_limit(self, response: httpx.Response) -> None:
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

    def _hold(self, job: str | None) -> tuple[float, int]:
        """(until, status) of the hold that keeps a request about `job` back longest."""
        own = self._held.get(job, (0.0, 0)) if job is not None else (0.0, 0)
        return max(own, self._account_hold)

    async def wait_for_hold(self, job: str | None) -> None:
        """Keep a request back while the API asked to wait: for the account (a 429), or for the job.

        Every endpoint of the job (checkpoints, events, the job itself) waits, not only the request
        that got the Retry-After. A wait beyond MAX_RETRY_AFTER is not slept here: the request fails
        at once with the same status, and the poller holds the job.
        """
        while True:
            until, status = self._hold(job)
            wait = until - self._clock()
            if wait <= 0:
                if job is not None:
                    self._held.pop(job, None)
                return
            if wait > MAX_RETRY_AFTER:
                raise ApiError(
                    f"http_{status}",
                    f"HTTP {status} asked to wait before the next request: {wait:.0f}s left",
                    status=status,
                    retry_after=wait,
                    held=True,
                )
            await self._sleep(wait)

    def note_retry_after(self, job: str | None, response: httpx.Response) -> None:
        """Hold requests for as long as the answer asks (Retry-After, retry-after-ms), up to MAX_HOLD.

        A 429 is about the account's rate limits: it holds every request of the account. Another
        status (a 503, say) holds the requests about the job it answered.
        """
        asked = retry_after_seconds(response)
        if asked is None or asked <= 0:
            return
        now = self._clock()
        until = now + min(asked, MAX_HOLD)
        status = response.status_code
        if status == 429 or job is None:
            if until > self._account_hold[0]:
                if self._account_hold[0] <= now:
                    log.warning(
                        "account %s: HTTP %d asked to wait %.3gs: holding every request of the account "
                        "for %.3gs",
                        self._account,
                        status,
                        asked,
                        until - now,
                    )
                self._account_hold = (until, status)
        elif until > self._held.get(job, (0.0, 0))[0]:
            self._held[job] = (until, status)

    def held_for(self, job: str | None) -> float | None:
        """Seconds left on the hold of requests about `job` (the account's or its own), if any."""
        until = self._hold(job)[0]
        return max(until - self._clock(), 0.0) if until > 0 else None

    def paused_for(self) -> float:
        """Seconds left on the rate-limit pause (x-ratelimit-* headers); 0 when there is none."""
        return max(self._paused_until - self._clock(), 0.0)
