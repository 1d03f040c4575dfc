"""The poller: on every tick, brings each watched job up to date and publishes its snapshot.

A tick costs, per account, the status refresh (the jobs listing, walked only as far as the jobs
whose status it needs; a job it does not reach is read on its own), one checkpoints request per
running job, nothing for a queued, paused or finished job (after its final full read), and, at its
own interval, discovery. Every job is polled by a task of its own (at most `max_active_polls` at
once: turns.py), so a slow or failing job never delays another.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from ckpt_exporter.account_auth import AUTH_STATUSES, AccountAuth
from ckpt_exporter.api import ApiClient
from ckpt_exporter.diff import DiffResult
from ckpt_exporter.events import EventsResult
from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.hints import NotFoundHint
from ckpt_exporter.jobstate import JobState
from ckpt_exporter.listing import Discovery, Listing, Shard
from ckpt_exporter.models import TERMINAL_STATUSES, ApiError, FineTuningJob, ListPage
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.snapshot import JobSnapshot
from ckpt_exporter.turns import Turns

log = logging.getLogger(__name__)


class Poller:
    def __init__(
        self,
        client: ApiClient,
        exposition: ExpositionCache,
        metrics: SelfMetrics,
        *,
        account: str = "default",
        page_size: int = 20,
        full_read_every: int = 10,
        poll_interval: float = 60.0,
        discovery: Discovery | None = None,
        shard: Shard | None = None,
        max_active_polls: int = 64,
        clock: Callable[[], float] = time.time,
        keyless: bool = False,
        base_url: str = "",
    ) -> None:
        self._client = client
        self._exposition = exposition
        self._metrics = metrics
        # A new job's record: this account's, read by pages of `page_size`.
        self._new_job = functools.partial(
            JobState.new, account=account, page_size=page_size, full_read_every=full_read_every
        )
        self._poll_interval = poll_interval
        self._discovery = discovery
        self._shard = shard or Shard()
        self._clock = clock
        self._jobs: dict[str, JobState] = {}
        self.turns: Turns[JobState] = Turns(max_active_polls, self._poll_job, self._jobs.get)
        self._cycles: set[asyncio.Task[None]] = set()
        self._status_task: asyncio.Task[None] | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self._next_discovery = 0.0
        self._discovery_attempted = discovery is None
        self.auth = AccountAuth(account, keyless)
        self._not_found_hint = NotFoundHint(account, base_url)
        self._listing = Listing(client, account)

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
        job = self._new_job(job_id, configured=configured, document=document)
        self._jobs[job_id] = job
        self._exposition.update(job.snapshot)
        self._metrics.jobs.set(len(self._jobs))

    def _untrack(self, job_id: str, why: str) -> None:
        del self._jobs[job_id]
        self._not_found_hint.forget(job_id)
        self.turns.cancel(job_id)
        self._exposition.remove(job_id)
        self._metrics.jobs.set(len(self._jobs))
        log.info("job %s %s; its series are removed", job_id, why)

    @property
    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def configured_job_ids(self) -> list[str]:
        return [job.job_id for job in self._jobs.values() if job.configured]

    def ready(self) -> bool:
        """True once discovery (if on) and a poll of every watched job have been attempted,
        whatever the answers (docs/operations.md: what job_up and readiness mean)."""
        return self._discovery_attempted and all(job.snapshot.polled for job in self._jobs.values())

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
        tasks.extend(self.dispatch())
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
        tasks = [*self.turns.tasks(), *self._cycles]
        tasks += [t for t in (self._status_task, self._discovery_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _time_cycle(self, started: float, tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        self._metrics.poll_duration.observe(max(self._clock() - started, 0.0))

    def dispatch(self, only: Callable[[JobState], bool] | None = None) -> list[asyncio.Task[None]]:
        """Queue a poll of every job that needs one now; mark idle jobs as polled.

        Returns the task that runs the queued polls (none if nothing is due).
        """
        now = self._clock()
        due = []
        for job in self._jobs.values():
            if only and not only(job):
                continue
            if self.turns.busy(job.job_id) or now < job.not_before:
                if self.turns.busy(job.job_id) and self._waits_for_api(job):  # its poll waits it out
                    self._mark_held(job)
                continue
            if not job.needs_checkpoints():
                if not job.snapshot.polled:
                    self._publish(job, job.idle_snapshot())
                continue
            if self._client.gate.held_for(job.job_id):  # sent now, it would fail unsent
                self._mark_held(job)
                continue
            due.append(job)
        return self.turns.queue(due)

    def _waits_for_api(self, job: JobState) -> bool:
        """The API asked to wait: a Retry-After hold, or a rate-limit pause of a poll interval or
        more (a shorter one delays a poll within its cycle, and the job is not shown as held)."""
        gate = self._client.gate
        return bool(gate.held_for(job.job_id)) or gate.paused_for() >= self._poll_interval

    def _mark_held(self, job: JobState) -> None:
        if not job.snapshot.held:
            self._publish(job, job.held_snapshot())

    def _publish(self, job: JobState, snapshot: JobSnapshot) -> None:
        """Export the job's new snapshot; one that cannot be rendered leaves the last one exported,
        marked down, with the fault counted (unexpected_error) and logged once."""
        if self._jobs.get(job.job_id) is not job:  # removed meanwhile
            job.snapshot = snapshot
            return
        try:
            self._exposition.update(snapshot)
            self._not_found_hint.note(job.job_id, job.not_found > 0, len(self._jobs))
        except Exception as exc:  # a value the exposition cannot write: a fault of ours
            snapshot = job.unexpected(exc, "exposition")
            self._exposition.update(snapshot)  # the last snapshot, rendered before, and poll state
        job.snapshot = snapshot

    # -- one poll ----------------------------------------------------------------------------

    async def _poll_job(self, job: JobState) -> None:
        """One poll; whatever goes wrong in it ends as a counted reason on the job, never a crash."""
        try:
            await self._poll(job)
        except Exception as exc:
            self._publish(job, job.unexpected(exc, "poll"))

    async def _poll(self, job: JobState) -> None:
        final = job.status in TERMINAL_STATUSES
        if final:
            job.diff.force_full_read()
        started, epoch = self._clock(), self.auth.epoch

        async def checkpoints(after: str | None, limit: int) -> ListPage:
            return await self._client.list_checkpoints(job.job_id, after=after, limit=limit)

        async def events(after: str | None, limit: int) -> ListPage:
            return await self._client.list_events(job.job_id, after=after, limit=limit)

        # A running job's checkpoints and events are read side by side: two requests per poll.
        reads: list[Any] = [job.diff.refresh(checkpoints)]
        if job.needs_events():
            reads.append(job.events.refresh(events))
        outcomes = await asyncio.gather(*reads, return_exceptions=True)
        failures, faulted = [], False
        for outcome in outcomes:
            if isinstance(outcome, ApiError):
                failures.append(outcome)
            elif isinstance(outcome, Exception):  # a fault of ours: counted, logged once, job down
                job.unexpected(outcome, "read")
                faulted = True
            elif isinstance(outcome, BaseException):  # cancelled
                raise outcome
        read = outcomes[0] if isinstance(outcomes[0], DiffResult) else None
        if read is not None:
            if read.full_read:
                job.full_read_at = started
                document = job.snapshot.job  # the status may have arrived while we read
                final = final or (document is not None and job.read_since_finished(document))
            if not any(failure.status in AUTH_STATUSES for failure in failures):
                self.auth.accepted(epoch)
        self.auth.note(failures, epoch)
        events_read = outcomes[1] if len(outcomes) > 1 and isinstance(outcomes[1], EventsResult) else None
        snapshot = job.poll_outcome(read, events_read, failures, self._clock(), self._poll_interval)
        self._publish(job, replace(snapshot, up=False) if faulted else snapshot)
        if final and not failures and not faulted:
            job.final_read_done = True
            log.info(
                "job %s is %s: final read done (%d checkpoints); no more requests for it",
                job.job_id,
                job.status,
                len(job.diff.known),
            )

    # -- job status --------------------------------------------------------------------------

    def _apply_status(self, job: JobState, document: FineTuningJob) -> None:
        snapshot = job.status_read(document, self._clock())
        if snapshot != job.snapshot:
            self._publish(job, snapshot)

    async def _refresh_statuses(self) -> None:
        """Read the status of every job that is not finished yet, as cheaply as possible."""
        pending = {job.job_id: job for job in self._jobs.values() if job.status not in TERMINAL_STATUSES}
        if len(pending) > 1:
            wanted = {job_id: job.snapshot.job for job_id, job in pending.items()}
            epoch = self.auth.epoch
            try:
                await self._listing.statuses(wanted, lambda d: self._apply_status(pending[d.id], d))
            except ApiError as exc:
                self.auth.note([exc], epoch)
                self._listing.failed(exc)
            pending = {job_id: pending[job_id] for job_id in wanted}
        if pending:
            await asyncio.gather(*(self._status_of(job) for job in pending.values()))

        # A job that has just finished gets its final read in this tick (after a poll of it that
        # started before we knew), rather than at the next one.
        def finishing(job: JobState) -> bool:
            return job.status in TERMINAL_STATUSES and not job.final_read_done

        # (A poll still queued reads the status when it starts: it is the final read already.)
        started = [
            task for j in self._jobs.values() if finishing(j) and (task := self.turns.running(j.job_id))
        ]
        await asyncio.gather(*started, return_exceptions=True)
        await asyncio.gather(*self.dispatch(only=finishing), return_exceptions=True)

    async def _status_of(self, job: JobState) -> None:
        if self._clock() < job.not_before:
            return
        if self._client.gate.held_for(job.job_id):
            if not job.needs_checkpoints():  # the status is all it needs, and cannot be read now
                self._mark_held(job)
            return
        epoch = self.auth.epoch
        try:
            raw = await self._client.get_job(job.job_id)
        except ApiError as exc:
            self.auth.note([exc], epoch)
            self._publish(job, job.failed(job.snapshot, exc, self._clock(), self._poll_interval))
            return
        snapshot = job.status_document(raw, self._clock())
        if snapshot != job.snapshot:
            self._publish(job, snapshot)

    # -- discovery ---------------------------------------------------------------------------

    async def _discover(self) -> None:
        assert self._discovery is not None
        discovery = self._discovery
        now = self._clock()
        epoch = self.auth.epoch

        def seen(document: FineTuningJob) -> None:
            self._apply_status(self._jobs[document.id], document)

        discovered = await self._listing.discover(discovery, self._shard, now, self._jobs, seen)
        found = discovered.found
        if discovered.stopped is None:
            for job in list(self._jobs.values()):
                if not job.configured and job.job_id not in found:
                    self._untrack(job.job_id, "no longer matches the discovery filters")
        new = [job_id for job_id in found if job_id not in self._jobs]
        for job_id in new:
            self._track(job_id, configured=False, document=found[job_id])
        if new:
            log.info("discovery: %d new job(s) to watch, %d in all", len(new), len(self._jobs))
        if discovered.stopped is not None:  # the jobs found before it are watched; again soon
            self.auth.note([discovered.stopped], epoch)
            self._listing.failed(discovered.stopped)
            self._next_discovery = now + min(discovery.interval, self._poll_interval)
        else:
            self._next_discovery = now + discovery.interval
        self._discovery_attempted = True  # ready whatever the answer: the configured jobs are polled
        fresh = set(new)
        await asyncio.gather(*self.dispatch(only=lambda job: job.job_id in fresh), return_exceptions=True)


def _running(task: asyncio.Task[None] | None) -> bool:
    return task is not None and not task.done()
