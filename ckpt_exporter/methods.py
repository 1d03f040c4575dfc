"""What the fine-tuning methods add to a job's series: which checkpoint to deploy, and the samples of
the method families (reinforcement's graders and step phases, the hyperparameters, every other
numeric field). families.py puts them in its table.

The best checkpoint, among those the API lists: for supervised and DPO jobs the lowest
full_valid_loss (the whole validation set), or, when no checkpoint has one, the lowest valid_loss;
for reinforcement jobs the highest full_valid_mean_reward. Only a checkpoint that has the field
counts; a tie goes to the earlier checkpoint (less training for the same result).
"""

from __future__ import annotations

from collections.abc import Iterator

from ckpt_exporter.metricfamily import FieldSample
from ckpt_exporter.models import Checkpoint
from ckpt_exporter.snapshot import JobSnapshot

Sample = tuple[list[str], float]  # (label values, value)

# (field, higher is better) in order of preference, by method; other methods are read as supervised.
BEST_BY = {
    "reinforcement": (("full_valid_mean_reward", True),),
    "supervised": (("full_valid_loss", False), ("valid_loss", False)),
}


def method_of(job: JobSnapshot) -> str:
    return job.job.method if job.job is not None else "supervised"


def best_checkpoint(job: JobSnapshot) -> tuple[str, Checkpoint] | None:
    """(the field it is chosen by, the checkpoint), or None when no checkpoint has the field."""
    for field, higher in BEST_BY.get(method_of(job), BEST_BY["supervised"]):
        scored = [(value, c) for c in job.checkpoints if (value := c.metrics.value(field)) is not None]
        if scored:
            sign = -1.0 if higher else 1.0
            _, best = min(scored, key=lambda vc: (sign * vc[0], vc[1].order_key))
            return field, best
    return None


def best_checkpoint_samples(job: JobSnapshot) -> Iterator[Sample]:
    found = best_checkpoint(job)
    if found is not None:
        field, checkpoint = found
        model = checkpoint.fine_tuned_model_checkpoint or ""
        yield [job.job_id, field, model], float(checkpoint.step_number)


def hyperparameter_samples(job: JobSnapshot) -> Iterator[Sample]:
    if job.job is not None:
        for name, value in job.job.hyperparameters:
            yield [job.job_id, name], value


def grader_reward_samples(job: JobSnapshot) -> Iterator[Sample]:
    if job.live is not None:
        for grader, split, value in job.live.grader_rewards:
            yield [job.job_id, grader, split], value


def grader_error_samples(job: JobSnapshot) -> Iterator[Sample]:
    if job.live is not None:
        for grader, split, error, value in job.live.grader_errors:
            yield [job.job_id, grader, split, error], value


def phase_samples(job: JobSnapshot) -> Iterator[Sample]:
    if job.live is not None:
        for phase, seconds in job.live.phases:
            yield [job.job_id, phase], seconds


def checkpoint_field_samples(job: JobSnapshot) -> Iterator[FieldSample]:
    """Every other numeric field of every checkpoint that the job may export."""
    for checkpoint in job.checkpoints:
        for field, value in checkpoint.metrics.extra:
            if field in job.fields:
                yield field, [job.job_id, str(checkpoint.step_number)], value


def live_field_samples(job: JobSnapshot) -> Iterator[FieldSample]:
    """Every other numeric field of the newest metrics event that the job may export."""
    if job.live is not None:
        for field, value in job.live.extra:
            if field in job.fields:
                yield field, [job.job_id], value
