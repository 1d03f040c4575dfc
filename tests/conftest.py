from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt_exporter.app import configure_process
from ckpt_exporter.fake import FakeApi, FakeApiServer
from tests.helpers import API_KEY
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
