"""A hostile fine-tuning API of the tests' own, for issue 12: what a broken or malicious API (or a
proxy in front of one) could send, byte for byte.

ckpt_exporter.fake is a well-behaved API with faults; this one is a bare HTTP/1.1 server on a
raw socket (keep-alive, Content-Length, nothing else) whose answers are plain functions, so that a
test can send anything: stacked `Content-Encoding: gzip, gzip` bombs, lists whose `has_more` never
ends (fresh cursors on every page), cursor cycles A -> B -> A in the jobs listing, strings holding
every line-break and control character. Every request is recorded.

    api = HostileApi()
    api.add_job("ftjob-a").checkpoints.append(checkpoint("ftjob-a", 1))
    api.answers[("checkpoints", "ftjob-a")] = gzip_bomb_answer(1 << 30, layers=2)
    with HostileServer(api) as server:
        ... CKPT_EXPORTER_API_BASE_URL=server.base_url ...
"""

from __future__ import annotations

import functools
import gzip
import json
import socketserver
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Every character Python's str.splitlines breaks a line at, and every C0/C1 control character.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
CONTROL_CHARS = "".join(chr(c) for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)))
HOSTILE_CHARS = "".join(sorted(set(LINE_BREAKS + CONTROL_CHARS)))
# A forged exposition: what a label value holding it would inject if lines broke at \r.
FORGED_LINES = '\r# HELP forged_total x\r# TYPE forged_total counter\rforged_total{a="b"} 1\r'
CREATED_AT = int(time.time()) - 3600  # an hour ago: within discovery's default age


def hostile_text(tag: str) -> str:
    """`tag`, `\\r#`, a forged exposition, every hostile character, a backslash and a quote."""
    return f'{tag}\r#{FORGED_LINES}{HOSTILE_CHARS}\\"end'


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


def json_answer(document: Any, status: int = 200) -> Answer:
    return Answer(status, json.dumps(document).encode())


Query = dict[str, str]
Route = Callable[[Query], Answer]


def job_document(job_id: str, status: str = "running", **fields: Any) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job",
        "id": job_id,
        "status": status,
        "created_at": CREATED_AT,
        "model": "gpt-4o-mini-2024-07-18",
        "fine_tuned_model": None,
        "finished_at": None,
        "trained_tokens": None,
        **fields,
    }


def checkpoint(job_id: str, step: int, **fields: Any) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": f"ftckpt-{job_id}-{step}",
        "created_at": CREATED_AT + step,
        "fine_tuning_job_id": job_id,
        "fine_tuned_model_checkpoint": f"ft:gpt-4o-mini:org::{job_id}:ckpt-step-{step}",
        "step_number": step,
        "metrics": {"step": float(step), "train_loss": round(1 / step, 6)},
        **fields,
    }


def event(n: int, level: str = "info", message: str = "step done", **fields: Any) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{n:09d}",
        "created_at": CREATED_AT + n,
        "level": level,
        "message": message,
        "type": "message",
        **fields,
    }


def page(items: list[dict[str, Any]], query: Query, newest_first: bool = False) -> Answer:
    """A page of `items` (listed oldest first) as a list endpoint serves it: after, limit."""
    ordered = list(reversed(items)) if newest_first else list(items)
    start = 0
    if "after" in query:
        ids = [item["id"] for item in ordered]
        start = ids.index(query["after"]) + 1 if query["after"] in ids else len(ordered)
    limit = int(query.get("limit", "20"))
    chunk = ordered[start : start + limit]
    return json_answer({"object": "list", "data": chunk, "has_more": start + limit < len(ordered)})


def endless(item: Callable[[int], dict[str, Any]]) -> Route:
    """A list that never ends: every page is full, says has_more, and its last id is new.

    The cursor is the position: `after=<id of item n>` starts at item n + 1 (item n's id must end
    in `-n`).
    """

    def route(query: Query) -> Answer:
        start = int(query["after"].rsplit("-", 1)[1]) + 1 if "after" in query else 0
        limit = int(query.get("limit", "20"))
        data = [item(n) for n in range(start, start + limit)]
        return json_answer({"object": "list", "data": data, "has_more": True})

    return route


def cursor_cycle(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> Route:
    """A listing whose cursors go round: A's page, then B's, then A's again, for ever."""

    def route(query: Query) -> Answer:
        data = second if query.get("after") == first[-1]["id"] else first
        return json_answer({"object": "list", "data": data, "has_more": True})

    return route


@functools.cache
def raw(text: str, status: int = 200, **headers: str) -> Route:
    """A fixed answer whose body is the raw JSON text given, valid or not (integers beyond float
    range, lone surrogates...): what no document built by json.dumps could carry."""
    answer = Answer(status, text.encode(), (("Content-Type", "application/json"), *headers.items()))
    return lambda query: answer


def raw_page(*items: str, has_more: bool = False, **headers: str) -> Route:
    """A fixed list page of raw JSON items."""
    return raw(
        f'{{"object": "list", "data": [{", ".join(items)}], "has_more": {json.dumps(has_more)}}}', **headers
    )


def raw_job(job_id: str, status: str = "running", **fields: Any) -> str:
    return json.dumps(
        {"id": job_id, "object": "fine_tuning.job", "status": status, "created_at": 1, **fields}
    )


def raw_checkpoint(job_id: str, step: int, checkpoint_id: str | None = None, created_at: int = 2) -> str:
    return json.dumps(
        {
            "id": checkpoint_id or f"ftckpt-{job_id}-{step}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": created_at,
            "fine_tuning_job_id": job_id,
            "step_number": step,
            "fine_tuned_model_checkpoint": f"ft:m:{job_id}:ckpt-step-{step}",
            "metrics": {"step": float(step), "train_loss": 0.5},
        }
    )


def gzip_bomb(inflated: int, layers: int) -> bytes:
    """`inflated` zero bytes (a multiple of 1 MiB) gzipped `layers` times: 1 GiB in two layers is
    under 3 KB, in one about 1 MB.

    Built without compressing `inflated` bytes: after a full flush the compressor's state is
    reset, so every further MiB of zeros compresses to the same bytes.
    """
    block = bytes(1 << 20)
    blocks = inflated // len(block)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no name, no time
    trailer = struct.pack("<II", crc, (blocks * len(block)) & 0xFFFFFFFF)
    body = header + first + repeated * (blocks - 1) + compressor.flush() + trailer
    for _ in range(layers - 1):
        body = gzip.compress(body, 9)
    return body


def gzip_bomb_answer(inflated: int, layers: int) -> Route:
    encoding = ", ".join(["gzip"] * layers)
    headers = (("Content-Type", "application/json"), ("Content-Encoding", encoding))
    body = gzip_bomb(inflated, layers)
    return lambda query: Answer(200, body, headers)


@dataclass
class Job:
    document: dict[str, Any]
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    newest_first: bool = True


@dataclass(frozen=True)
class Request:
    endpoint: str  # jobs, job, checkpoints, events
    job_id: str  # "" for the jobs listing
    query: Query


class HostileApi:
    """The jobs, the answers that replace the default routes, and the requests received.

    `answers[(endpoint, job_id)]` (job_id "" for the listing) overrides what the jobs hold.
    """

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.listed: list[str] = []  # the jobs the listing shows (newest first); none by default
        self.answers: dict[tuple[str, str], Route] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()

    def add_job(self, job_id: str, *, listed: bool = False, **document_fields: Any) -> Job:
        job = Job(job_document(job_id, **document_fields))
        with self.lock:
            self.jobs[job_id] = job
            if listed:
                self.listed.insert(0, job_id)
        return job

    def count(self, endpoint: str, job_id: str = "") -> int:
        with self.lock:
            return sum(1 for r in self.requests if (r.endpoint, r.job_id) == (endpoint, job_id))

    def total(self) -> int:
        with self.lock:
            return len(self.requests)

    def listing_walks(self, filtered: bool = False) -> list[list[str | None]]:
        """The `after` cursors of the jobs listing, one list per walk (a walk starts without one);
        the walks with a metadata filter (discovery's, when it has one) or those without."""
        walks: list[list[str | None]] = []
        with self.lock:
            for request in self.requests:
                if request.endpoint != "jobs" or filtered != any(
                    k.startswith("metadata[") for k in request.query
                ):
                    continue
                after = request.query.get("after")
                if after is None or not walks:
                    walks.append([])
                walks[-1].append(after)
        return walks

    def answer(self, method: str, target: str) -> Answer:
        url = urlsplit(target)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if method != "GET" or parts[:3] != ["v1", "fine_tuning", "jobs"] or len(parts) > 5:
            return json_answer({"error": {"message": "no such route"}}, 404)
        job_id = parts[3] if len(parts) > 3 else ""
        endpoint = parts[4] if len(parts) == 5 else ("job" if job_id else "jobs")
        with self.lock:
            self.requests.append(Request(endpoint, job_id, query))
            route = self.answers.get((endpoint, job_id))
            job = self.jobs.get(job_id)
            listed = [self.jobs[j].document for j in self.listed]
        if route is not None:
            return route(query)
        if endpoint == "jobs":
            return page(list(reversed(listed)), query, newest_first=True)
        if job is None or endpoint not in ("job", "checkpoints", "events"):
            return json_answer({"error": {"message": "not found"}}, 404)
        if endpoint == "job":
            return json_answer(job.document)
        items = job.checkpoints if endpoint == "checkpoints" else job.events
        return page(items, query, job.newest_first)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            request_line = self.rfile.readline(65537)
            if not request_line:
                return
            headers: dict[str, str] = {}
            while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            words = request_line.decode("latin-1").split()
            if len(words) != 3:
                return
            answer = self.server.api.answer(words[0], words[1])
            head = [f"HTTP/1.1 {answer.status} {'OK' if answer.status < 400 else 'Error'}"]
            head += [f"{name}: {value}" for name, value in answer.headers]
            head.append(f"Content-Length: {len(answer.body)}")
            try:
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body)
            except OSError:
                return
            if headers.get("connection", "").lower() == "close":
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api: HostileApi) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api = api


class HostileServer:
    """The HostileApi served on a loopback port while the context lasts."""

    def __init__(self, api: HostileApi) -> None:
        self.api = api
        self._server = _Server(api)
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-api", daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
