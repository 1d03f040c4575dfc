"""The per-job metric families, as one declarative table: name, type, labels, help, samples.

The exposition builds its families from this table, and tests/test_metrics_doc.py checks it against
docs/metrics.md. The order of the table is the exposition order: the stable families (checkpoints,
status, job info) first, then the volatile ones (live training metrics, event counts), then the
poll state, which changes with every poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from ckpt_exporter.models import METRIC_FIELDS, Checkpoint
from ckpt_exporter.snapshot import JobSnapshot

CHECKPOINT_PREFIX = "openai_fine_tuning_checkpoint_"
# The live gauges from a running job's latest metrics event: openai_fine_tuning_job_<name>.
LIVE_FIELDS = (*METRIC_FIELDS, "step", "total_steps")
# The snapshot fields that only the poll-state families read.
POLL_STATE_FIELDS = ("polled", "up", "held", "last_success", "discovered_total", "errors")

Kind = Literal["gauge", "counter", "info"]
Group = Literal["stable", "volatile", "poll_state"]
Sample = tuple[list[str], float | dict[str, str]]  # (label values, value or info labels)


@dataclass(frozen=True)
class Family:
    """One metric family: `samples(job)` yields the job's samples of it."""

    name: str  # as exposed, without a counter's _total or an info's _info
    kind: Kind
    labels: tuple[str, ...]
    help: str
    group: Group
    samples: Callable[[JobSnapshot], Iterable[Sample]]
    info_labels: tuple[str, ...] = ()  # an info family's own labels, besides `labels`

    @property
    def exposed_name(self) -> str:
        """The name docs/metrics.md lists: a counter's with _total, an info's with _info."""
        return self.name + {"gauge": "", "counter": "_total", "info": "_info"}[self.kind]

    @property
    def exposed_type(self) -> str:
        """The type the text format gives it (an info family is a gauge of value 1 there)."""
        return "gauge" if self.kind == "info" else self.kind

    @property
    def exposed_labels(self) -> tuple[str, ...]:
        return (*self.labels, *self.info_labels)

    def build(self, jobs: Iterable[JobSnapshot]) -> Metric:
        if self.kind == "info":
            info = InfoMetricFamily(self.name, self.help, labels=self.labels)
            for job in jobs:
                for labels, value in self.samples(job):
                    assert isinstance(value, dict) and tuple(value) == self.info_labels
                    info.add_metric(labels, value)
            return info
        family = (GaugeMetricFamily if self.kind == "gauge" else CounterMetricFamily)(
            self.name, self.help, labels=self.labels
        )
        for job in jobs:
            for labels, value in self.samples(job):
                assert not isinstance(value, dict)
                family.add_metric(labels, value)
        return family


_METRIC_HELP = {
    "train_loss": "Training loss of the mini-batch at the checkpoint's step, as reported by the API.",
    "train_mean_token_accuracy": "Training mean token accuracy at the checkpoint's step.",
    "valid_loss": "Validation loss of a validation batch at the checkpoint's step.",
    "valid_mean_token_accuracy": "Validation mean token accuracy at the checkpoint's step.",
    "full_valid_loss": "Validation loss over the full validation set at the checkpoint's step.",
    "full_valid_mean_token_accuracy": (
        "Mean token accuracy over the full validation set at the checkpoint's step."
    ),
}


def _per_checkpoint(
    value: Callable[[Checkpoint], float | dict[str, str] | None],
) -> Callable[[JobSnapshot], Iterator[Sample]]:
    def samples(job: JobSnapshot) -> Iterator[Sample]:
        for checkpoint in job.checkpoints:
            sample = value(checkpoint)
            if sample is not None:
                yield [job.job_id, str(checkpoint.step_number)], sample

    return samples


def _per_job(
    value: Callable[[JobSnapshot], float | dict[str, str] | None],
) -> Callable[[JobSnapshot], Iterator[Sample]]:
    def samples(job: JobSnapshot) -> Iterator[Sample]:
        sample = value(job)
        if sample is not None:
            yield [job.job_id], sample

    return samples


def _checkpoint_metric(name: str) -> Family:
    return Family(
        CHECKPOINT_PREFIX + name,
        "gauge",
        ("job_id", "step"),
        _METRIC_HELP[name],
        "stable",
        _per_checkpoint(lambda c: getattr(c.metrics, name)),
    )


def _live(name: str) -> Family:
    def value(job: JobSnapshot) -> float | None:
        found = getattr(job.live, name) if job.live is not None else None
        return float(found) if found is not None else None

    return Family(
        "openai_fine_tuning_job_" + name,
        "gauge",
        ("job_id",),
        f"Latest {name} of a running job, from its newest metrics event.",
        "volatile",
        _per_job(value),
    )


def _of_document(field: str) -> Callable[[JobSnapshot], float | None]:
    def value(job: JobSnapshot) -> float | None:
        found = getattr(job.job, field) if job.job is not None else None
        return float(found) if found is not None else None

    return value


def _timestamp(seconds: int | None) -> float | None:
    """A Unix time, or no sample: 0 or less is the API's "none" (estimated_finish: 0 when done)."""
    return float(seconds) if seconds is not None and seconds > 0 else None


def _job_info(job: JobSnapshot) -> dict[str, str] | None:
    if job.job is None:
        return None
    return {
        "model": job.job.model or "",
        "fine_tuned_model": job.job.fine_tuned_model or "",
        "suffix": job.job.suffix,
        "account": job.account,
    }


def _status(job: JobSnapshot) -> Iterator[Sample]:
    if job.job is not None:
        yield [job.job_id, job.job.status], 1.0


def _event_counts(job: JobSnapshot) -> Iterator[Sample]:
    for level, count in job.event_counts:
        yield [job.job_id, level], float(count)


def _error_counts(job: JobSnapshot) -> Iterator[Sample]:
    for reason, count in job.errors:
        yield [job.job_id, reason], float(count)


FAMILIES: tuple[Family, ...] = (
    *(_checkpoint_metric(name) for name in METRIC_FIELDS),
    Family(
        CHECKPOINT_PREFIX + "created_timestamp_seconds",
        "gauge",
        ("job_id", "step"),
        "Unix time at which the checkpoint was created.",
        "stable",
        _per_checkpoint(lambda c: _timestamp(c.created_at)),
    ),
    Family(
        "openai_fine_tuning_checkpoint",
        "info",
        ("job_id", "step"),
        "Identity of a checkpoint: its id and the name of the checkpoint model.",
        "stable",
        _per_checkpoint(lambda c: {"checkpoint_id": c.id, "model": c.fine_tuned_model_checkpoint or ""}),
        info_labels=("checkpoint_id", "model"),
    ),
    Family(
        "openai_fine_tuning_job_latest_step",
        "gauge",
        ("job_id",),
        "Highest step_number among the job's checkpoints.",
        "stable",
        _per_job(lambda job: float(job.latest_step) if job.latest_step is not None else None),
    ),
    Family(
        "openai_fine_tuning_job_status",
        "gauge",
        ("job_id", "status"),
        "1 for the job's current status (validating_files, queued, running, succeeded, failed, "
        "cancelled, or any other the API reports).",
        "stable",
        _status,
    ),
    Family(
        "openai_fine_tuning_job",
        "info",
        ("job_id",),
        "Identity of a job: base model, fine-tuned model (empty until it succeeds), suffix, account.",
        "stable",
        _per_job(_job_info),
        info_labels=("model", "fine_tuned_model", "suffix", "account"),
    ),
    Family(
        "openai_fine_tuning_job_trained_tokens",
        "gauge",
        ("job_id",),
        "Billable tokens the job trained on (reported once the job has finished).",
        "stable",
        _per_job(_of_document("trained_tokens")),
    ),
    Family(
        "openai_fine_tuning_job_estimated_finish_timestamp_seconds",
        "gauge",
        ("job_id",),
        "Unix time at which the API estimates a running job will finish.",
        "stable",
        _per_job(lambda job: _timestamp(job.job.estimated_finish if job.job is not None else None)),
    ),
    *(_live(name) for name in LIVE_FIELDS),
    Family(
        "openai_fine_tuning_job_events",
        "counter",
        ("job_id", "level"),
        "Events of the job by level (info, warn, error), since the exporter's first read of them.",
        "volatile",
        _event_counts,
    ),
    Family(
        "ckpt_exporter_job_up",
        "gauge",
        ("job_id",),
        "1 when the latest attempt to refresh the job's data (status, checkpoints, events as its "
        "state needs) succeeded, else 0.",
        "poll_state",
        _per_job(lambda job: 1.0 if job.up else 0.0),
    ),
    Family(
        "ckpt_exporter_job_held",
        "gauge",
        ("job_id",),
        "1 while a refresh of the job is due but held back because the API asked to wait "
        "(Retry-After, rate-limit pause); job_up is 0 meanwhile.",
        "poll_state",
        _per_job(lambda job: 1.0 if job.held else 0.0),
    ),
    Family(
        "ckpt_exporter_job_last_success_timestamp_seconds",
        "gauge",
        ("job_id",),
        "Unix time of the latest successful poll of the job.",
        "poll_state",
        _per_job(lambda job: job.last_success),
    ),
    Family(
        "ckpt_exporter_checkpoints_discovered",
        "counter",
        ("job_id",),
        "Checkpoints that appeared in the API after the exporter's first read of the job.",
        "poll_state",
        _per_job(lambda job: float(job.discovered_total)),
    ),
    Family(
        "ckpt_exporter_api_errors",
        "counter",
        ("job_id", "reason"),
        "Failed polls and unusable API data, by job and reason.",
        "poll_state",
        _error_counts,
    ),
)


def job_families(jobs: Iterable[JobSnapshot]) -> list[Metric]:
    """All per-job families, in exposition order, for the given jobs."""
    jobs = list(jobs)
    return [family.build(jobs) for family in FAMILIES]


def poll_state_families(jobs: Iterable[JobSnapshot]) -> list[Metric]:
    """The families that change with every poll (the last ones of job_families)."""
    jobs = list(jobs)
    return [family.build(jobs) for family in FAMILIES if family.group == "poll_state"]
