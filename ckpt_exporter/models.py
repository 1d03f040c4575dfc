"""The fine-tuning API objects the exporter reads, validated by pydantic, and the bounded errors.

This module is the bottom of the import order: it imports nothing of the HTTP stack, so that the
snapshot and the exposition, which hold these values, never pull it in.

Validation is strict: a loss sent as a string, NaN or Infinity is a malformed checkpoint, never a
number we would make up. Unknown fields are ignored so that API additions do not break us.

The objects a job keeps between polls (checkpoints, its job document, the latest metrics event)
are frozen, slotted pydantic dataclasses rather than BaseModels: about 150 bytes a checkpoint
instead of a BaseModel's several, which is most of the exporter's memory at thousands of jobs. `parse_*`
validate one raw item and raise pydantic's ValidationError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass as plain_dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass

from ckpt_exporter import fields
from ckpt_exporter.fields import Numbers, Skipped

# Strictness is per field (Strict* types): a strict config would refuse dicts for dataclasses.
KEPT = ConfigDict(extra="ignore", allow_inf_nan=False)


def _encodable(text: str) -> str:
    """A string that UTF-8 can carry: JSON's escapes can make a lone surrogate, which it cannot."""
    if not fields.encodable(text):
        raise ValueError("the string holds a lone surrogate (not valid Unicode)")
    return text


# An integer the exposition can write: beyond +-2**53 a float (every sample's type) loses digits,
# and beyond about 1.8e308 it cannot hold it at all. No step, count or timestamp comes near.
MAX_INTEGER = 2**53
# Every string the exporter keeps or exports (ids, statuses, models, suffixes, levels) is bounded: the
# longest real ones are about 100 characters (a fine-tuned model name), metadata values 512.
MAX_STRING_LENGTH = 512
AnyText = Annotated[StrictStr, AfterValidator(_encodable)]  # not kept: an event's message
Text = Annotated[StrictStr, Field(max_length=MAX_STRING_LENGTH), AfterValidator(_encodable)]
NonEmpty = Annotated[Text, Field(min_length=1)]
Integer = Annotated[StrictInt, Field(ge=-MAX_INTEGER, le=MAX_INTEGER)]

# The checkpoint metric fields, in the order they are exported.
METRIC_FIELDS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


# Filled by the validators from the other fields of the same object, never taken from the API.
_DERIVED = frozenset({"extra", "skipped", "grader_rewards", "grader_errors", "phases"})


def _known(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls)) - _DERIVED


@dataclass(config=KEPT, frozen=True, slots=True)
class CheckpointMetrics:
    """Every field is optional: absent or null means "not reported", never zero.

    The known fields are strict (a loss sent as a string rejects the checkpoint); every other
    numeric field is kept in `extra`, and those that cannot be metric names in `skipped`.
    """

    step: StrictFloat | None = None
    train_loss: StrictFloat | None = None
    train_mean_token_accuracy: StrictFloat | None = None
    valid_loss: StrictFloat | None = None
    valid_mean_token_accuracy: StrictFloat | None = None
    full_valid_loss: StrictFloat | None = None
    full_valid_mean_token_accuracy: StrictFloat | None = None
    extra: Numbers = ()
    skipped: Skipped = ()

    @model_validator(mode="before")
    @classmethod
    def _split_fields(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw  # pydantic says what is wrong with it
        known = _known(cls)
        extra, skipped = fields.top_level_numbers(raw, known)
        return {**{k: raw[k] for k in known if k in raw}, "extra": extra, "skipped": skipped}

    def value(self, name: str) -> float | None:
        """A field's number, known or extra."""
        if name in _KNOWN_METRICS:
            found: float | None = getattr(self, name)
            return found
        return next((value for field, value in self.extra if field == name), None)


_KNOWN_METRICS = frozenset(METRIC_FIELDS)


@dataclass(config=KEPT, frozen=True, slots=True)
class Checkpoint:
    id: NonEmpty
    created_at: Integer
    fine_tuning_job_id: Text
    step_number: Integer
    fine_tuned_model_checkpoint: Text | None = None
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


_checkpoint = TypeAdapter(Checkpoint)


def parse_checkpoint(raw: Any) -> Checkpoint | ValidationError:
    try:
        return _checkpoint.validate_python(raw)
    except ValidationError as exc:
        return exc


TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
NOT_STARTED_STATUSES = frozenset({"validating_files", "queued"})  # no checkpoints yet


@dataclass(config=KEPT, frozen=True, slots=True)
class FineTuningJob:
    """A job as GET /fine_tuning/jobs and /fine_tuning/jobs/{id} return it (the fields we use).

    `status` is kept as a string: the API has statuses outside its documented enum (`paused`).
    """

    id: NonEmpty
    status: NonEmpty
    created_at: Integer
    model: Text | None = None
    fine_tuned_model: Text | None = None
    finished_at: Integer | None = None
    trained_tokens: Integer | None = None
    estimated_finish: Integer | None = None
    user_provided_suffix: Text | None = None
    metadata: dict[Text, Text] | None = None
    # From `method` (read leniently: its shape varies by method and changes): see _method().
    method: StrictStr = "supervised"
    hyperparameters: Numbers = ()
    reasoning_effort: StrictStr = ""
    grader_type: StrictStr = ""

    @model_validator(mode="before")
    @classmethod
    def _method(cls, raw: Any) -> Any:
        """method {type, <type>: {hyperparameters, grader}} -> method, numeric hyperparameters,
        reasoning_effort and the grader's type. A job without `method` is supervised, with the
        top-level `hyperparameters` of the older API."""
        if not isinstance(raw, dict):
            return raw
        method = raw.get("method")
        kind = method.get("type") if isinstance(method, dict) else None
        if not isinstance(kind, str) or fields.name_problem(kind) is not None or len(kind) > 32:
            kind = "supervised" if method is None else "unknown"
        details = method.get(kind) if isinstance(method, dict) else None
        details = details if isinstance(details, dict) else {}
        hyperparameters = details.get("hyperparameters", raw.get("hyperparameters"))
        effort = hyperparameters.get("reasoning_effort") if isinstance(hyperparameters, dict) else None
        grader = details.get("grader")
        grader_type = grader.get("type") if isinstance(grader, dict) else None
        return {
            **{k: v for k, v in raw.items() if k not in ("method", "hyperparameters")},
            "method": kind,
            "hyperparameters": fields.numeric_hyperparameters(hyperparameters),
            "reasoning_effort": effort[:32] if isinstance(effort, str) else "",
            "grader_type": grader_type[:32] if isinstance(grader_type, str) else "",
        }

    @property
    def suffix(self) -> str:
        """The user's suffix: given as user_provided_suffix, or the 4th part of ft:base:org:suffix:id."""
        if self.user_provided_suffix:
            return self.user_provided_suffix
        parts = (self.fine_tuned_model or "").split(":")
        return parts[3] if len(parts) >= 5 and parts[0] == "ft" else ""


_job = TypeAdapter(FineTuningJob)


def parse_job(raw: Any) -> FineTuningJob:
    """One job document; ValidationError when it is not one."""
    return _job.validate_python(raw)


@dataclass(config=KEPT, frozen=True, slots=True)
class MetricsEventData(CheckpointMetrics):
    """The data of a `metrics` event: a checkpoint's metric fields, an integer step, total_steps,
    and reinforcement fine-tuning's nested parts (see fields.py)."""

    step: Integer | None = None
    total_steps: Integer | None = None
    grader_rewards: tuple[tuple[str, str, float], ...] = ()  # (grader, split, mean reward)
    grader_errors: tuple[tuple[str, str, str, float], ...] = ()  # (grader, split, error, rate)
    phases: Numbers = ()  # (phase, seconds) of the step

    @model_validator(mode="before")
    @classmethod
    def _split_fields(cls, raw: Any) -> Any:  # replaces the parent validator of that name
        if not isinstance(raw, dict):
            return raw
        known = _known(cls)
        extra, skipped = fields.top_level_numbers(raw, known)
        return {
            **{k: raw[k] for k in known if k in raw},
            "extra": extra,
            "skipped": skipped + fields.too_many_graders(raw.get("scores"), raw.get("errors")),
            "grader_rewards": fields.grader_rewards(raw.get("scores")),
            "grader_errors": fields.grader_errors(raw.get("errors")),
            "phases": fields.step_phases(raw.get("timing")),
        }


_metrics_event_data = TypeAdapter(MetricsEventData)


def parse_metrics_event_data(raw: Any) -> MetricsEventData:
    """The data of a metrics event; ValidationError when it is not one."""
    return _metrics_event_data.validate_python(raw)


class JobEvent(BaseModel):
    """An item of GET /fine_tuning/jobs/{id}/events."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    id: Text
    created_at: Integer
    level: Text
    message: AnyText = ""
    type: Text | None = None
    data: dict[str, Any] | None = None


class ApiError(Exception):
    """A request that failed for good (retries spent, or not retryable).

    `reason` is one of a small fixed set, fit for a metric label. `retry_after` is the wait, in
    seconds from when the error was raised, that the API asked for (Retry-After, retry-after-ms):
    no request for the same job should go out before it has passed. `held`: the request was not
    sent, because an earlier answer asked to wait longer than is waited in place.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        held: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.held = held


class SignInFailed(ApiError):
    """No usable Microsoft Entra ID token (entra.py): the request was not sent, or the API refused
    a fresh token. `cause` is one of entra.TOKEN_FAILURE_REASONS. The account's token source logs
    it once per cause, so the jobs and the listing do not log it again."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__("sign_in", message)
        self.cause = cause


@plain_dataclass
class Rejected:
    """An item of a page we could not use, with a bounded reason (for a metric label)."""

    reason: str
    detail: str


def invalid_reason(error: ValidationError, reason: str) -> str:
    """`reason`, or string_too_long when a string over MAX_STRING_LENGTH is what made the item invalid."""
    return "string_too_long" if any(e["type"] == "string_too_long" for e in error.errors()) else reason


def describe(error: ValidationError) -> str:
    """The first problem pydantic found, as `where: what`."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "item"
    return f"{where}: {first['msg']}"
