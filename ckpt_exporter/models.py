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
