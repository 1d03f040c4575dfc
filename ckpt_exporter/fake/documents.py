"""The JSON documents the fake API serves, built as the real API builds them.

A job (FakeJob.document()), a checkpoint, an event, an error body and a list page. Pure data: no
HTTP here, so that the state, the routes and the fault answers all build the same shapes.

The `azure` flavour uses Azure's names (as its fine-tuning tutorial's outputs show them):
checkpoint ids `ftchkpt-<32 hex>`, and checkpoint and fine-tuned model names `<model>.ft-<32 hex>`
(gpt-4.1-2025-04-14.ft-966a5a930e6d4404884f52441e7688c8) where OpenAI writes
`ft:<model>:<org>:<suffix>:<id>[:ckpt-step-<n>]`, and a checkpoint's `metrics.step` as a float
(`"step": 100.0`; step_number stays an integer). Azure also reports a job `paused` (a
reinforcement job that reached its cost limit), a status OpenAI's schema does not list.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

TERMINAL = ("succeeded", "failed", "cancelled")
FLAVORS = ("openai", "azure")


def azure_hex(*parts: object) -> str:
    """32 hex digits, as in Azure's ids and model names; the same parts give the same digits."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:32]


@dataclass
class FakeJob:
    id: str
    newest_first: bool = True
    status: str = "running"
    model: str = "gpt-4o-mini-2024-07-18"
    created_at: int = field(default_factory=lambda: int(time.time()))
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    finished_at: int | None = None
    flavor: str = "openai"
    method: dict[str, Any] | None = None  # None: a supervised job, whose document has no `method`
    hyperparameters: dict[str, Any] | None = None  # None: the supervised defaults below

    def fine_tuned_model(self) -> str:
        if self.flavor == "azure":
            return f"{self.model}.ft-{azure_hex(self.id)}"
        return f"ft:{self.model}:org:{self.suffix or ''}:{self.id[-8:]}"

    def checkpoint_model(self, step: int) -> str:
        """The name of the model a checkpoint at `step` is deployed as."""
        if self.flavor == "azure":
            return f"{self.model}.ft-{azure_hex(self.id, step)}"
        return f"ft:{self.model}:org::{self.id[-8:]}:ckpt-step-{step}"

    def checkpoint_id(self, serial: int) -> str:
        return f"ftchkpt-{azure_hex(self.id, serial)}" if self.flavor == "azure" else f"ftckpt_{serial:06d}"

    def document(self) -> dict[str, Any]:
        """The job as GET /fine_tuning/jobs/{id} returns it."""
        succeeded = self.status == "succeeded"
        document = {
            "object": "fine_tuning.job",
            "id": self.id,
            "created_at": self.created_at,
            "error": None,
            "finished_at": self.finished_at,
            "fine_tuned_model": self.fine_tuned_model() if succeeded else None,
            "hyperparameters": self.hyperparameters
            or {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0},
            "model": self.model,
            "organization_id": "org-fake",
            "result_files": [],
            "status": self.status,
            "trained_tokens": self.trained_tokens,
            "training_file": "file-train",
            "validation_file": "file-valid",
            "seed": 42,
            "estimated_finish": self.estimated_finish,
            "metadata": self.metadata,
            "user_provided_suffix": self.suffix,
        }
        if self.method is not None:
            document["method"] = self.method
        return document


def checkpoint_document(
    job: FakeJob, step: int, metrics: dict[str, Any], checkpoint_id: str, created_at: int
) -> dict[str, Any]:
    """A checkpoint as GET /fine_tuning/jobs/{id}/checkpoints lists it; `metrics` sent as given."""
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": checkpoint_id,
        "created_at": created_at,
        "fine_tuned_model_checkpoint": job.checkpoint_model(step),
        "fine_tuning_job_id": job.id,
        # Azure writes the metrics' step as a float (100.0), OpenAI as an integer
        "metrics": {"step": float(step) if job.flavor == "azure" else step, **metrics},
        "step_number": step,
    }


def event_document(
    event_id: str, message: str, level: str, data: dict[str, Any] | None, created_at: int
) -> dict[str, Any]:
    """An event; with `data` it is a metrics event (step, train_loss, ..., total_steps)."""
    return {
        "object": "fine_tuning.job.event",
        "id": event_id,
        "created_at": created_at,
        "level": level,
        "message": message,
        "type": "metrics" if data is not None else "message",
        "data": data if data is not None else {},
    }


def error_body(message: str, code: str) -> dict[str, Any]:
    """The API's error document (OpenAI's shape, which Azure's data plane also uses)."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


T = TypeVar("T")


def list_page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """One page after the `after` cursor, `limit` long, as the API's list endpoints return it."""
    first_position = {item["id"]: n for n, item in reversed(list(enumerate(items)))}  # of a repeated id
    data, has_more = window(items, first_position, after, limit)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def window(items: list[T], position: dict[str, int], after: str | None, limit: int) -> tuple[list[T], bool]:
    """The items after the `after` cursor (none if it is unknown), `limit` of them, and has_more."""
    start = 0 if after is None else position.get(after, len(items) - 1) + 1
    return items[start : start + limit], start + limit < len(items)
