"""The poller: on every tick, brings each watched job up to date and publishes its snapshot.

What a tick costs, per account:
- the status refresh: the jobs listing (one request covers up to 100 jobs, newest first), walked
  only as far as the jobs whose status we need; a job it does not reach is read on its own;
- one checkpoints request per running job (the diff layer keeps it at one);
- nothing for a job that is queued or paused, nor for a finished job after its final full read;
- discovery, at its own interval: the listing filtered by the discovery settings.

Every job is polled by a task of its own, started without waiting for the status refresh (which
runs beside them), so a job that is slow or failing never delays another, and a job whose status
turned terminal gets its final read as soon as the refresh sees it, or at the next tick. At most
`max_active_polls` of those tasks exist at once (the rest wait their turn in a queue): enough to
keep every request slot busy, while 10,000 jobs do not mean 10,000 tasks, and their memory, at
every tick.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from ckpt_exporter.api import ApiClient
from ckpt_exporter.diff import CheckpointDiff, DiffResult
from ckpt_exporter.events import EventFeed, EventsResult
from ckpt_exporter.exposition import RenderedJobs
from ckpt_exporter.models import (
    NOT_STARTED_STATUSES,
    TERMINAL_STATUSES,
    ApiError,
    FineTuningJob,
    ListPage,
    Rejected,
    parse_job,
)
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.snapshot import JobSnapshot

log = logging.getLogger(__name__)

IDLE_STATUSES = NOT_STARTED_STATUSES | {"paused"}  # no new checkpoints: no checkpoint requests
LIST_LIMIT = 100  # jobs per listing page
MAX_STATUS_PAGES = 1000  # the status refresh reads individually what these pages do not reach
FINISHED_MARGIN = 60.0  # a full read started this long after finished_at holds every checkpoint
MAX_DISCOVERY_PAGES = 1000
AUTH_STATUSES = (401, 403)  # about the account's key, not the job: logged once per change
NOT_FOUND_MAX_BACKOFF = 3600.0


@dataclass(frozen=True)
class Discovery:
    """Which of the account's jobs to watch besides the configured ones."""

    interval: float = 300.0
    statuses: frozenset[str] = frozenset()  # empty: any status
    max_age_seconds: float | None = 30 * 86400.0
    metadata: dict[str, str] = field(default_factory=dict)
    model_pattern: str | None = None
    suffix_pattern: str | None = None

    def matches(self, job: FineTuningJob, now: float) -> bool:
        return (
            (not self.statuses or job.status in self.statuses)
            and (self.max_age_seconds is None or job.created_at >= now - self.max_age_seconds)
            and all((job.metadata or {}).get(k) == v for k, v in self.metadata.items())
            and (self.model_pattern is None or fnmatch.fnmatchcase(job.model or "", self.model_pattern))
            and (self.suffix_pattern is None or fnmatch.fnmatchcase(job.suffix, self.suffix_pattern))
        )


@dataclass(frozen=True)
class Shard:
    """This replica's share of the jobs: md5(job_id) mod total == index (as kube-state-metrics)."""

    index: int = 0
    total: int = 1

    def owns(self, job_id: str) -> bool:
        if self.total == 1:
            return True
        return int(hashlib.md5(job_id.encode()).hexdigest(), 16) % self.total == self.index


@dataclass
class _Job:
    diff: CheckpointDiff
    events: EventFeed
    snapshot: JobSnapshot
    configured: bool  # named in the settings (kept whatever discovery finds)
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None  # the reason last logged, to log a failure once, not every poll
    read_once: bool = False  # the first successful read sets the baseline: not "discovered"
    final_read_done: bool = False  # a finished job's last full read is done: no more requests
    not_before: float = 0.0  # no request before this time (Retry-After, 404 backoff)
    not_found: int = 0  # consecutive 404s
    full_read_at: float | None = None  # when the latest successful full read started
    rejects_logged: set[tuple[str, str]] = field(default_factory=set)  # (list, reason) logged

    @property
    def job_id(self) -> str:
        return self.diff.job_id

    @property
    def status(self) -> str | None:
        return self.snapshot.job.status if self.snapshot.job is not None else None

    def needs_events(self) -> bool:
        """Only a job known to be training has live metrics: never a finished or unknown one."""
        status = self.status
        return status is not None and status not in TERMINAL_STATUSES and status not in IDLE_STATUSES

    def needs_checkpoints(self) -> bool:
        status = self.status
        if status in TERMINAL_STATUSES:
            return not self.final_read_done
        return status not in IDLE_STATUSES  # unknown statuses are polled, to be safe


class Poller:
    def __init__(
        self,
        client: ApiClient,
        exposition: RenderedJobs,
        metrics: SelfMetrics,
        *,
        account: str = "default",
        page_size: int = 20,
        full_read_every: int = 10,
        poll_interval: float = 60.0,
        discovery: Discovery | None = None,
        shard: Shard = Shard(),
        max_active_polls: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._exposition = exposition
        self._metrics = metrics
        self._account = account
        self._page_size = page_size
        self._full_read_every = full_read_every
        self._poll_interval = poll_interval
        self._discovery = discovery
        self._shard = shard
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        # Jobs whose poll is running (its task) or queued for a turn (None).
        self._in_flight: dict[str, asyncio.Task[None] | None] = {}
        self._turns = asyncio.Semaphore(max_active_polls)
        self._cycles: set[asyncio.Task[None]] = set()
        self._status_task: asyncio.Task[None] | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self._next_discovery = 0.0
        self._discovered_once = discovery is None
        self._auth_failure: int | None = None  # the 401/403 last logged for the account
        # Bumped at each change of _auth_failure. A request begun before the last change was
        # answered on the key as it was then: it neither logs a change nor undoes one.
        self._auth_epoch = 0
        self._listing_error: str | None = None

    # -- the set of watched jobs -------------------------------------------------------------

    def set_jobs(self, job_ids: Iterable[str]) -> None:
        """The configured jobs (this shard's share of them); discovered jobs are kept."""
        wanted = [j for j in dict.fromkeys(job_ids) if self._shard.owns(j)]
        for job in list(self._jobs.values()):
            if job.configured and job.job_id not in wanted:
                self._untrack(job.job_id, "is no longer in the settings")
        for job_id in wanted:
            if job_id in self._jobs:
                self._jobs[job_id].configured = True
            else:
                self._track(job_id, configured=True)

    def _track(self, job_id: str, *, configured: bool, document: FineTuningJob | None = None) -> None:
        diff = CheckpointDiff(job_id, self._page_size, self._full_read_every)
        snapshot = JobSnapshot(job_id, job=document, account=self._account)
        self._jobs[job_id] = _Job(diff, EventFeed(job_id), snapshot, configured)
        self._exposition.update(snapshot)
        self._metrics.jobs.set(len(self._jobs))

    def _untrack(self, job_id: str, why: str) -> None:
        del self._jobs[job_id]
        task = self._in_flight.pop(job_id, None)
        if task is not None:
            task.cancel()
        self._exposition.remove(job_id)
        self._metrics.jobs.set(len(self._jobs))
        log.info("job %s %s; its series are removed", job_id, why)

    @property
    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def configured_job_ids(self) -> list[str]:
        return [job.job_id for job in self._jobs.values() if job.configured]

    def ready(self) -> bool:
        """True once discovery (if on) has run and every watched job has been polled once."""
        return self._discovered_once and all(job.snapshot.polled for job in self._jobs.values())

    # -- ticks -------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Start this tick's work and return without waiting for it (see the module docstring)."""
        started = self._clock()
        tasks: list[asyncio.Task[None]] = []
        if (
            self._discovery is not None
            and started >= self._next_discovery
            and not _running(self._discovery_task)
        ):
            self._discovery_task = asyncio.create_task(self._discover(), name="discovery")
            tasks.append(self._discovery_task)
        if not _running(self._status_task) and any(
            job.status not in TERMINAL_STATUSES for job in self._jobs.values()
        ):
            self._status_task = asyncio.create_task(self._refresh_statuses(), name="statuses")
            tasks.append(self._status_task)
        tasks.extend(self._dispatch())
        if tasks:
            cycle = asyncio.create_task(self._time_cycle(started, tasks))
            self._cycles.add(cycle)
            cycle.add_done_callback(self._cycles.discard)

    async def poll_once(self) -> None:
        """One tick, waiting for all it started (tests, benchmarks)."""
        await self.tick()
        await self.wait_idle()

    async def wait_idle(self) -> None:
        while self._cycles:
            await asyncio.gather(*self._cycles, return_exceptions=True)

    async def stop(self) -> None:
        tasks = [*(t for t in self._in_flight.values() if t is not None), *self._cycles]
        tasks += [t for t in (self._status_task, self._discovery_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _time_cycle(self, started: float, tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        self._metrics.poll_duration.observe(max(self._clock() - started, 0.0))

    def _dispatch(self, only: Callable[[_Job], bool] | None = None) -> list[asyncio.Task[None]]:
        """Queue a poll of every job that needs one now; mark idle jobs as polled.

        Returns the task that runs the queued polls (none if nothing is due).
        """
        now = self._clock()
        due = []
        for job in self._jobs.values():
            if job.job_id in self._in_flight or now < job.not_before or (only and not only(job)):
                continue
            if not job.needs_checkpoints():
                if not job.snapshot.polled:
                    self._publish(job, replace(job.snapshot, polled=True, up=True))
                continue
            self._in_flight[job.job_id] = None
            due.append(job)
        return [asyncio.create_task(self._poll_in_turn(due), name="polls")] if due else []

    async def _poll_in_turn(self, jobs: list[_Job]) -> None:
        """Poll `jobs`, each in a task of its own once one of the turns is free."""
        tasks = []
        had_turn = 0  # how many of `jobs` have had their turn
        try:
            for job in jobs:
                await self._turns.acquire()
                had_turn += 1
                if self._jobs.get(job.job_id) is not job or self._in_flight.get(job.job_id, 0) is not None:
                    self._turns.release()  # removed (or re-added) while it waited
                    continue
                task = asyncio.create_task(self._poll_job(job), name=f"poll {job.job_id}")
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

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._turns.release()
        if self._in_flight.get(job_id) is task:
            del self._in_flight[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("poll of job %s crashed", job_id, exc_info=task.exception())

    def _publish(self, job: _Job, snapshot: JobSnapshot) -> None:
        job.snapshot = snapshot
        if self._jobs.get(job.job_id) is job:  # not removed meanwhile
            self._exposition.update(snapshot)

    # -- checkpoints -------------------------------------------------------------------------

    async def _poll_job(self, job: _Job) -> None:
        final = job.status in TERMINAL_STATUSES
        if final:
            job.diff.force_full_read()
        started, epoch = self._clock(), self._auth_epoch

        async def checkpoints(after: str | None, limit: int) -> ListPage:
            return await self._client.list_checkpoints(job.job_id, after=after, limit=limit)

        async def events(after: str | None, limit: int) -> ListPage:
            return await self._client.list_events(job.job_id, after=after, limit=limit)

        # A running job's checkpoints and events are read side by side: two requests per poll.
        reads: list[Any] = [job.diff.refresh(checkpoints)]
        if job.needs_events():
            reads.append(job.events.refresh(events))
        outcomes = await asyncio.gather(*reads, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, ApiError):
                raise outcome
        failures = [outcome for outcome in outcomes if isinstance(outcome, ApiError)]
        if isinstance(outcomes[0], DiffResult):
            if outcomes[0].full_read:
                job.full_read_at = started
                document = job.snapshot.job  # the status may have arrived while we read
                final = final or (document is not None and self._read_since_finished(job, document))
            if not any(failure.status in AUTH_STATUSES for failure in failures):
                self._auth_accepted(epoch)
            self._succeeded(job, outcomes[0])
        if len(outcomes) > 1 and isinstance(outcomes[1], EventsResult):
            self._events_read(job, outcomes[1])
        if failures:
            for failure in failures:
                self._failed(job, failure, epoch)
            return
        if final:
            job.final_read_done = True
            log.info(
                "job %s is %s: final read done (%d checkpoints); no more requests for it",
                job.job_id,
                job.status,
                len(job.diff.known),
            )

    def _events_read(self, job: _Job, result: EventsResult) -> None:
        self._rejected(job, result.rejected, "events")
        for event in result.new:
            if event.level in ("warn", "error"):
                log.info("job %s: %s event: %s", job.job_id, event.level, event.message[:200])
        self._publish(
            job,
            replace(
                job.snapshot,
                live=job.events.latest_metrics,
                event_counts=tuple(sorted(job.events.counts.items())),
                errors=tuple(sorted(job.errors.items())),
            ),
        )

    def _rejected(self, job: _Job, rejected: list[Rejected], source: str) -> None:
        """Count every unusable item; log each reason once while it keeps coming back."""
        reasons = {(source, item.reason) for item in rejected}
        for item in rejected:
            self._count(job, item.reason)
            if (source, item.reason) not in job.rejects_logged:
                job.rejects_logged.add((source, item.reason))
                log.warning(
                    "job %s: ignored an item of the %s list (%s): %s (counted; logged once while it recurs)",
                    job.job_id,
                    source,
                    item.reason,
                    item.detail,
                )
        job.rejects_logged &= reasons | {r for r in job.rejects_logged if r[0] != source}

    def _count(self, job: _Job, reason: str) -> None:
        job.errors[reason] = job.errors.get(reason, 0) + 1

    def _failed(self, job: _Job, exc: ApiError, epoch: int) -> None:
        self._count(job, exc.reason)
        now = self._clock()
        if exc.status == 404:
            if now >= job.not_before:  # not a second 404 of the same poll (status and checkpoints)
                job.not_found += 1
                delay = min(self._poll_interval * 2 ** (job.not_found - 1), NOT_FOUND_MAX_BACKOFF)
                job.not_before = now + delay
                log.warning(
                    "job %s: not found (HTTP 404): it does not exist or was deleted; next try in %.3gs",
                    job.job_id,
                    delay,
                )
            job.last_error = exc.reason
        elif exc.status in AUTH_STATUSES:
            self._auth_failed(exc, epoch)
            job.last_error = exc.reason
        elif job.last_error != exc.reason:
            log.warning("job %s: poll failed (%s): %s", job.job_id, exc.reason, exc)
            job.last_error = exc.reason
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            job.not_before = max(job.not_before, now + retry_after)
        self._publish(
            job, replace(job.snapshot, polled=True, up=False, errors=tuple(sorted(job.errors.items())))
        )

    def _auth_failed(self, exc: ApiError, epoch: int) -> None:
        if self._auth_failure == exc.status or epoch != self._auth_epoch:
            return
        self._auth_failure = exc.status
        self._auth_epoch += 1
        if exc.status == 401:
            log.error(
                "account %s: the API rejected the key (HTTP 401): check CKPT_EXPORTER_API_KEY or the "
                "file api_key_file names; polls go on at the poll interval",
                self._account,
            )
        else:
            log.error(
                "account %s: the key lacks access (HTTP 403): check that it belongs to the jobs' "
                "organization and project and has fine-tuning read scope",
                self._account,
            )

    def _auth_accepted(self, epoch: int) -> None:
        if self._auth_failure is None or epoch != self._auth_epoch:
            return
        self._auth_failure = None
        self._auth_epoch += 1
        log.info("account %s: the API accepts the key again", self._account)

    def _succeeded(self, job: _Job, result: DiffResult) -> None:
        job_id = job.job_id
        job.not_found = 0
        if job.last_error is not None:
            log.info("job %s: polls succeed again", job_id)
            job.last_error = None
        self._rejected(job, result.rejected, "checkpoints")
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
        self._publish(
            job,
            replace(
                job.snapshot,
                checkpoints=job.diff.checkpoints() if result.changed else job.snapshot.checkpoints,
                polled=True,
                up=True,
                last_success=self._clock(),
                discovered_total=discovered,
                errors=tuple(sorted(job.errors.items())),
            ),
        )

    # -- job status --------------------------------------------------------------------------

    def _apply_status(self, job: _Job, document: FineTuningJob) -> None:
        old = job.status
        if old != document.status:
            if old is not None:
                log.info("job %s: status %s -> %s", job.job_id, old, document.status)
            if document.status not in TERMINAL_STATUSES or old not in TERMINAL_STATUSES:
                job.final_read_done = self._read_since_finished(job, document)
        if job.snapshot.job != document:
            self._publish(job, replace(job.snapshot, job=document))

    @staticmethod
    def _read_since_finished(job: _Job, document: FineTuningJob) -> bool:
        """A full read that started after the job finished already was its final read.

        So a finished job met for the first time (at startup, or found by discovery) costs one
        read, not two.
        """
        return (
            document.status in TERMINAL_STATUSES
            and document.finished_at is not None
            and job.full_read_at is not None
            and job.full_read_at >= document.finished_at + FINISHED_MARGIN
        )

    def _validate_jobs(self, page: ListPage) -> list[FineTuningJob]:
        documents = []
        for raw in page.data:
            try:
                documents.append(parse_job(raw))
            except ValidationError as exc:
                log.warning("jobs listing: ignored an invalid job (%s)", exc.errors()[0]["msg"])
        return documents

    async def _refresh_statuses(self) -> None:
        """Read the status of every job that is not finished yet, as cheaply as possible."""
        pending = {job.job_id: job for job in self._jobs.values() if job.status not in TERMINAL_STATUSES}
        if len(pending) > 1:
            await self._statuses_from_listing(pending)
        if pending:
            await asyncio.gather(*(self._status_of(job) for job in pending.values()))

        # A job that has just finished gets its final read in this tick (after a poll of it that
        # started before we knew), rather than at the next one.
        def finishing(job: _Job) -> bool:
            return job.status in TERMINAL_STATUSES and not job.final_read_done

        # (A poll still queued reads the status when it starts: it is the final read already.)
        started = [
            task
            for j in self._jobs.values()
            if finishing(j) and (task := self._in_flight.get(j.job_id)) is not None
        ]
        await asyncio.gather(*started, return_exceptions=True)
        await asyncio.gather(*self._dispatch(only=finishing), return_exceptions=True)

    async def _statuses_from_listing(self, pending: dict[str, _Job]) -> None:
        """Walk the listing until every pending job is seen (or it is older than all of them)."""
        known = [job.snapshot.job.created_at for job in pending.values() if job.snapshot.job is not None]
        oldest = min(known) if len(known) == len(pending) else None
        after: str | None = None
        epoch = self._auth_epoch
        try:
            for _ in range(MAX_STATUS_PAGES):
                page = await self._client.list_jobs(after=after, limit=LIST_LIMIT)
                documents = self._validate_jobs(page)
                for document in documents:
                    job = pending.pop(document.id, None)
                    if job is not None:
                        self._apply_status(job, document)
                if not pending or not page.has_more or not documents or documents[-1].id == after:
                    break
                if oldest is not None and documents[-1].created_at < oldest:
                    break
                after = documents[-1].id
        except ApiError as exc:
            self._listing_failed(exc, epoch)
        else:
            self._listing_error = None

    async def _status_of(self, job: _Job) -> None:
        if self._clock() < job.not_before:
            return
        epoch = self._auth_epoch
        try:
            raw = await self._client.get_job(job.job_id)
            document = parse_job(raw)
        except ApiError as exc:
            self._failed(job, exc, epoch)
            return
        except ValidationError:
            self._count(job, "invalid_job")
            log.warning("job %s: the job document is invalid; status unknown", job.job_id)
            return
        self._apply_status(job, document)

    def _listing_failed(self, exc: ApiError, epoch: int) -> None:
        if exc.status in AUTH_STATUSES:
            self._auth_failed(exc, epoch)
        elif self._listing_error != exc.reason:
            log.warning(
                "account %s: jobs listing failed (%s): %s; statuses stay as last read",
                self._account,
                exc.reason,
                exc,
            )
        self._listing_error = exc.reason

    # -- discovery ---------------------------------------------------------------------------

    async def _discover(self) -> None:
        assert self._discovery is not None
        discovery = self._discovery
        now = self._clock()
        found: dict[str, FineTuningJob] = {}
        after: str | None = None
        epoch = self._auth_epoch
        try:
            for _ in range(MAX_DISCOVERY_PAGES):
                page = await self._client.list_jobs(
                    after=after, limit=LIST_LIMIT, metadata=discovery.metadata
                )
                documents = self._validate_jobs(page)
                for document in documents:
                    if document.id in self._jobs:
                        self._apply_status(self._jobs[document.id], document)
                    if discovery.matches(document, now) and self._shard.owns(document.id):
                        found[document.id] = document
                if not page.has_more or not documents or documents[-1].id == after:
                    break
                max_age = discovery.max_age_seconds
                if max_age is not None and all(d.created_at < now - max_age for d in documents):
                    break  # the listing is newest first: the rest is older still
                after = documents[-1].id
        except ApiError as exc:
            self._listing_failed(exc, epoch)
            self._next_discovery = now + min(discovery.interval, self._poll_interval)
            return
        self._listing_error = None
        for job in list(self._jobs.values()):
            if not job.configured and job.job_id not in found:
                self._untrack(job.job_id, "no longer matches the discovery filters")
        new = [job_id for job_id in found if job_id not in self._jobs]
        for job_id in new:
            self._track(job_id, configured=False, document=found[job_id])
        if new:
            log.info("discovery: %d new job(s) to watch, %d in all", len(new), len(self._jobs))
        self._discovered_once = True
        self._next_discovery = now + discovery.interval
        fresh = set(new)
        await asyncio.gather(*self._dispatch(only=lambda job: job.job_id in fresh), return_exceptions=True)


def _running(task: asyncio.Task[None] | None) -> bool:
    return task is not None and not task.done()
