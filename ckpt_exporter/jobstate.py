"""One watched job: what the exporter remembers about it between polls, and the outcome policy.

The outcome policy decides what a poll's results mean (new checkpoints logged, a failure logged
once per reason, 404s backed off) and turns them into the job's next snapshot:
one snapshot per poll, whatever the poll read and however it failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from pydantic import ValidationError

from ckpt_exporter.account_auth import is_account_failure
from ckpt_exporter.diff import CheckpointDiff, DiffResult
from ckpt_exporter.events import EventFeed, EventsResult
from ckpt_exporter.families import RESERVED_FIELDS
from ckpt_exporter.fields import FieldBudget, Skipped
from ckpt_exporter.models import (
    NOT_STARTED_STATUSES,
    TERMINAL_STATUSES,
    ApiError,
    CheckpointMetrics,
    FineTuningJob,
    Rejected,
    describe,
    invalid_reason,
    parse_job,
)
from ckpt_exporter.snapshot import JobSnapshot

# The poller's logger: operators filter on it (docs/operations.md quotes its lines).
log = logging.getLogger("ckpt_exporter.poller")

IDLE_STATUSES = NOT_STARTED_STATUSES | {"paused"}  # no new checkpoints: no checkpoint requests
FINISHED_MARGIN = 60.0  # a full read started this long after finished_at holds every checkpoint
NOT_FOUND_MAX_BACKOFF = 3600.0
FIELD_PROBLEMS_KEPT = 1000  # distinct skipped fields remembered (to count and log each once)


@dataclass
class JobState:
    diff: CheckpointDiff
    events: EventFeed
    snapshot: JobSnapshot
    configured: bool  # named in the settings (kept whatever discovery finds)
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None  # the reason last logged, to log a failure once, not every poll
    read_once: bool = False  # the first successful read sets the baseline: not "discovered"
    final_read_done: bool = False  # a finished job's last full read is done: no more requests
    not_before: float = 0.0  # no request before this time (the 404 backoff; the gate holds a Retry-After)
    not_found: int = 0  # consecutive 404s
    full_read_at: float | None = None  # when the latest successful full read started
    rejects_logged: set[tuple[str, str]] = field(default_factory=set)  # (list, reason) logged
    fields: FieldBudget = field(default_factory=lambda: FieldBudget(RESERVED_FIELDS))
    field_problems: set[tuple[str, str]] = field(default_factory=set)  # (reason, what) counted
    unexpected_logged: set[str] = field(default_factory=set)  # kinds of our own faults logged

    @classmethod
    def new(
        cls,
        job_id: str,
        *,
        configured: bool,
        account: str,
        page_size: int,
        full_read_every: int,
        document: FineTuningJob | None = None,
    ) -> JobState:
        diff = CheckpointDiff(job_id, page_size, full_read_every)
        snapshot = JobSnapshot(job_id, job=document, account=account)
        return cls(diff, EventFeed(job_id), snapshot, configured)

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

    def read_since_finished(self, document: FineTuningJob) -> bool:
        """A full read that started after the job finished already was its final read.

        So a finished job met for the first time (at startup, or found by discovery) costs one
        read, not two.
        """
        return (
            document.status in TERMINAL_STATUSES
            and document.finished_at is not None
            and self.full_read_at is not None
            and self.full_read_at >= document.finished_at + FINISHED_MARGIN
        )

    # -- the outcome policy ------------------------------------------------------------------

    def count(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def error_counts(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self.errors.items()))

    def idle_snapshot(self) -> JobSnapshot:
        """A job with nothing to read (queued, paused, finished and read): polled and up."""
        return replace(self.snapshot, polled=True, up=True)

    def held_snapshot(self) -> JobSnapshot:
        """A refresh is due, but the API asked to wait: held, not fresh, not failed."""
        return replace(self.snapshot, polled=True, up=False, held=True)

    def unexpected(self, exc: BaseException, where: str) -> JobSnapshot:
        """A fault of the exporter's own: counted, its traceback logged once per kind, job down."""
        kind = f"{where}: {type(exc).__name__}"
        if kind not in self.unexpected_logged:
            self.unexpected_logged.add(kind)
            log.error(
                "job %s: unexpected error in its %s (counted as unexpected_error; logged once)",
                self.job_id,
                where,
                exc_info=exc,
            )
        self.count("unexpected_error")
        return replace(self.snapshot, polled=True, up=False, held=False, errors=self.error_counts())

    def status_read(self, document: FineTuningJob, now: float) -> JobSnapshot:
        """The job's status document, from the listing or its own read.

        A queued or paused job needs nothing more than its status: it is up once the status is read,
        which was the whole refresh it needed.
        """
        old = self.status
        if old != document.status:
            if old is not None:
                log.info("job %s: status %s -> %s", self.job_id, old, document.status)
            if document.status not in TERMINAL_STATUSES or old not in TERMINAL_STATUSES:
                self.final_read_done = self.read_since_finished(document)
        snapshot = replace(self.snapshot, job=document)
        if document.status in IDLE_STATUSES:
            if not snapshot.up or snapshot.held:
                self.not_found = 0
                self.last_error = None
            snapshot = replace(snapshot, polled=True, up=True, held=False, last_success=now)
        return snapshot

    def status_document(self, raw: object, now: float) -> JobSnapshot:
        """The job's own read (GET /fine_tuning/jobs/{id}): its document, if it is one, and its own."""
        try:
            document = parse_job(raw)
        except ValidationError as exc:  # status unknown; logged once while it recurs
            self.note_rejected([Rejected(invalid_reason(exc, "invalid_job"), describe(exc))], "job")
            return replace(self.snapshot, polled=True, up=False, held=False, errors=self.error_counts())
        if document.id != self.job_id:  # a document must be about the job asked for
            detail = f"the API answered with another job's document ({document.id!r})"
            self.note_rejected([Rejected("wrong_job", detail)], "job")
            return replace(self.snapshot, polled=True, up=False, held=False, errors=self.error_counts())
        return self.status_read(document, now)

    def poll_outcome(
        self,
        checkpoints: DiffResult | None,
        events: EventsResult | None,
        failures: list[ApiError],
        now: float,
        poll_interval: float,
    ) -> JobSnapshot:
        """The snapshot after one poll: what it read, then what failed (the one snapshot it makes)."""
        snapshot = self.snapshot
        if checkpoints is not None:
            snapshot = self._checkpoints_read(snapshot, checkpoints, now)
        if events is not None:
            snapshot = self._events_read(snapshot, events)
        for failure in failures:
            snapshot = self.failed(snapshot, failure, now, poll_interval)
        held = any(failure.held for failure in failures)
        return replace(snapshot, held=held, errors=self.error_counts())

    def failed(self, snapshot: JobSnapshot, exc: ApiError, now: float, poll_interval: float) -> JobSnapshot:
        """Count the failure, log it once per reason, back off a 404; a request the gate held back
        (never sent) is no failure: the job is shown as held."""
        if exc.held:
            return replace(snapshot, polled=True, up=False, held=True)
        self.count(exc.reason)
        if exc.status == 404:
            if now >= self.not_before:  # not a second 404 of the same poll (status and checkpoints)
                self.not_found += 1
                delay = min(poll_interval * 2 ** (self.not_found - 1), NOT_FOUND_MAX_BACKOFF)
                self.not_before = now + delay
                log.warning(
                    "job %s: not found (HTTP 404): it does not exist or was deleted; next try in %.3gs",
                    self.job_id,
                    delay,
                )
        elif not is_account_failure(exc) and self.last_error != exc.reason:
            log.warning("job %s: poll failed (%s): %s", self.job_id, exc.reason, exc)
        self.last_error = exc.reason
        return replace(snapshot, polled=True, up=False, errors=self.error_counts())

    def note_rejected(self, rejected: list[Rejected], source: str, *, clear: bool = True) -> None:
        """Count every unusable item or bound hit; log each reason once while it keeps coming back.

        `source` is the list (checkpoints, events) or "job" (the job's own document). A read that
        could have met a reason and did not (`clear`) ends its "while": the next one is logged again.
        """
        reasons = {(source, item.reason) for item in rejected}
        for item in rejected:
            self.count(item.reason)
            if (source, item.reason) not in self.rejects_logged:
                self.rejects_logged.add((source, item.reason))
                log.warning(
                    "job %s: %s (%s): %s (counted; logged once while it recurs)",
                    self.job_id,
                    _what(source, item.reason),
                    item.reason,
                    item.detail,
                )
        if clear:
            self.rejects_logged &= reasons | {r for r in self.rejects_logged if r[0] != source}

    def _fields_read(
        self, snapshot: JobSnapshot, metrics: list[CheckpointMetrics], source: str
    ) -> JobSnapshot:
        """Admit the other numeric fields of `metrics` to the job's budget; count and log once each
        field that is skipped (fields.py)."""
        problems: list[Skipped] = [m.skipped for m in metrics]
        problems.append(self.fields.admit(name for m in metrics for name, _ in m.extra))
        for reason, what in (problem for found in problems for problem in found):
            if (reason, what) in self.field_problems:
                continue
            if len(self.field_problems) < FIELD_PROBLEMS_KEPT:
                self.field_problems.add((reason, what))
            self.count(reason)
            log.warning(
                "job %s: skipped a field of the %s (%s): %s (counted; logged once)",
                self.job_id,
                source,
                reason,
                what,
            )
        if snapshot.fields != self.fields.admitted:
            snapshot = replace(snapshot, fields=frozenset(self.fields.admitted))
        return snapshot

    def _events_read(self, snapshot: JobSnapshot, result: EventsResult) -> JobSnapshot:
        self.note_rejected(result.rejected, "events")
        for event in result.new:
            if event.level in ("warn", "error"):
                log.info("job %s: %s event: %s", self.job_id, event.level, event.message[:200])
        live = self.events.latest_metrics
        if live is not None and live is not snapshot.live:
            snapshot = self._fields_read(snapshot, [live], "metrics events")
        return replace(snapshot, live=live, event_counts=tuple(sorted(self.events.counts.items())))

    def _checkpoints_read(self, snapshot: JobSnapshot, result: DiffResult, now: float) -> JobSnapshot:
        job_id = self.job_id
        self.not_found = 0
        if self.last_error is not None:
            log.info("job %s: polls succeed again", job_id)
            self.last_error = None
        # Only a full read meets again the items an incremental one stops before.
        self.note_rejected(result.rejected, "checkpoints", clear=result.full_read)
        discovered = snapshot.discovered_total
        if not self.read_once:
            self.read_once = True
            log.info("job %s: %d checkpoint(s) at first read", job_id, len(self.diff.known))
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
        if result.changed:
            metrics = [c.metrics for c in self.diff.checkpoints()]
            snapshot = self._fields_read(snapshot, metrics, "checkpoints")
        return replace(
            snapshot,
            checkpoints=self.diff.checkpoints() if result.changed else snapshot.checkpoints,
            polled=True,
            up=True,
            last_success=now,
            discovered_total=discovered,
        )


BOUNDS = frozenset({"too_many_pages", "too_many_checkpoints", "too_many_event_levels"})


def _what(source: str, reason: str) -> str:
    if source == "job":
        return "ignored its job document"
    if reason in BOUNDS:
        return f"the {source} list went past a bound"
    return f"ignored an item of the {source} list"
