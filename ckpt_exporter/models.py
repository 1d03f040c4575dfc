"""Pydantic models of the fine-tuning API objects the exporter reads.

Validation is strict: a loss sent as a string, NaN or Infinity is a malformed checkpoint, never a
number we would make up. Unknown fields are ignored so that API additions do not break us.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_STRICT = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)

# The checkpoint metric fields, in the order they are exported.
METRIC_FIELDS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


class CheckpointMetrics(BaseModel):
    """Every field is optional: absent or null means "not reported", never zero."""

    model_config = _STRICT

    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class Checkpoint(BaseModel):
    model_config = _STRICT

    id: str = Field(min_length=1)
    created_at: int
    fine_tuning_job_id: str
    step_number: int
    fine_tuned_model_checkpoint: str | None = None
    metrics: CheckpointMetrics = CheckpointMetrics()

    @property
    def order_key(self) -> tuple[int, int]:
        """Position in training: step first, creation time to break ties."""
        return (self.step_number, self.created_at)


class ListPage(BaseModel):
    """The envelope of any list endpoint; items are validated one by one by the caller."""

    model_config = ConfigDict(strict=True, extra="ignore")

    data: list[Any]
    has_more: bool


def parse_checkpoint(raw: Any) -> Checkpoint | ValidationError:
    try:
        return Checkpoint.model_validate(raw)
    except ValidationError as exc:
        return exc


TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
NOT_STARTED_STATUSES = frozenset({"validating_files", "queued"})  # no checkpoints yet


class FineTuningJob(BaseModel):
    """A job as GET /fine_tuning/jobs and /fine_tuning/jobs/{id} return it (the fields we use).

    `status` is kept as a string: the API has statuses outside its documented enum (`paused`).
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)

    id: str = Field(min_length=1)
    status: str = Field(min_length=1)
    created_at: int
    model: str | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    user_provided_suffix: str | None = None
    metadata: dict[str, str] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def suffix(self) -> str:
        """The user's suffix: given as user_provided_suffix, or the 4th part of ft:base:org:suffix:id."""
        if self.user_provided_suffix:
            return self.user_provided_suffix
        parts = (self.fine_tuned_model or "").split(":")
        return parts[3] if len(parts) >= 5 and parts[0] == "ft" else ""
