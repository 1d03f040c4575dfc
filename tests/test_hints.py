"""Hints on the real process: when every job of an account answers 404 from its base URL, one line
says to check api_base_url; a single missing job among found ones gets no such line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer
from tests.helpers import API_KEY, DrainedExporterProcess, wait_for

pytestmark = pytest.mark.integration

HINT = "answer 404 (not found) from"


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    api = FakeApi(api_key=API_KEY)
    for job_id in ("ftjob-one", "ftjob-two"):
        api.add_job(job_id)
        api.add_checkpoint(job_id, 10, {"train_loss": 1.5})
    with FakeApiServer(api, prefix="/v1") as server:
        yield server


def exporter_at(base_url: str, jobs: str) -> DrainedExporterProcess:
    return DrainedExporterProcess(
        {
            "CKPT_EXPORTER_API_BASE_URL": base_url,
            "CKPT_EXPORTER_API_KEY": API_KEY,
            "CKPT_EXPORTER_JOBS": jobs,
            "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.5",
        }
    )


def test_every_job_answering_404_says_check_api_base_url_once(server: FakeApiServer) -> None:
    base = server.base_url.removesuffix("/v1")  # the newcomer's mistake: the path left out
    exporter = exporter_at(base, "ftjob-one,ftjob-two")
    try:
        exporter.wait_ready()
        # Each job tried at least three times (0.5 s, then 1 s, then 2 s apart): the hint stays one line.
        assert wait_for(lambda: exporter.output_so_far().count("not found (HTTP 404)") >= 6, 15)
    finally:
        output = exporter.stop()
    hints = [line.split(" ", 2)[2] for line in output.splitlines() if HINT in line]
    assert hints == [
        f"WARNING ckpt_exporter.poller: account default: all 2 watched job(s) answer 404 (not found) from "
        f"{base}: check api_base_url; a base URL without its path (OpenAI's is https://api.openai.com/v1, "
        "Azure's https://RESOURCE.openai.azure.com/openai) makes every job look missing"
    ]


def test_one_missing_job_among_found_ones_gets_no_hint(server: FakeApiServer) -> None:
    exporter = exporter_at(server.base_url, "ftjob-one,ftjob-gone")
    try:
        exporter.wait_ready()
        assert wait_for(
            lambda: exporter.output_so_far().count("job ftjob-gone: not found (HTTP 404)") >= 3, 15
        )
    finally:
        output = exporter.stop()
    assert HINT not in output
    assert "job ftjob-one: 1 checkpoint(s) at first read" in output
