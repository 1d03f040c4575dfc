"""How each fault is served: an aiohttp middleware that alters or replaces the fake's answer.

The contract with the routes: a handler names the endpoint it serves in `request[ENDPOINT]`
(checkpoints, job, events, jobs) and the job in its `job_id` match; requests that name no endpoint
(a benchmark's control routes, say) are never faulted. The `repeated_cursor` fault looks the
client's cursor up through the `CheckpointLookup` it is given.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ckpt_exporter.fake.documents import error_body
from ckpt_exporter.fake.faults import ITEM_FAULTS, Fault, FaultSchedule

ENDPOINT = web.RequestKey("ckpt_exporter.fake.endpoint", str)

CheckpointLookup = Callable[[str, str], dict[str, Any] | None]  # (job_id, checkpoint_id)


def fault_middleware(schedule: FaultSchedule, checkpoint: CheckpointLookup) -> Middleware:
    """The middleware that serves `schedule`'s faults to the requests they match."""

    @web.middleware
    async def serve_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        endpoint = request.get(ENDPOINT)
        if response.status >= 400 or not isinstance(response, web.Response) or endpoint is None:
            return response
        job_id = request.match_info.get("job_id", "")
        fault = schedule.take(endpoint, job_id)
        if fault is None:
            return response
        if fault.kind in ITEM_FAULTS or fault.kind in ("huge_page", "repeated_cursor", "empty_page_more"):
            assert isinstance(response.body, bytes)
            cursor = request.query.get("after")
            known = checkpoint(job_id, cursor) if cursor is not None else None
            page = faulty_page(fault, json.loads(response.body), job_id, known)
            return web.json_response(page)  # json.dumps writes NaN and Infinity as those literals
        return await faulty_answer(request, response, fault)

    return serve_faults


def http_error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(error_body(message, code), status=status)


async def faulty_answer(request: web.Request, response: web.Response, fault: Fault) -> web.StreamResponse:
    """The answer for a fault of the response itself (status, connection, body, headers)."""
    kind = fault.kind
    if kind == "http":
        error = http_error(fault.status, f"Simulated fault: HTTP {fault.status}", f"fault_{fault.status}")
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
        return await _truncated(request, response)
    if kind == "malformed_json":
        cut_short = b'{"object": "list", "data": [{"id": "ftckpt_'
        return web.Response(body=cut_short, content_type="application/json")
    if kind == "echo_auth":
        headers = request.headers
        seen = f"Authorization: {headers.get('Authorization')}, api-key: {headers.get('api-key')}"
        return http_error(400, f"Could not parse the request (headers: {seen})", "invalid_request")
    assert kind == "headers", kind
    response.headers.update(dict(fault.headers))
    return response


async def _truncated(request: web.Request, response: web.Response) -> web.StreamResponse:
    body = response.body if isinstance(response.body, bytes) else b"{}"
    truncated = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    truncated.content_length = len(body) + 1000
    await truncated.prepare(request)
    await truncated.write(body[: len(body) // 2])
    _drop_connection(request, reset=False)
    return truncated


def faulty_page(
    fault: Fault, page: dict[str, Any], job_id: str, cursor_item: dict[str, Any] | None
) -> dict[str, Any]:
    """The page as the fault alters it; `cursor_item` is the checkpoint the client's cursor names."""
    data: list[Any] = list(page.get("data", []))
    if fault.kind in ITEM_FAULTS:
        data.insert(0, bad_checkpoint(fault.kind, job_id))
    elif fault.kind == "huge_page":
        data = [_checkpoint_like(job_id, n, f"ftckpt_huge{n:06d}") for n in range(1, fault.items + 1)]
        page["has_more"] = False
    elif fault.kind == "repeated_cursor":
        if cursor_item is not None:
            data.append(dict(cursor_item))  # the page ends with the cursor already used
        page["has_more"] = True
    elif fault.kind == "empty_page_more":
        data, page["has_more"] = [], True
    page["data"] = data
    if "first_id" in page:
        page["first_id"] = data[0].get("id") if data and isinstance(data[0], dict) else None
        page["last_id"] = data[-1].get("id") if data and isinstance(data[-1], dict) else None
    return page


def bad_checkpoint(kind: str, job_id: str) -> dict[str, Any]:
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
