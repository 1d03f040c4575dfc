"""The per-job metric families, as one declarative table: name, type, labels, help, samples.

The exposition builds its families from this table, and tests/test_metrics_doc.py checks it against
docs/metrics.md. The order of the table is the exposition order: the stable families (checkpoints,
status, job info) first, then the volatile ones (live training metrics, event counts), then the
poll state, which changes with every poll. A FieldFamilies entry stands for one gauge per numeric
field the API sends beyond the known ones (fields.py), named after the field, in name order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ckpt_exporter import methods
from ckpt_exporter.metricfamily import Family, FieldFamilies, Sample
from ckpt_exporter.models import METRIC_FIELDS, Checkpoint
from ckpt_exporter.snapshot import JobSnapshot

CHECKPOINT_PREFIX = "openai_fine_tuning_checkpoint_"
JOB_PREFIX = "openai_fine_tuning_job_"
# The live gauges from a running job's latest metrics event: openai_fine_tuning_job_<name>.
LIVE_FIELDS = (*METRIC_FIELDS, "step", "total_steps")
# The snapshot fields that only the poll-state families read.
POLL_STATE_FIELDS = ("polled", "up", "held", "last_success", "discovered_total", "errors")

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
        "method": job.job.method,
        "reasoning_effort": job.job.reasoning_effort,
        "grader_type": job.job.grader_type,
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


FAMILIES: tuple[Family | FieldFamilies, ...] = (
    *(_checkpoint_metric(name) for name in METRIC_FIELDS),
    FieldFamilies(
        CHECKPOINT_PREFIX,
        ("job_id", "step"),
        "{field} at the checkpoint's step, as reported by the API.",
        "stable",
        methods.checkpoint_field_samples,
    ),
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
        "Identity of a job: base model, fine-tuned model (empty until it succeeds), suffix, account, "
        "method (supervised, dpo, reinforcement), and for reinforcement its reasoning_effort and "
        "grader_type.",
        "stable",
        _per_job(_job_info),
        info_labels=(
            "model",
            "fine_tuned_model",
            "suffix",
            "account",
            "method",
            "reasoning_effort",
            "grader_type",
        ),
    ),
    Family(
        JOB_PREFIX + "hyperparameter",
        "gauge",
        ("job_id", "name"),
        "A numeric hyperparameter of the job's method (n_epochs, batch_size, learning_rate_multiplier, "
        'beta, compute_multiplier, eval_interval, eval_samples...); one left to "auto" has none.',
        "stable",
        methods.hyperparameter_samples,
    ),
    Family(
        JOB_PREFIX + "best_checkpoint_step",
        "gauge",
        ("job_id", "metric", "model"),
        "Step of the checkpoint to deploy, among those listed: lowest full_valid_loss (else valid_loss) "
        "for supervised and DPO jobs, highest full_valid_mean_reward for reinforcement; metric names "
        "the field, model the checkpoint's model.",
        "stable",
        methods.best_checkpoint_samples,
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
    FieldFamilies(
        JOB_PREFIX,
        ("job_id",),
        "Latest {field} of a running job, from its newest metrics event.",
        "volatile",
        methods.live_field_samples,
    ),
    Family(
        JOB_PREFIX + "grader_reward_mean",
        "gauge",
        ("job_id", "grader", "split"),
        "Mean reward of a grader on the train or valid samples, from the newest metrics event's scores.",
        "volatile",
        methods.grader_reward_samples,
    ),
    Family(
        JOB_PREFIX + "grader_error_rate",
        "gauge",
        ("job_id", "grader", "split", "error"),
        "Share of the samples a grader failed on with this error, from the newest metrics event's errors.",
        "volatile",
        methods.grader_error_samples,
    ),
    Family(
        JOB_PREFIX + "step_phase_seconds",
        "gauge",
        ("job_id", "phase"),
        "Seconds the newest metrics event's step spent in a phase (sampling, training, eval, "
        "full_iteration).",
        "volatile",
        methods.phase_samples,
    ),
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


def _reserved_fields() -> frozenset[str]:
    """Field names that would give a metric another family already has (see fields.FieldBudget)."""
    names = set()
    for family in FAMILIES:
        if isinstance(family, Family):
            for exposed in (family.name, family.exposed_name):
                for prefix in (CHECKPOINT_PREFIX, JOB_PREFIX):
                    if exposed.startswith(prefix):
                        names.add(exposed.removeprefix(prefix))
    return frozenset(names | {"step", "total_steps"})


RESERVED_FIELDS = _reserved_fields()
