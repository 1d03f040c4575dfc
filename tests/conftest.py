from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt_exporter.app import configure_process
from ckpt_exporter.fake import FakeApi, FakeApiServer
from ckpt_exporter.fake.identity import FakeIdentity, FakeIdentityServer
from tests.helpers import API_KEY, FOUNDRY_PROJECT, KEYLESS_JOBS
from tests.webhelpers import Served

# In-process tests build the exporter's parts as the process does after its start-up.
configure_process()


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, FakeApiServer]]:
    api = FakeApi(api_key=API_KEY)
    with FakeApiServer(api) as server:
        yield api, server


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Served]]:
    """`serve(web config text or None, ready=..., listen=..., max_connections=...)`: a started
    MetricsServer on loopback, stopped after the test."""
    started: list[Served] = []

    class Started(Served):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(tmp_path, *args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Started
    for served in started:
        served.server.stop()


@pytest.fixture
def identity() -> Iterator[tuple[FakeIdentity, FakeIdentityServer]]:
    fake = FakeIdentity(lifetime=20.0, client_ids=frozenset({"uami-client-id"}))
    with FakeIdentityServer(fake) as server:
        yield fake, server


@pytest.fixture
def foundry(identity: tuple[FakeIdentity, FakeIdentityServer]) -> Iterator[tuple[FakeApi, FakeApiServer]]:
    api = FakeApi(token_check=identity[0].token_checker())
    for job_id in KEYLESS_JOBS:
        api.add_job(job_id, newest_first=False)  # Azure lists the oldest first
    with FakeApiServer(api, prefix=FOUNDRY_PROJECT) as server:
        yield api, server
