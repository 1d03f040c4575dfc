"""A simulated fine-tuning API: a real HTTP server (aiohttp) on loopback.

Used by `ckpt-exporter demo`, by the tests and by the benchmark. It serves the same documents as
the real API (the tests validate them against OpenAI's published OpenAPI schemas), in either list
order, with pagination, an optional key check, simulated latency, and a log of every request.

    api = FakeApi(api_key="sk-test")
    api.add_job("ftjob-1", newest_first=False)
    api.add_checkpoint("ftjob-1", step=10, metrics={"train_loss": 0.5})
    with FakeApiServer(api) as server:
        print(server.base_url)        # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


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

    def document(self) -> dict[str, Any]:
        """The job as GET /fine_tuning/jobs/{id} returns it."""
        succeeded = self.status == "succeeded"
        return {
            "object": "fine_tuning.job",
            "id": self.id,
            "created_at": self.created_at,
            "error": None,
            "finished_at": self.finished_at,
            "fine_tuned_model": f"ft:{self.model}:org:{self.suffix or ''}:{self.id[-8:]}"
            if succeeded
            else None,
            "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0},
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


@dataclass(frozen=True)
class RequestRecord:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float


class FakeApi:
    """The API's state; safe to change from any thread while the server runs."""

    def __init__(
        self, *, api_key: str | None = None, newest_first: bool = True, latency: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.newest_first = newest_first
        self.latency = latency
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[RequestRecord] = []
        self.record_requests = True
        self.request_counts: Counter[tuple[str, str]] = Counter()  # (endpoint, job_id)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

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
            if created_at is not None:
                job.created_at = created_at
            for name, value in fields.items():
                setattr(job, name, value)
            self.jobs[job_id] = job
            return job

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Change a job's attributes, e.g. update_job(id, status="succeeded", trained_tokens=1000)."""
        with self._lock:
            job = self.jobs[job_id]
            for name, value in fields.items():
                setattr(job, name, value)

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
            event = {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{next(self._ids):06d}",
                "created_at": created_at if created_at is not None else int(time.time()),
                "level": level,
                "message": message,
                "type": "metrics" if data is not None else "message",
                "data": data if data is not None else {},
            }
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
            checkpoint = {
                "object": "fine_tuning.job.checkpoint",
                "id": checkpoint_id or f"ftckpt_{next(self._ids):06d}",
                "created_at": created_at if created_at is not None else job.created_at + step,
                "fine_tuned_model_checkpoint": f"ft:{job.model}:org::{job_id[-8:]}:ckpt-step-{step}",
                "fine_tuning_job_id": job_id,
                "metrics": {"step": step, **(metrics or {})},
                "step_number": step,
            }
            job.checkpoints.append(checkpoint)
            job.checkpoints.sort(key=lambda c: (c["step_number"], c["created_at"]))
            return checkpoint

    def remove_checkpoint(self, job_id: str, checkpoint_id: str) -> None:
        with self._lock:
            job = self.jobs[job_id]
            job.checkpoints = [c for c in job.checkpoints if c["id"] != checkpoint_id]

    def count(self, endpoint: str, job_id: str) -> int:
        with self._lock:
            return self.request_counts[(endpoint, job_id)]

    def reset_counts(self) -> None:
        with self._lock:
            self.request_counts.clear()
            self.requests.clear()

    # -- serving -----------------------------------------------------------------------------

    def app(self, prefix: str = "/v1") -> web.Application:
        """Serves the OpenAI paths (/v1/...) and Azure's (/openai/... with api-version, /openai/v1/...)."""
        app = web.Application()
        for base in {prefix, "/v1", "/openai", "/openai/v1"}:
            app.router.add_get(base + "/fine_tuning/jobs", self._jobs)
            app.router.add_get(base + "/fine_tuning/jobs/{job_id}", self._job)
            app.router.add_get(base + "/fine_tuning/jobs/{job_id}/checkpoints", self._checkpoints)
            app.router.add_get(base + "/fine_tuning/jobs/{job_id}/events", self._events)
        return app

    def _check(self, request: web.Request, endpoint: str, job_id: str) -> web.Response | None:
        with self._lock:
            self.request_counts[(endpoint, job_id)] += 1
            if self.record_requests:
                self.requests.append(
                    RequestRecord(request.path, dict(request.query), dict(request.headers), time.time())
                )
        if request.path.startswith("/openai/"):
            # Azure: the key in an api-key header; api-version required except on the v1 paths.
            if not request.path.startswith("/openai/v1/") and "api-version" not in request.query:
                return _error(404, "Resource not found (missing api-version)", "404")
            supplied = request.headers.get("api-key")
        else:
            authorization = request.headers.get("Authorization", "")
            supplied = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None
        if self.api_key is not None and supplied != self.api_key:
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if job_id and job_id not in self.jobs:
            return _error(404, f"Could not find fine-tune: {job_id}", "fine_tune_not_found")
        return None

    async def _jobs(self, request: web.Request) -> web.Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        if (error := self._check(request, "jobs", "")) is not None:
            return error
        wanted = {k[len("metadata[") : -1]: v for k, v in request.query.items() if k.startswith("metadata[")}
        with self._lock:
            jobs = sorted(self.jobs.values(), key=lambda j: (j.created_at, j.id), reverse=True)
            items = [
                job.document()
                for job in jobs
                if all((job.metadata or {}).get(k) == v for k, v in wanted.items())
            ]
        page = _page(items, request.query, default_limit=20)
        return web.json_response({"object": "list", "data": page["data"], "has_more": page["has_more"]})

    async def _job(self, request: web.Request) -> web.Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        job_id = request.match_info["job_id"]
        if (error := self._check(request, "job", job_id)) is not None:
            return error
        with self._lock:
            return web.json_response(self.jobs[job_id].document())

    async def _events(self, request: web.Request) -> web.Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        job_id = request.match_info["job_id"]
        if (error := self._check(request, "events", job_id)) is not None:
            return error
        with self._lock:
            job = self.jobs[job_id]
            items = list(reversed(job.events)) if job.newest_first else list(job.events)
        page = _page(items, request.query, default_limit=20)
        return web.json_response({"object": "list", "data": page["data"], "has_more": page["has_more"]})

    async def _checkpoints(self, request: web.Request) -> web.Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        job_id = request.match_info["job_id"]
        if (error := self._check(request, "checkpoints", job_id)) is not None:
            return error
        with self._lock:
            job = self.jobs[job_id]
            items = list(reversed(job.checkpoints)) if job.newest_first else list(job.checkpoints)
        return web.json_response(_page(items, request.query))


def _page(items: list[dict[str, Any]], query: Any, default_limit: int = 10) -> dict[str, Any]:
    """One page after the `after` cursor, `limit` long, as the API's list endpoints return it."""
    limit = int(query.get("limit", default_limit))
    after = query.get("after")
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return web.json_response(body, status=status)


class FakeApiServer:
    """Runs a FakeApi on loopback in a thread of its own (its own event loop)."""

    def __init__(self, api: FakeApi, host: str = "127.0.0.1", port: int = 0, prefix: str = "/v1") -> None:
        self.api = api
        self.host = host
        self.port = port
        self.prefix = prefix
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-api", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.api.app(self.prefix), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the demo's simulated training ----------------------------------------------------------


class SimulatedTraining:
    """A few jobs that each gain a checkpoint every few seconds, with falling losses."""

    KEEP = 6  # checkpoints the simulated API retains per job

    def __init__(self, api: FakeApi, jobs: int = 3, every_seconds: float = 5.0, seed: int = 7) -> None:
        self.api = api
        self.every_seconds = every_seconds
        self._random = random.Random(seed)
        self._steps: dict[str, int] = {}
        for n in range(jobs):
            job_id = f"ftjob-demo{n + 1}"
            # Alternate the list order, as OpenAI (newest first) and Azure (oldest first) do.
            api.add_job(job_id, newest_first=n % 2 == 0)
            self._steps[job_id] = 0
            for _ in range(2):
                self.advance(job_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-training", daemon=True)

    @property
    def job_ids(self) -> list[str]:
        return list(self._steps)

    def advance(self, job_id: str) -> None:
        step = self._steps[job_id] = self._steps[job_id] + 50
        progress = step / 1000
        noise = self._random.uniform(-0.03, 0.03)
        train_loss = round(2.2 * (0.9 ** (progress * 10)) + 0.2 + noise, 4)
        valid_loss = round(train_loss * 1.08 + self._random.uniform(0, 0.05), 4)
        self.api.add_checkpoint(
            job_id,
            step,
            {
                "train_loss": train_loss,
                "train_mean_token_accuracy": round(min(0.99, 0.55 + progress * 0.4), 4),
                "valid_loss": valid_loss,
                "valid_mean_token_accuracy": round(min(0.98, 0.52 + progress * 0.38), 4),
                "full_valid_loss": round(valid_loss * 0.98, 4),
                "full_valid_mean_token_accuracy": round(min(0.98, 0.53 + progress * 0.38), 4),
            },
            created_at=int(time.time()),
        )
        # Like the real API, keep only the most recent checkpoints; older ones drop out.
        job = self.api.jobs[job_id]
        for old in job.checkpoints[: -self.KEEP]:
            self.api.remove_checkpoint(job_id, old["id"])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        job_ids = list(self._steps)
        for job_id in itertools.cycle(job_ids):
            if self._stop.wait(self.every_seconds / len(job_ids)):
                return
            self.advance(job_id)


def main(argv: list[str] | None = None) -> None:
    """Run a fake API as a process of its own (the benchmark uses this)."""
    parser = argparse.ArgumentParser(description="Simulated fine-tuning API on loopback")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--oldest-first", action="store_true")
    args = parser.parse_args(argv)
    api = FakeApi(latency=args.latency, newest_first=not args.oldest_first)
    api.record_requests = False
    for n in range(args.jobs):
        job_id = f"ftjob-{n:06d}"
        api.add_job(job_id)
        for step in range(1, args.checkpoints + 1):
            api.add_checkpoint(job_id, step * 100, {"train_loss": 1.0 / step, "valid_loss": 1.1 / step})
    web.run_app(api.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
