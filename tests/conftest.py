from __future__ import annotations

from collections.abc import Iterator

import pytest

from ckpt_exporter.app import configure_process
from ckpt_exporter.fake import FakeApi, FakeApiServer
from tests.helpers import API_KEY

# In-process tests build the exporter's parts as the process does after its start-up.
configure_process()


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, FakeApiServer]]:
    api = FakeApi(api_key=API_KEY)
    with FakeApiServer(api) as server:
        yield api, server
