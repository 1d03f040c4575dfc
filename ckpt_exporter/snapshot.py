"""Immutable snapshots of what the exporter knows about each job.

The poller publishes a new JobSnapshot whenever a job's state changes; the exposition turns
snapshots into metric families. Nothing in a snapshot is ever mutated, so a scrape never sees a
half-updated job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckpt_exporter.models import Checkpoint, FineTuningJob, MetricsEventData


@dataclass(frozen=True)
class JobSnapshot:
    job_id: str
    checkpoints: tuple[Checkpoint, ...] = ()  # oldest first
    polled: bool = False  # a poll of this job has completed (successfully or not)
    up: bool = False  # the latest attempt to refresh the job's data succeeded
    last_success: float | None = None  # unix time of the latest successful poll
    discovered_total: int = 0  # checkpoints that appeared after the first read
    errors: tuple[tuple[str, int], ...] = field(default=())  # (reason, count), sorted by reason
    job: FineTuningJob | None = None  # the job's latest status document, once read
    account: str = "default"
    live: MetricsEventData | None = None  # the latest metrics event of a running job
    event_counts: tuple[tuple[str, int], ...] = ()  # (level, count) since the first events read
    fields: frozenset[str] = frozenset()  # the other numeric fields this job may export (fields.py)
    held: bool = False  # a refresh is due but the API asked to wait (Retry-After, rate-limit pause)

    @property
    def latest_step(self) -> int | None:
        return max((c.step_number for c in self.checkpoints), default=None)
