"""The fake API serves what the real one does: its documents validate against OpenAI's OpenAPI spec.

tests/data/openai-fine-tuning-openapi.json is the fine-tuning part of OpenAI's published OpenAPI
document, unchanged.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from ckpt_exporter.fake import FakeApi, FakeApiServer, Fault, SimulatedTraining
from tests.helpers import REPO, wait_for

SPEC = json.loads((REPO / "tests" / "data" / "openai-fine-tuning-openapi.json").read_text())


def validator(schema_name: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema_name}", "components": SPEC["components"]}
    )


def get(server: FakeApiServer, path: str, key: str | None = "sk-k", **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.base_url + path, params=params, headers=headers, timeout=5)


@pytest.mark.parametrize("newest_first", [True, False])
def test_checkpoint_pages_validate_and_paginate(newest_first: bool) -> None:
    api = FakeApi(api_key="sk-k", newest_first=newest_first)
    api.add_job("ftjob-1")
    for step in (10, 20, 30):
        api.add_checkpoint("ftjob-1", step, {"train_loss": 1.0 / step, "full_valid_loss": 2.0 / step})
    with FakeApiServer(api) as server:
        first = get(server, "/fine_tuning/jobs/ftjob-1/checkpoints", limit=2).json()
        second = get(server, "/fine_tuning/jobs/ftjob-1/checkpoints", limit=2, after=first["last_id"]).json()
        for page in (first, second):
            validator("ListFineTuningJobCheckpointsResponse").validate(page)
        steps = [c["step_number"] for c in first["data"] + second["data"]]
        assert steps == ([30, 20, 10] if newest_first else [10, 20, 30])
        assert (first["has_more"], second["has_more"]) == (True, False)
        assert get(server, "/fine_tuning/jobs/ftjob-1/checkpoints", key="wrong").status_code == 401
        missing = get(server, "/fine_tuning/jobs/ftjob-nope/checkpoints")
        assert missing.status_code == 404
        assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


def test_demo_training_documents_validate() -> None:
    api = FakeApi(api_key="sk-k")
    training = SimulatedTraining(api, jobs=2)
    for _ in range(10):
        training.advance("ftjob-demo1")
    assert len(api.jobs["ftjob-demo1"].checkpoints) == SimulatedTraining.KEEP
    with FakeApiServer(api) as server:
        for job_id in training.job_ids:
            page = get(server, f"/fine_tuning/jobs/{job_id}/checkpoints", limit=100).json()
            validator("ListFineTuningJobCheckpointsResponse").validate(page)


def test_stop_does_not_wait_for_a_connection_that_is_still_open() -> None:
    """A client that keeps its connection open (here: a request the fake holds) must not hold up
    stop(): aiohttp's graceful shutdown would wait 60 s for it, past stop()'s own 10 s."""
    api = FakeApi()
    api.inject(None, Fault.hang(30), endpoint="jobs")
    server = FakeApiServer(api).start()
    with socket.create_connection((server.host, server.port)) as client:
        client.sendall(b"GET /v1/fine_tuning/jobs HTTP/1.1\r\nHost: fake\r\n\r\n")
        assert wait_for(lambda: bool(api.served()), timeout=10)  # the fake holds the request
        server.stop()  # raised TimeoutError after 10 s before the fake's shutdown_timeout
        assert not server.running
        assert client.recv(1024) == b""  # the fake closed the connection, answered nothing
