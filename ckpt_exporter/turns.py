"""The poller's turns: at most `max_active` polls at once, the rest queued in order.

Enough turns keep every request slot busy, while thousands of jobs do not mean as many tasks (and
their memory) at every tick. A job is queued or polled at most once at a time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("ckpt_exporter.poller")  # the poller's, as before the split


class HasJobId(Protocol):
    @property
    def job_id(self) -> str: ...


J = TypeVar("J", bound=HasJobId)


class Turns(Generic[J]):
    """Runs `poll(job)` for queued jobs, each in a task of its own once a turn is free.

    `current(job_id)` is the job as it is now watched (None once it is not): a job removed or
    replaced while it waited for its turn is skipped.
    """

    def __init__(
        self,
        max_active: int,
        poll: Callable[[J], Coroutine[Any, Any, None]],
        current: Callable[[str], J | None],
    ) -> None:
        self._max_active = max_active
        self._semaphore = asyncio.Semaphore(max_active)
        self._held = 0  # turns taken and not given back
        self._poll = poll
        self._current = current
        # Jobs whose poll is running (its task) or queued for a turn (None).
        self._in_flight: dict[str, asyncio.Task[None] | None] = {}

    @property
    def free(self) -> int:
        """Turns nobody holds."""
        return self._max_active - self._held

    def busy(self, job_id: str) -> bool:
        """The job is queued or being polled."""
        return job_id in self._in_flight

    def running(self, job_id: str) -> asyncio.Task[None] | None:
        """The task polling the job, if its poll has begun."""
        return self._in_flight.get(job_id)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [task for task in self._in_flight.values() if task is not None]

    def cancel(self, job_id: str) -> None:
        task = self._in_flight.pop(job_id, None)
        if task is not None:
            task.cancel()

    def queue(self, jobs: list[J]) -> list[asyncio.Task[None]]:
        """Queue `jobs` (none of them busy); returns the task that gives them their turns."""
        if not jobs:
            return []
        for job in jobs:
            self._in_flight[job.job_id] = None
        return [asyncio.create_task(self._in_turn(jobs), name="polls")]

    async def _in_turn(self, jobs: list[J]) -> None:
        tasks = []
        had_turn = 0  # how many of `jobs` have had their turn
        try:
            for job in jobs:
                await self._semaphore.acquire()
                self._held += 1
                had_turn += 1
                if self._current(job.job_id) is not job or self._in_flight.get(job.job_id, 0) is not None:
                    self._release()  # removed (or re-added) while it waited
                    continue
                task = asyncio.create_task(self._poll(job), name=f"poll {job.job_id}")
                self._in_flight[job.job_id] = task
                task.add_done_callback(functools.partial(self._done, job.job_id))
                tasks.append(task)
        finally:
            # Only the jobs a cancellation left in this queue: a job it already reached may be
            # queued again by a later tick, and that mark is not ours to clear.
            for job in jobs[had_turn:]:
                if job.job_id in self._in_flight and self._in_flight[job.job_id] is None:
                    del self._in_flight[job.job_id]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _release(self) -> None:
        self._held -= 1
        self._semaphore.release()

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._release()
        if self._in_flight.get(job_id) is task:
            del self._in_flight[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("poll of job %s crashed", job_id, exc_info=task.exception())
