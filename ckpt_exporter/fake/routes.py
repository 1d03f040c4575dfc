"""The fake API's HTTP face: the paths it serves, the credential check, and one page at a time.

OpenAI's paths under /v1 (or the prefix given); Azure's three address forms: /openai (api-version
required), /openai/v1 and Foundry's /api/projects/<project>/openai/v1 (auth.py says which
credentials each accepts). Every request is counted and logged first, then its credentials are
checked, then the job it names must exist; faults (fault_answers.py) alter the answer after that.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ckpt_exporter.fake.auth import AZURE_BASES, AddressForm, Credentials, address_form
from ckpt_exporter.fake.documents import list_page
from ckpt_exporter.fake.fault_answers import ENDPOINT, fault_middleware, http_error

if TYPE_CHECKING:
    from ckpt_exporter.fake.state import FakeApi


@dataclass(frozen=True)
class RequestRecord:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float


def build_app(api: FakeApi, prefix: str = "/v1") -> web.Application:
    """Serves the OpenAI paths (/v1/... and `prefix`) and Azure's three address forms."""
    routes = _Routes(api)
    app = web.Application(middlewares=[fault_middleware(api.faults, api.checkpoint)])
    custom = [prefix] if address_form(prefix + "/") is AddressForm.OPENAI and prefix != "/v1" else []
    for base in ("/v1", *custom, *AZURE_BASES):
        app.router.add_get(base + "/fine_tuning/jobs", routes.jobs)
        app.router.add_get(base + "/fine_tuning/jobs/{job_id}", routes.job)
        app.router.add_get(base + "/fine_tuning/jobs/{job_id}/checkpoints", routes.checkpoints)
        app.router.add_get(base + "/fine_tuning/jobs/{job_id}/events", routes.events)
    return app


class _Routes:
    def __init__(self, api: FakeApi) -> None:
        self.api = api

    async def _admit(self, request: web.Request, endpoint: str, job_id: str) -> web.Response | None:
        """Simulated latency, then the request log, the credentials and the job's existence."""
        request[ENDPOINT] = endpoint
        if self.api.latency:
            await asyncio.sleep(self.api.latency)
        record = RequestRecord(request.path, dict(request.query), dict(request.headers), time.time())
        self.api.note_request(endpoint, job_id, record)
        credentials = Credentials(self.api.api_key, self.api.token_check, self.api.key_auth)
        if (refused := credentials.refusal(request.path, request.query, request.headers)) is not None:
            return web.json_response(refused.body, status=refused.status)
        if job_id and not self.api.has_job(job_id):
            return http_error(404, f"Could not find fine-tune: {job_id}", "fine_tune_not_found")
        return None

    async def jobs(self, request: web.Request) -> web.Response:
        if (error := await self._admit(request, "jobs", "")) is not None:
            return error
        query = request.query
        wanted = {k[len("metadata[") : -1]: v for k, v in query.items() if k.startswith("metadata[")}
        data, has_more = self.api.jobs_page(wanted, query.get("after"), int(query.get("limit", 20)))
        return web.json_response({"object": "list", "data": data, "has_more": has_more})

    async def job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if (error := await self._admit(request, "job", job_id)) is not None:
            return error
        return web.json_response(self.api.job_document(job_id))

    async def _job_list(self, request: web.Request, endpoint: str, default_limit: int) -> web.Response:
        """A job's checkpoints or events, in the job's order, a page at a time."""
        job_id = request.match_info["job_id"]
        if (error := await self._admit(request, endpoint, job_id)) is not None:
            return error
        items = self.api.listed(job_id, endpoint)
        page = list_page(items, request.query.get("after"), int(request.query.get("limit", default_limit)))
        if endpoint == "events":  # the events list has no first_id / last_id
            page = {"object": "list", "data": page["data"], "has_more": page["has_more"]}
        return web.json_response(page)

    async def events(self, request: web.Request) -> web.Response:
        return await self._job_list(request, "events", 20)

    async def checkpoints(self, request: web.Request) -> web.Response:
        return await self._job_list(request, "checkpoints", 10)
