"""A hostile API of the tests' own: a real HTTP server on loopback that answers each path with
whatever bytes, status and headers a test sets, including what no real API would send (integers
beyond float range, lone surrogates, redirects, another job's document).

Unlike the fake API of the package, nothing here is valid by construction: a test writes the raw
JSON text itself.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def page(*items: str, has_more: bool = False) -> Answer:
    """A list page whose items are raw JSON texts."""
    text = '{"object": "list", "data": [' + ", ".join(items) + "], " + f'"has_more": {json.dumps(has_more)}}}'
    return Answer(body=text.encode())


def document(raw: str, status: int = 200, **headers: str) -> Answer:
    return Answer(status, raw.encode(), headers)


def job(job_id: str, status: str = "running", **fields: Any) -> str:
    return json.dumps(
        {"id": job_id, "object": "fine_tuning.job", "status": status, "created_at": 1, **fields}
    )


def checkpoint(job_id: str, step: int, checkpoint_id: str | None = None, created_at: int = 2) -> str:
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


class HostileApi:
    """Answers GET /v1/<path> from `routes` (path without /v1/ and query: Answer); 404 otherwise.

    `requests` counts the requests per path, as they arrive.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Answer] = {}
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path.removeprefix("/v1/")
                with api._lock:
                    api.requests[path] += 1
                    answer = api.routes.get(path, Answer(404, b'{"error": {"message": "no such path"}}'))
                self.send_response(answer.status)
                for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-api", daemon=True)

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def __enter__(self) -> HostileApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
