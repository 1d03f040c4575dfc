"""The poller: on every tick, brings each watched job up to date and publishes its snapshot.

Each job is polled by its own task, so a job that is slow or failing (retries, backoff) never
delays another job's updates; a job still being polled when the next tick comes is skipped, not
polled twice. Requests in flight are bounded by the API client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ckpt_exporter.api import ApiClient, ApiError
from ckpt_exporter.diff import CheckpointDiff, DiffResult
from ckpt_exporter.exposition import RenderedJobs
from ckpt_exporter.models import ListPage
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.snapshot import JobSnapshot

log = logging.getLogger(__name__)


@dataclass
class _Job:
    diff: CheckpointDiff
    snapshot: JobSnapshot
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None  # the reason last logged, to log a failure once, not every poll
    read_once: bool = False  # the first successful read sets the baseline: not "discovered"


class Poller:
    def __init__(
        self,
        client: ApiClient,
        exposition: RenderedJobs,
        metrics: SelfMetrics,
        *,
        page_size: int = 20,
        full_read_every: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._exposition = exposition
        self._metrics = metrics
        self._page_size = page_size
        self._full_read_every = full_read_every
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._cycles: set[asyncio.Task[None]] = set()

    # -- the set of watched jobs -------------------------------------------------------------

    def set_jobs(self, job_ids: Iterable[str]) -> None:
        """Watch exactly these jobs; a job no longer listed loses its series."""
        wanted = list(dict.fromkeys(job_ids))
        for job_id in [j for j in self._jobs if j not in wanted]:
            del self._jobs[job_id]
            task = self._in_flight.pop(job_id, None)
            if task is not None:
                task.cancel()
            self._exposition.remove(job_id)
            log.info("job %s is no longer watched; its series are removed", job_id)
        for job_id in wanted:
            if job_id not in self._jobs:
                self._jobs[job_id] = _Job(
                    CheckpointDiff(job_id, self._page_size, self._full_read_every), JobSnapshot(job_id)
                )
                self._exposition.update(self._jobs[job_id].snapshot)
        self._metrics.jobs.set(len(self._jobs))

    @property
    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def ready(self) -> bool:
        """True once every watched job has been polled at least once."""
        return all(job.snapshot.polled for job in self._jobs.values())

    # -- polling -----------------------------------------------------------------------------

    async def tick(self) -> None:
        """Start a poll of every job not already being polled; return without waiting for them."""
        started = self._clock()
        tasks = []
        for job_id in self._jobs:
            if job_id in self._in_flight:
                continue
            task = asyncio.create_task(self._poll_job(job_id), name=f"poll {job_id}")
            self._in_flight[job_id] = task
            task.add_done_callback(functools.partial(self._done, job_id))
            tasks.append(task)
        if tasks:
            cycle = asyncio.create_task(self._time_cycle(started, tasks))
            self._cycles.add(cycle)
            cycle.add_done_callback(self._cycles.discard)

    async def poll_once(self) -> None:
        """Poll every job once and wait for the results (tests, benchmarks, first poll)."""
        await self.tick()
        await self.wait_idle()

    async def wait_idle(self) -> None:
        while self._cycles:
            await asyncio.gather(*self._cycles, return_exceptions=True)

    async def stop(self) -> None:
        tasks = [*self._in_flight.values(), *self._cycles]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._in_flight.get(job_id) is task:
            del self._in_flight[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("poll of job %s crashed", job_id, exc_info=task.exception())

    async def _time_cycle(self, started: float, tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        self._metrics.poll_duration.observe(max(self._clock() - started, 0.0))

    async def _poll_job(self, job_id: str) -> None:
        job = self._jobs[job_id]

        async def fetch(after: str | None, limit: int) -> ListPage:
            return await self._client.list_checkpoints(job_id, after=after, limit=limit)

        try:
            result = await job.diff.refresh(fetch)
        except ApiError as exc:
            self._failed(job, exc)
        else:
            self._succeeded(job, result)
        if self._jobs.get(job_id) is job:  # not removed while we polled
            self._exposition.update(job.snapshot)

    def _count(self, job: _Job, reason: str) -> None:
        job.errors[reason] = job.errors.get(reason, 0) + 1

    def _failed(self, job: _Job, exc: ApiError) -> None:
        self._count(job, exc.reason)
        if job.last_error != exc.reason:
            log.warning("job %s: poll failed (%s): %s", job.diff.job_id, exc.reason, exc)
            job.last_error = exc.reason
        job.snapshot = replace(job.snapshot, polled=True, up=False, errors=tuple(sorted(job.errors.items())))

    def _succeeded(self, job: _Job, result: DiffResult) -> None:
        job_id = job.diff.job_id
        if job.last_error is not None:
            log.info("job %s: polls succeed again", job_id)
            job.last_error = None
        for rejected in result.rejected:
            self._count(job, rejected.reason)
            log.warning(
                "job %s: ignored an item of the API's answer (%s): %s",
                job_id,
                rejected.reason,
                rejected.detail,
            )
        discovered = job.snapshot.discovered_total
        if not job.read_once:
            job.read_once = True
            log.info("job %s: %d checkpoint(s) at first read", job_id, len(job.diff.known))
        else:
            for checkpoint in sorted(result.new, key=lambda c: c.order_key):
                m = checkpoint.metrics
                log.info(
                    "job %s: new checkpoint at step %d (train_loss=%s valid_loss=%s full_valid_loss=%s)",
                    job_id,
                    checkpoint.step_number,
                    m.train_loss,
                    m.valid_loss,
                    m.full_valid_loss,
                )
            discovered += len(result.new)
        for checkpoint_id in result.removed:
            log.info("job %s: checkpoint %s is no longer listed by the API", job_id, checkpoint_id)
        job.snapshot = JobSnapshot(
            job_id=job_id,
            checkpoints=job.diff.checkpoints() if result.changed else job.snapshot.checkpoints,
            polled=True,
            up=True,
            last_success=self._clock(),
            discovered_total=discovered,
            errors=tuple(sorted(job.errors.items())),
        )
