"""The benchmark's deterministic data: which jobs exist, their order, status and checkpoints.

Shared by the fake API process (which serves them) and the runner (which computes what the exporter
really needs to ask for). Job n's id is `ftjob-bench-{n:06d}`; the running jobs are the newest
(n = 0 .. running-1) and the finished ones older, as on a real account where recent jobs run and
older ones have finished. The jobs listing is newest first, so the running jobs' statuses fill the
first ceil(running / 100) listing pages.
"""

from __future__ import annotations

import math
from typing import Any

BASE_TIME = 1_750_000_000  # created_at of job 0; job n was created n seconds earlier
STEP = 100  # checkpoint k (1-based) is at step k * STEP
LIST_LIMIT = 100  # jobs per listing page the exporter asks for (ckpt_exporter.poller.LIST_LIMIT)


def job_id(n: int) -> str:
    return f"ftjob-bench-{n:06d}"


def job_fields(n: int, running: int) -> dict[str, Any]:
    """FakeApi.add_job keyword arguments for job n (running when n < running)."""
    created = BASE_TIME - n
    fields: dict[str, Any] = {"created_at": created, "suffix": f"bench{n % 10}"}
    if n < running:
        fields.update(status="running", estimated_finish=created + 7200)
    else:
        fields.update(status="succeeded", trained_tokens=100_000 + n, finished_at=created + 3600)
    return fields


def checkpoint_metrics(n: int, step: int) -> dict[str, float]:
    """All six metric fields, deterministic and distinct per (job, step)."""
    train = round(2.0 / (1.0 + step / 100.0) + (n % 97) / 1000.0, 6)
    valid = round(train * 1.05 + (n % 13) / 1000.0, 6)
    return {
        "train_loss": train,
        "train_mean_token_accuracy": round(min(0.99, 0.5 + step / 1000.0), 6),
        "valid_loss": valid,
        "valid_mean_token_accuracy": round(min(0.98, 0.48 + step / 1000.0), 6),
        "full_valid_loss": round(valid * 0.99, 6),
        "full_valid_mean_token_accuracy": round(min(0.98, 0.49 + step / 1000.0), 6),
    }


def status_pages_needed(running: int) -> int:
    """Listing pages that give every running job's status (they are the newest `running` jobs)."""
    return math.ceil(running / LIST_LIMIT) if running > 1 else 0


def requests_needed(running: int, reads_events: bool) -> int:
    """Requests a poll cycle really needs: one checkpoints request per running job (and one events
    request, when the exporter reads events for the live metrics), plus the listing pages that carry
    the running jobs' statuses (a single running job reads its own document instead)."""
    per_job = 2 if reads_events else 1
    return per_job * running + (status_pages_needed(running) if running > 1 else running)
