"""The fake API's state: its jobs with their checkpoints and events, the request log and counts,
and the faults it is to serve. Safe to change from any thread while the server runs.

    api = FakeApi(api_key="sk-test")
    api.add_job("ftjob-1", newest_first=False)
    api.add_checkpoint("ftjob-1", step=10, metrics={"train_loss": 0.5})
    with FakeApiServer(api) as server:
        print(server.base_url)        # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Any

from aiohttp import web

from ckpt_exporter.fake.auth import TokenCheck
from ckpt_exporter.fake.documents import (
    FLAVORS,
    TERMINAL,
    FakeJob,
    checkpoint_document,
    event_document,
    window,
)
from ckpt_exporter.fake.faults import Fault, FaultSchedule, ServedFault
from ckpt_exporter.fake.routes import RequestRecord, build_app


class FakeApi:
    """The API's state; the routes (routes.py) serve it, FakeApiServer runs them on loopback.

    api_key: the valid key (None: none is checked, unless token_check is given); token_check:
    True for a valid, unexpired Entra ID token (Azure's address forms); key_auth=False: keys are
    refused with 403, as on a resource with disableLocalAuth; flavor "azure": Azure's ids and
    model names in the documents. auth.py has what each address form accepts.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        newest_first: bool = True,
        latency: float = 0.0,
        token_check: TokenCheck | None = None,
        key_auth: bool = True,
        flavor: str = "openai",
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; one of {', '.join(FLAVORS)}")
        self.api_key = api_key
        self.token_check = token_check
        self.key_auth = key_auth
        self.flavor = flavor
        self.newest_first = newest_first
        self.latency = latency
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[RequestRecord] = []
        self.record_requests = True
        self.request_counts: Counter[tuple[str, str]] = Counter()  # (endpoint, job_id)
        self.faults = FaultSchedule()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._jobs_version = 0  # bumped by every change to the jobs (the listing's cache key)
        self._listed: tuple[int, list[FakeJob], dict[str, int]] | None = None

    # -- changing the state ------------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        *,
        newest_first: bool | None = None,
        status: str = "running",
        created_at: int | None = None,
        **fields: Any,
    ) -> FakeJob:
        """Add a job; `fields` set FakeJob attributes (model, suffix, metadata, trained_tokens...)."""
        with self._lock:
            job = FakeJob(job_id, self.newest_first if newest_first is None else newest_first, status)
            job.flavor = self.flavor
            if created_at is not None:
                job.created_at = created_at
            for name, value in fields.items():
                setattr(job, name, value)
            if status in TERMINAL and job.finished_at is None:
                job.finished_at = job.created_at + 60
            self.jobs[job_id] = job
            self._jobs_version += 1
            return job

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Change a job's attributes, e.g. update_job(id, status="succeeded", trained_tokens=1000).

        A job that turns succeeded, failed or cancelled gets finished_at = now unless given.
        """
        with self._lock:
            job = self.jobs[job_id]
            if fields.get("status") in TERMINAL and job.status not in TERMINAL:
                fields.setdefault("finished_at", int(time.time()))
            for name, value in fields.items():
                setattr(job, name, value)
            self._jobs_version += 1

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        data: dict[str, Any] | None = None,
        created_at: int | None = None,
    ) -> dict[str, Any]:
        """Add an event; with `data` it is a metrics event (step, train_loss, ..., total_steps)."""
        with self._lock:
            job = self.jobs[job_id]
            at = created_at if created_at is not None else int(time.time())
            event = event_document(f"ftevent-{next(self._ids):06d}", message, level, data, at)
            job.events.append(event)
            return event

    def add_checkpoint(
        self,
        job_id: str,
        step: int,
        metrics: dict[str, Any] | None = None,
        *,
        created_at: int | None = None,
        checkpoint_id: str | None = None,
    ) -> dict[str, Any]:
        """Add a checkpoint; `metrics` is sent as given (absent keys stay absent, None is null)."""
        with self._lock:
            job = self.jobs[job_id]
            checkpoint = checkpoint_document(
                job,
                step,
                metrics or {},
                checkpoint_id or job.checkpoint_id(next(self._ids)),
                created_at if created_at is not None else job.created_at + step,
            )
            job.checkpoints.append(checkpoint)
            job.checkpoints.sort(key=lambda c: (c["step_number"], c["created_at"]))
            return checkpoint

    def pause_for_cost_limit(self, job_id: str) -> None:
        """Pause a job as Azure does when a reinforcement job's cost reaches its limit (Foundry's
        RFT guide: "automatically pauses RFT jobs once they hit $5,000 in total training costs"):
        status `paused`, and an event saying why (the fake's wording; Azure's is not documented)."""
        self.update_job(job_id, status="paused")
        self.add_event(job_id, "Job paused: its cost reached the job's cost limit.", level="warn")

    def remove_checkpoint(self, job_id: str, checkpoint_id: str) -> None:
        with self._lock:
            job = self.jobs[job_id]
            job.checkpoints = [c for c in job.checkpoints if c["id"] != checkpoint_id]

    def keep_latest_checkpoints(self, job_id: str, keep: int) -> None:
        """Drop all but the job's `keep` latest checkpoints, as the real API retains only a few."""
        with self._lock:
            job = self.jobs[job_id]
            job.checkpoints = job.checkpoints[-keep:] if keep > 0 else []

    # -- faults (faults.py has the language) -------------------------------------------------

    def inject(
        self, job_id: str | None, fault: Fault | str, *, times: int | None = 1, endpoint: str | None = None
    ) -> None:
        """Serve `fault` to the next `times` matching requests (None: until clear_faults)."""
        self.faults.add(job_id, fault, times, endpoint)

    def clear_faults(self, job_id: str | None = None) -> None:
        """Drop the faults still scheduled (for one job's rules, or all)."""
        self.faults.clear(job_id)

    def served(self, job_id: str | None = None) -> list[ServedFault]:
        return self.faults.served(job_id)

    # -- what was asked ----------------------------------------------------------------------

    def count(self, endpoint: str, job_id: str) -> int:
        with self._lock:
            return self.request_counts[(endpoint, job_id)]

    def reset_counts(self) -> None:
        with self._lock:
            self.request_counts.clear()
            self.requests.clear()

    def note_request(self, endpoint: str, job_id: str, record: RequestRecord) -> None:
        """Count a request (and log it, unless record_requests is off)."""
        with self._lock:
            self.request_counts[(endpoint, job_id)] += 1
            if self.record_requests:
                self.requests.append(record)

    # -- what the routes serve ---------------------------------------------------------------

    def app(self, prefix: str = "/v1") -> web.Application:
        """The aiohttp application that serves this state (see routes.py for the paths)."""
        return build_app(self, prefix)

    def has_job(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self.jobs

    def job_document(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self.jobs[job_id].document()

    def jobs_page(
        self, metadata: dict[str, str], after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of the jobs listing (newest first), filtered by metadata, and has_more."""
        with self._lock:
            jobs, position = self._listing()
            if metadata:
                jobs = [
                    job for job in jobs if all((job.metadata or {}).get(k) == v for k, v in metadata.items())
                ]
                position = {job.id: n for n, job in enumerate(jobs)}
            page, has_more = window(jobs, position, after, limit)
            return [job.document() for job in page], has_more  # only the page's documents

    def listed(self, job_id: str, endpoint: str) -> list[dict[str, Any]]:
        """A job's checkpoints or events (`endpoint`) in the order the job lists them."""
        with self._lock:
            job = self.jobs[job_id]
            items = job.checkpoints if endpoint == "checkpoints" else job.events
            return list(reversed(items)) if job.newest_first else list(items)

    def checkpoint(self, job_id: str, checkpoint_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self.jobs.get(job_id)
            found = [c for c in job.checkpoints if c["id"] == checkpoint_id] if job else []
            return found[0] if found else None

    def _listing(self) -> tuple[list[FakeJob], dict[str, int]]:
        """The jobs newest first and each one's position, kept until a job is added or changed
        (10,000 jobs sorted and rendered for every page would make the fake, not the exporter,
        the benchmark's bottleneck)."""
        if self._listed is None or self._listed[0] != self._jobs_version:
            jobs = sorted(self.jobs.values(), key=lambda j: (j.created_at, j.id), reverse=True)
            self._listed = (self._jobs_version, jobs, {job.id: n for n, job in enumerate(jobs)})
        return self._listed[1], self._listed[2]
