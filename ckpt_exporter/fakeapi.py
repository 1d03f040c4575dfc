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
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

TERMINAL = ("succeeded", "failed", "cancelled")


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


# -- fault injection: what can go wrong with a response, for the exporter's resilience tests ----
#
#     api.inject("ftjob-1", Fault.http(429, {"Retry-After": "2"}), times=3)
#     api.inject("ftjob-1", "malformed_json", endpoint="checkpoints")
#     api.inject(None, "reset", times=None)        # every request, until api.clear_faults()
#
# A fault applies to the requests of one job (None: any request, the jobs listing included), on
# one endpoint (checkpoints, job, events, jobs; None: any), `times` times (None: until cleared).
# The request is handled first (it is counted and logged, and a wrong key or an unknown job still
# answer 401 / 404 without using up the fault); the fault then replaces or alters the answer.

FAULT_KINDS = {
    # the response
    "http": "an error status with the API's error body and the given headers",
    "hang": "no answer for `seconds` (or until the client gives up), then the normal one",
    "reset": "the connection is reset (RST) without an answer",
    "close": "the connection is closed without an answer",
    "truncated": "200 with a Content-Length larger than the body, then the connection closes",
    "malformed_json": "200 with a body that is not JSON",
    "echo_auth": "400 whose error message echoes the request's credentials (a careless proxy)",
    "headers": "the normal answer with extra headers (x-ratelimit-*, say)",
    # the page (checkpoints): one bad item is added first, the valid items stay
    "wrong_types": "a checkpoint whose train_loss is a string",
    "metrics_not_object": "a checkpoint whose metrics is a list",
    "missing_id": "a checkpoint without id",
    "missing_step": "a checkpoint without step_number",
    "nan": "a checkpoint whose train_loss is the JSON literal NaN",
    "infinity": "a checkpoint whose valid_loss is the JSON literal Infinity",
    "other_job": "a checkpoint of another job",
    # the page as a whole
    "huge_page": "`items` checkpoints in one page (far more than asked for; megabytes)",
    "repeated_cursor": "has_more true, and the page ends with the cursor the client sent",
    "empty_page_more": "an empty page with has_more true",
}
ITEM_FAULTS = frozenset(
    {"wrong_types", "metrics_not_object", "missing_id", "missing_step", "nan", "infinity", "other_job"}
)


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 500
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 30.0
    items: int = 50_000

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {', '.join(FAULT_KINDS)}")

    @classmethod
    def http(cls, status: int, headers: dict[str, str] | None = None) -> Fault:
        return cls("http", status=status, headers=tuple((headers or {}).items()))

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        return cls("hang", seconds=seconds)

    @classmethod
    def with_headers(cls, headers: dict[str, str]) -> Fault:
        return cls("headers", headers=tuple(headers.items()))

    @classmethod
    def huge_page(cls, items: int = 50_000) -> Fault:
        return cls("huge_page", items=items)


@dataclass
class _FaultRule:
    fault: Fault
    job_id: str | None
    endpoint: str | None
    times: int | None


@dataclass(frozen=True)
class ServedFault:
    at: float
    endpoint: str
    job_id: str
    kind: str


class _FaultInjection:
    """FakeApi's fault schedule and the middleware that serves it."""

    jobs: dict[str, FakeJob]
    _lock: threading.Lock

    def _init_faults(self) -> None:
        self._fault_rules: list[_FaultRule] = []
        self.faults_served: list[ServedFault] = []

    def inject(
        self, job_id: str | None, fault: Fault | str, *, times: int | None = 1, endpoint: str | None = None
    ) -> None:
        """Serve `fault` to the next `times` matching requests (None: until clear_faults)."""
        rule = _FaultRule(Fault(fault) if isinstance(fault, str) else fault, job_id, endpoint, times)
        with self._lock:
            self._fault_rules.append(rule)

    def clear_faults(self, job_id: str | None = None) -> None:
        """Drop the faults still scheduled (for one job's rules, or all)."""
        with self._lock:
            self._fault_rules = [r for r in self._fault_rules if job_id is not None and r.job_id != job_id]

    def served(self, job_id: str | None = None) -> list[ServedFault]:
        with self._lock:
            return [s for s in self.faults_served if job_id is None or s.job_id == job_id]

    def _take_fault(self, endpoint: str, job_id: str) -> Fault | None:
        with self._lock:
            for rule in self._fault_rules:
                if rule.job_id not in (None, job_id) or rule.endpoint not in (None, endpoint):
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._fault_rules.remove(rule)
                self.faults_served.append(ServedFault(time.time(), endpoint, job_id, rule.fault.kind))
                return rule.fault
        return None

    @web.middleware
    async def _fault_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if response.status >= 400 or not isinstance(response, web.Response):
            return response
        job_id = request.match_info.get("job_id", "")
        endpoint = (
            request.path.rsplit("/", 1)[-1] if request.path.endswith(("/checkpoints", "/events")) else ""
        )
        endpoint = endpoint or ("job" if job_id else "jobs")
        fault = self._take_fault(endpoint, job_id)
        if fault is None:
            return response
        return await self._fault_response(request, response, fault, job_id)

    async def _fault_response(
        self, request: web.Request, response: web.Response, fault: Fault, job_id: str
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind == "http":
            error = _error(fault.status, f"Simulated fault: HTTP {fault.status}", f"fault_{fault.status}")
            error.headers.update(dict(fault.headers))
            return error
        if kind == "hang":
            deadline = time.monotonic() + fault.seconds
            while time.monotonic() < deadline and not _client_gone(request):
                await asyncio.sleep(0.05)
            return response
        if kind in ("reset", "close"):
            _drop_connection(request, reset=kind == "reset")
            raise asyncio.CancelledError  # aiohttp's way for a handler to end with no answer
        if kind == "truncated":
            body = response.body if isinstance(response.body, bytes) else b"{}"
            truncated = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            truncated.content_length = len(body) + 1000
            await truncated.prepare(request)
            await truncated.write(body[: len(body) // 2])
            _drop_connection(request, reset=False)
            return truncated
        if kind == "malformed_json":
            return web.Response(
                body=b'{"object": "list", "data": [{"id": "ftckpt_', content_type="application/json"
            )
        if kind == "echo_auth":
            headers = request.headers
            seen = f"Authorization: {headers.get('Authorization')}, api-key: {headers.get('api-key')}"
            return _error(400, f"Could not parse the request (headers: {seen})", "invalid_request")
        if kind == "headers":
            response.headers.update(dict(fault.headers))
            return response
        assert isinstance(response.body, bytes)
        document = self._fault_page(fault, json.loads(response.body), job_id, request.query.get("after"))
        return web.json_response(document)  # json.dumps writes NaN and Infinity as those literals

    def _fault_page(
        self, fault: Fault, page: dict[str, Any], job_id: str, after: str | None
    ) -> dict[str, Any]:
        data: list[Any] = list(page.get("data", []))
        if fault.kind in ITEM_FAULTS:
            data.insert(0, _bad_checkpoint(fault.kind, job_id))
        elif fault.kind == "huge_page":
            data = [_checkpoint_like(job_id, n, f"ftckpt_huge{n:06d}") for n in range(1, fault.items + 1)]
            page["has_more"] = False
        elif fault.kind == "repeated_cursor":
            with self._lock:
                known = (
                    [c for c in self.jobs[job_id].checkpoints if c["id"] == after]
                    if job_id in self.jobs
                    else []
                )
            if known:
                data.append(dict(known[0]))  # the page ends with the cursor already used
            page["has_more"] = True
        elif fault.kind == "empty_page_more":
            data, page["has_more"] = [], True
        page["data"] = data
        if "first_id" in page:
            page["first_id"] = data[0].get("id") if data and isinstance(data[0], dict) else None
            page["last_id"] = data[-1].get("id") if data and isinstance(data[-1], dict) else None
        return page


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _drop_connection(request: web.Request, *, reset: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


def _checkpoint_like(job_id: str, step: int, checkpoint_id: str) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": checkpoint_id,
        "created_at": 1_700_000_000 + step,
        "fine_tuned_model_checkpoint": f"ft:gpt-4o-mini-2024-07-18:org::{job_id[-8:]}:ckpt-step-{step}",
        "fine_tuning_job_id": job_id,
        "metrics": {"step": step, "train_loss": 0.5, "valid_loss": 0.6},
        "step_number": step,
    }


def _bad_checkpoint(kind: str, job_id: str) -> dict[str, Any]:
    """A checkpoint that is wrong in the way `kind` says (and in no other)."""
    item = _checkpoint_like(job_id, 999_999, f"ftckpt_bad_{kind}")
    if kind == "wrong_types":
        item["metrics"]["train_loss"] = "0.5"
    elif kind == "metrics_not_object":
        item["metrics"] = [0.5, 0.6]
    elif kind == "missing_id":
        del item["id"]
    elif kind == "missing_step":
        del item["step_number"]
    elif kind == "nan":
        item["metrics"]["train_loss"] = float("nan")
    elif kind == "infinity":
        item["metrics"]["valid_loss"] = float("inf")
    elif kind == "other_job":
        item["fine_tuning_job_id"] = "ftjob-someone-else"
    return item


class FakeApi(_FaultInjection):
    """The API's state; safe to change from any thread while the server runs."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        newest_first: bool = True,
        latency: float = 0.0,
        token_check: Callable[[str], bool] | None = None,
    ) -> None:
        self.api_key = api_key
        # Whether a Bearer token is genuine and unexpired (fake/identity.py's token_checker).
        self.token_check = token_check
        self.newest_first = newest_first
        self.latency = latency
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[RequestRecord] = []
        self.record_requests = True
        self.request_counts: Counter[tuple[str, str]] = Counter()  # (endpoint, job_id)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._jobs_version = 0  # bumped by every change to the jobs (the listing's cache key)
        self._listed: tuple[int, list[FakeJob], dict[str, int]] | None = None
        self._init_faults()

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
        app = web.Application(middlewares=[self._fault_middleware])
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
        if self.token_check is not None:  # Entra ID tokens only, in Azure's words when refused
            bearer = request.headers.get("Authorization", "")
            if not (bearer.startswith("Bearer ") and self.token_check(bearer.removeprefix("Bearer "))):
                return _error(401, "Unauthorized. Access token is missing, invalid or expired.", "401")
        elif self.api_key is not None and supplied != self.api_key:
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if job_id and job_id not in self.jobs:
            return _error(404, f"Could not find fine-tune: {job_id}", "fine_tune_not_found")
        return None

    async def _jobs(self, request: web.Request) -> web.Response:
        if (error := await self._admit(request, "jobs", "")) is not None:
            return error
        wanted = {k[len("metadata[") : -1]: v for k, v in request.query.items() if k.startswith("metadata[")}
        with self._lock:
            jobs, position = self._listing()
            if wanted:
                jobs = [
                    job for job in jobs if all((job.metadata or {}).get(k) == v for k, v in wanted.items())
                ]
                position = {job.id: n for n, job in enumerate(jobs)}
            page, has_more = _window(jobs, position, request.query, default_limit=20)
            data = [job.document() for job in page]  # only the page's documents
        return web.json_response({"object": "list", "data": data, "has_more": has_more})

    def _listing(self) -> tuple[list[FakeJob], dict[str, int]]:
        """The jobs newest first and each one's position, kept until a job is added or changed
        (10,000 jobs sorted and rendered for every page would make the fake, not the exporter,
        the benchmark's bottleneck)."""
        if self._listed is None or self._listed[0] != self._jobs_version:
            jobs = sorted(self.jobs.values(), key=lambda j: (j.created_at, j.id), reverse=True)
            self._listed = (self._jobs_version, jobs, {job.id: n for n, job in enumerate(jobs)})
        return self._listed[1], self._listed[2]

    async def _admit(self, request: web.Request, endpoint: str, job_id: str) -> web.Response | None:
        """Simulated latency, then the request log, the key and the job's existence."""
        if self.latency:
            await asyncio.sleep(self.latency)
        return self._check(request, endpoint, job_id)

    async def _job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if (error := await self._admit(request, "job", job_id)) is not None:
            return error
        with self._lock:
            return web.json_response(self.jobs[job_id].document())

    async def _job_list(self, request: web.Request, endpoint: str, default_limit: int) -> web.Response:
        """A job's checkpoints or events, in the job's order, a page at a time."""
        job_id = request.match_info["job_id"]
        if (error := await self._admit(request, endpoint, job_id)) is not None:
            return error
        with self._lock:
            job = self.jobs[job_id]
            listed = job.checkpoints if endpoint == "checkpoints" else job.events
            items = list(reversed(listed)) if job.newest_first else list(listed)
        page = _page(items, request.query, default_limit)
        if endpoint == "events":  # the events list has no first_id / last_id
            page = {"object": "list", "data": page["data"], "has_more": page["has_more"]}
        return web.json_response(page)

    async def _events(self, request: web.Request) -> web.Response:
        return await self._job_list(request, "events", 20)

    async def _checkpoints(self, request: web.Request) -> web.Response:
        return await self._job_list(request, "checkpoints", 10)


T = TypeVar("T")


def _page(items: list[dict[str, Any]], query: Any, default_limit: int = 10) -> dict[str, Any]:
    """One page after the `after` cursor, `limit` long, as the API's list endpoints return it."""
    first_position = {item["id"]: n for n, item in reversed(list(enumerate(items)))}  # of a repeated id
    data, has_more = _window(items, first_position, query, default_limit)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _window(items: list[T], position: dict[str, int], query: Any, default_limit: int) -> tuple[list[T], bool]:
    """The items after the `after` cursor (none if it is unknown), `limit` of them, and has_more."""
    limit = int(query.get("limit", default_limit))
    after = query.get("after")
    start = 0 if after is None else position.get(after, len(items) - 1) + 1
    return items[start : start + limit], start + limit < len(items)


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
        # aiohttp waits up to shutdown_timeout (60 s by default) for a connection's handler on
        # cleanup, and a connection accepted just as cleanup starts is missed by its close of the
        # idle ones: a test's teardown then hung for the whole 60 s. A fake has nothing to finish.
        self._runner = web.AppRunner(self.api.app(self.prefix), access_log=None, shutdown_timeout=1.0)
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
    TOTAL_STEPS = 100_000

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
        self.api.add_event(
            job_id,
            f"Step {step}/{self.TOTAL_STEPS}: training loss={train_loss}",
            data={
                "step": step,
                "total_steps": self.TOTAL_STEPS,
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "train_mean_token_accuracy": round(min(0.99, 0.55 + progress * 0.4), 4),
            },
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
    web.run_app(
        api.app(), host="127.0.0.1", port=args.port, access_log=None, print=None, shutdown_timeout=1.0
    )


if __name__ == "__main__":
    main()
