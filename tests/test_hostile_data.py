"""Data the API makes up or that would be lost (issue 12, point 7), at the level of the parts:
event bursts of any size in both orders, two checkpoints at one step, timestamps of 0 or less,
a redirect, a key that cannot go in a header."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from ckpt_exporter.api import ApiClient
from ckpt_exporter.diff import CheckpointDiff
from ckpt_exporter.events import SEEN_MEMORY, EventFeed
from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.models import ApiError, Checkpoint, FineTuningJob, ListPage
from ckpt_exporter.snapshot import JobSnapshot
from ckpt_exporter.transport import ApiKeyAuth, KeySource
from tests.helpers import parse_samples


class Listed:
    """A list served page by page from memory, in the order given, as the API pages it."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.requests = 0

    async def fetch(self, after: str | None, limit: int) -> ListPage:
        self.requests += 1
        ids = [item["id"] for item in self.items]
        start = ids.index(after) + 1 if after is not None else 0
        return ListPage(data=self.items[start : start + limit], has_more=start + limit < len(self.items))


def event(n: int, level: str = "info") -> dict[str, Any]:
    return {"id": f"ftevent-{n}", "created_at": 1_750_000_000 + n, "level": level, "message": f"e{n}"}


@pytest.mark.parametrize("burst", [1, 99, 100, 101, 150, 250, 1000])
@pytest.mark.parametrize("newest_first", [True, False], ids=["newest-first", "oldest-first"])
async def test_a_burst_of_events_of_any_size_is_counted_once(burst: int, newest_first: bool) -> None:
    history = [event(n) for n in range(30)]
    listed = Listed(history[::-1] if newest_first else history)
    feed = EventFeed("ftjob-a")
    await feed.refresh(listed.fetch)  # the baseline
    new = [event(n, "warn") for n in range(30, 30 + burst)]
    everything = history + new
    listed.items = everything[::-1] if newest_first else everything
    result = await feed.refresh(listed.fetch)
    kept = new[-SEEN_MEMORY:]  # a read keeps only the newest of the new events (the rest are counted)
    assert sorted(e.id for e in result.new) == sorted(e["id"] for e in kept)
    again = await feed.refresh(listed.fetch)
    assert again.new == []
    assert feed.counts == {"info": 0, "warn": burst, "error": 0}


def checkpoint(step: int, checkpoint_id: str, created_at: int) -> dict[str, Any]:
    return {
        "id": checkpoint_id,
        "created_at": created_at,
        "fine_tuning_job_id": "ftjob-a",
        "step_number": step,
        "metrics": {"train_loss": created_at / 1000},
    }


async def test_two_checkpoints_at_one_step_export_the_newest_and_count_the_other_once() -> None:
    listed = Listed([checkpoint(10, "ckpt-old", 100), checkpoint(20, "ckpt-20", 150)])
    diff = CheckpointDiff("ftjob-a")
    first = await diff.refresh(listed.fetch)
    assert first.rejected == []
    listed.items.append(checkpoint(10, "ckpt-new", 200))
    diff.force_full_read()
    second = await diff.refresh(listed.fetch)
    assert [(r.reason, r.detail) for r in second.rejected] == [
        ("duplicate_step", "checkpoint ckpt-old shares step 10 with a newer one, which is exported")
    ]
    assert [(c.step_number, c.id) for c in diff.checkpoints()] == [(10, "ckpt-new"), (20, "ckpt-20")]
    diff.force_full_read()
    third = await diff.refresh(listed.fetch)
    assert third.rejected == []  # counted once, not at every read
    jobs = ExpositionCache()
    jobs.update(JobSnapshot("ftjob-a", diff.checkpoints(), polled=True, up=True))
    train_loss = parse_samples(jobs.body(False).decode(), "openai_fine_tuning_checkpoint_train_loss")
    assert train_loss == {
        ("openai_fine_tuning_checkpoint_train_loss", frozenset({("job_id", "ftjob-a"), ("step", "10")})): 0.2,
        (
            "openai_fine_tuning_checkpoint_train_loss",
            frozenset({("job_id", "ftjob-a"), ("step", "20")}),
        ): 0.15,
    }


@pytest.mark.parametrize("seconds", [0, -1])
def test_timestamps_of_zero_or_less_give_no_sample(seconds: int) -> None:
    job = TypeAdapter(FineTuningJob).validate_python(
        {"id": "ftjob-a", "status": "succeeded", "created_at": 1, "estimated_finish": seconds}
    )
    ckpt = TypeAdapter(Checkpoint).validate_python(checkpoint(10, "ckpt-10", seconds))
    jobs = ExpositionCache()
    jobs.update(JobSnapshot("ftjob-a", (ckpt,), polled=True, up=True, job=job))
    text = jobs.body(False).decode()
    assert parse_samples(text, "openai_fine_tuning_job_estimated_finish_timestamp_seconds") == {}
    assert parse_samples(text, "openai_fine_tuning_checkpoint_created_timestamp_seconds") == {}
    assert parse_samples(text, "openai_fine_tuning_job_status") == {
        ("openai_fine_tuning_job_status", frozenset({("job_id", "ftjob-a"), ("status", "succeeded")})): 1.0
    }


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_a_redirect_is_an_error_not_data(code: int) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            code, json={"object": "list", "data": [], "has_more": False}, headers={"Location": "/elsewhere"}
        )

    http = httpx.AsyncClient(base_url="https://api.test/v1/", transport=httpx.MockTransport(answer))
    client = ApiClient(http, max_retries=0)
    with pytest.raises(ApiError) as caught:
        await client.list_checkpoints("ftjob-a", after=None, limit=20)
    assert (caught.value.reason, str(caught.value)) == (
        f"http_{code}",
        f"HTTP {code}: a redirect, not followed (check api_base_url)",
    )


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_key_with_a_line_break_fails_as_a_counted_reason_without_the_key(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    from ckpt_exporter.transport import make_http_client
    from tests.hostile_api import HostileApi, HostileServer, raw_page

    key = "sk-line-break-SECRET\r\nX-Injected: yes"
    api = HostileApi()
    api.answers[("checkpoints", "ftjob-a")] = raw_page()
    with HostileServer(api) as server, caplog.at_level(logging.DEBUG):
        http = make_http_client(
            server.base_url,
            auth=ApiKeyAuth(KeySource(key)),
            headers={},
            timeout=5,
            max_connections=2,
            transport=transport,
        )
        try:
            with pytest.raises(ApiError) as caught:
                await ApiClient(http, max_retries=0).list_checkpoints("ftjob-a", after=None, limit=20)
        finally:
            await http.aclose()
        assert api.total() == 0
    assert caught.value.reason == "invalid_request"
    assert "SECRET" not in str(caught.value) and "SECRET" not in caplog.text
