from __future__ import annotations

from collections.abc import Iterator

import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer

API_KEY = "sk-test-0123456789abcdefSECRET"


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, FakeApiServer]]:
    api = FakeApi(api_key=API_KEY)
    with FakeApiServer(api) as server:
        yield api, server
