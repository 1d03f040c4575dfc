"""What can go wrong with a response, and when: the fault language and the schedule that serves it.

    api.inject("ftjob-1", Fault.http(429, {"Retry-After": "2"}), times=3)
    api.inject("ftjob-1", "malformed_json", endpoint="checkpoints")
    api.inject(None, "reset", times=None)        # every request, until api.clear_faults()

A fault applies to the requests of one job (None: any request, the jobs listing included), on one
endpoint (checkpoints, job, events, jobs; None: any), `times` times (None: until cleared). The
request is handled first (it is counted and logged, and a wrong key or an unknown job still answer
401 / 404 without using up the fault); the fault then replaces or alters the answer
(fault_answers.py serves it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

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
class _Rule:
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


class FaultSchedule:
    """The faults still to serve, and a log of those served; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._served: list[ServedFault] = []

    def add(self, job_id: str | None, fault: Fault | str, times: int | None, endpoint: str | None) -> None:
        """Serve `fault` to the next `times` matching requests (None: until cleared)."""
        rule = _Rule(Fault(fault) if isinstance(fault, str) else fault, job_id, endpoint, times)
        with self._lock:
            self._rules.append(rule)

    def clear(self, job_id: str | None = None) -> None:
        """Drop the faults still scheduled (for one job's rules, or all)."""
        with self._lock:
            self._rules = [r for r in self._rules if job_id is not None and r.job_id != job_id]

    def served(self, job_id: str | None = None) -> list[ServedFault]:
        with self._lock:
            return [s for s in self._served if job_id is None or s.job_id == job_id]

    def take(self, endpoint: str, job_id: str) -> Fault | None:
        """The fault the first matching rule serves to this request (using up one of its times)."""
        with self._lock:
            for rule in self._rules:
                if rule.job_id not in (None, job_id) or rule.endpoint not in (None, endpoint):
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                self._served.append(ServedFault(time.time(), endpoint, job_id, rule.fault.kind))
                return rule.fault
        return None
