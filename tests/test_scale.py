"""Discovery, job status, the finished-job economy and sharding, against the fake API on loopback.

The Poller runs in-process with its real ApiClient and httpx client over a real HTTP connection;
`poll_once` waits for everything a tick started, so the request counts are exact.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ckpt_exporter.api import ApiClient
from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.fake import FakeApi, FakeApiServer
from ckpt_exporter.listing import Discovery, Shard
from ckpt_exporter.poller import Poller
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.transport import ApiKeyAuth, KeySource, make_http_client
from tests.helpers import API_KEY, Samples, parse_samples

NOW = int(time.time())
DAY = 86400


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def poller_for(api: FakeApi, **kwargs: Any) -> AsyncIterator[tuple[Poller, ExpositionCache]]:
    with FakeApiServer(api) as server:
        http = make_http_client(
            server.base_url,
            auth=ApiKeyAuth(KeySource(API_KEY)),
            headers={},
            timeout=5,
            max_connections=8,
        )
        jobs = ExpositionCache()
        poller = Poller(ApiClient(http, max_retries=0), jobs, SelfMetrics(), page_size=5, **kwargs)
        try:
            yield poller, jobs
        finally:
            await poller.stop()
            await http.aclose()


def exported(jobs: ExpositionCache, prefix: str = "openai_") -> Samples:
    return parse_samples(jobs.body(False).decode(), prefix)


def job_ids(jobs: ExpositionCache) -> set[str]:
    return {dict(labels)["job_id"] for _, labels in exported(jobs, "ckpt_exporter_job_up")}


def checkpoint_requests(api: FakeApi) -> Callable[[str], int]:
    return lambda job_id: api.count("checkpoints", job_id)


def add_jobs(api: FakeApi, specs: dict[str, dict[str, Any]]) -> None:
    for job_id, spec in specs.items():
        api.add_job(job_id, **spec)
        api.add_checkpoint(job_id, 10, {"train_loss": 0.5, "valid_loss": 0.6})
        api.add_checkpoint(job_id, 20, {"train_loss": 0.4, "valid_loss": 0.55})


async def test_finished_jobs_cost_nothing_after_a_final_full_read() -> None:
    api = FakeApi(api_key=API_KEY)
    add_jobs(
        api,
        {
            "ftjob-run1": {"created_at": NOW - 10},
            "ftjob-run2": {"created_at": NOW - 20},
            "ftjob-done": {"status": "succeeded", "created_at": NOW - 30, "trained_tokens": 12345},
            "ftjob-queued": {"status": "queued", "created_at": NOW - 40},
            "ftjob-paused": {"status": "paused", "created_at": NOW - 50},
        },
    )
    async with poller_for(api) as (poller, jobs):
        poller.set_jobs(api.jobs)
        await poller.poll_once()  # statuses unknown yet: every job is read once
        await poller.poll_once()
        assert poller.ready()
        api.reset_counts()
        for _ in range(5):
            await poller.poll_once()
        counts = {job_id: api.count("checkpoints", job_id) for job_id in api.jobs}
        assert counts == {
            "ftjob-run1": 5,
            "ftjob-run2": 5,
            "ftjob-done": 0,
            "ftjob-queued": 0,
            "ftjob-paused": 0,
        }
        assert api.count("jobs", "") == 5  # one listing page per poll gives every status
        assert sum(api.count("job", j) for j in api.jobs) == 0

        # The finished job keeps its series; statuses, including one outside the enum, are exported.
        samples = exported(jobs)
        status = {dict(k[1])["job_id"]: dict(k[1])["status"] for k in samples if k[0].endswith("job_status")}
        assert status == {
            "ftjob-run1": "running",
            "ftjob-run2": "running",
            "ftjob-done": "succeeded",
            "ftjob-queued": "queued",
            "ftjob-paused": "paused",
        }
        done = frozenset({("job_id", "ftjob-done"), ("step", "20")})
        assert samples[("openai_fine_tuning_checkpoint_train_loss", done)] == 0.4
        assert (
            samples[("openai_fine_tuning_job_trained_tokens", frozenset({("job_id", "ftjob-done")}))] == 12345
        )

        # A running job finishes with a new checkpoint: one final full read, then nothing.
        api.add_checkpoint("ftjob-run1", 30, {"train_loss": 0.3})
        api.update_job("ftjob-run1", status="succeeded", trained_tokens=999)
        api.reset_counts()
        await poller.poll_once()  # reads run1 as running, then its final read once the listing says so
        assert api.count("checkpoints", "ftjob-run1") == 2
        final = frozenset({("job_id", "ftjob-run1"), ("step", "30")})
        assert exported(jobs)[("openai_fine_tuning_checkpoint_train_loss", final)] == 0.3
        api.reset_counts()
        for _ in range(3):
            await poller.poll_once()
        assert api.count("checkpoints", "ftjob-run1") == 0
        assert api.count("checkpoints", "ftjob-run2") == 3

        # The queued job starts: its checkpoints are read from then on.
        api.update_job("ftjob-queued", status="running")
        api.reset_counts()
        await poller.poll_once()
        await poller.poll_once()
        assert api.count("checkpoints", "ftjob-queued") == 1  # the listing saw it running in poll 1


async def test_a_single_configured_job_reads_its_own_status_and_404_backs_off() -> None:
    api = FakeApi(api_key=API_KEY)
    add_jobs(api, {"ftjob-only": {}})
    clock = Clock()
    async with poller_for(api, clock=clock, poll_interval=60) as (poller, jobs):
        poller.set_jobs(["ftjob-only", "ftjob-gone"])
        await poller.poll_once()
        up = exported(jobs, "ckpt_exporter_job_up")
        assert up == {
            ("ckpt_exporter_job_up", frozenset({("job_id", "ftjob-only")})): 1.0,
            ("ckpt_exporter_job_up", frozenset({("job_id", "ftjob-gone")})): 0.0,
        }
        errors = exported(jobs, "ckpt_exporter_api_errors_total")
        assert (
            errors[
                (
                    "ckpt_exporter_api_errors_total",
                    frozenset({("job_id", "ftjob-gone"), ("reason", "http_404")}),
                )
            ]
            >= 1
        )
        api.reset_counts()
        for _ in range(3):  # within the 60 s backoff: no request for the missing job
            clock.now += 10
            await poller.poll_once()
        assert api.count("checkpoints", "ftjob-gone") + api.count("job", "ftjob-gone") == 0
        assert api.count("checkpoints", "ftjob-only") == 3
        clock.now += 40  # past the backoff
        await poller.poll_once()
        assert api.count("checkpoints", "ftjob-gone") == 1


async def test_discovery_filters_and_new_jobs_at_the_next_listing() -> None:
    api = FakeApi(api_key=API_KEY)
    add_jobs(
        api,
        {
            "ftjob-match": {"created_at": NOW - DAY, "metadata": {"team": "ml"}, "suffix": "prod-a"},
            "ftjob-old": {"created_at": NOW - 40 * DAY, "metadata": {"team": "ml"}, "suffix": "prod-b"},
            "ftjob-otherteam": {"created_at": NOW - DAY, "metadata": {"team": "web"}, "suffix": "prod-c"},
            "ftjob-othersuffix": {"created_at": NOW - DAY, "metadata": {"team": "ml"}, "suffix": "test"},
            "ftjob-othermodel": {
                "created_at": NOW - DAY,
                "metadata": {"team": "ml"},
                "suffix": "prod-d",
                "model": "gpt-3.5-turbo-0125",
            },
            "ftjob-failed": {
                "created_at": NOW - DAY,
                "metadata": {"team": "ml"},
                "suffix": "p",
                "status": "failed",
            },
            "ftjob-pinned": {"created_at": NOW - 90 * DAY},  # configured: always watched
        },
    )
    discovery = Discovery(
        interval=300,
        statuses=frozenset({"running", "succeeded"}),
        max_age_seconds=30 * DAY,
        metadata={"team": "ml"},
        model_pattern="gpt-4o-mini*",
        suffix_pattern="prod-*",
    )
    clock = Clock()
    async with poller_for(api, discovery=discovery, clock=clock) as (poller, jobs):
        poller.set_jobs(["ftjob-pinned"])
        assert not poller.ready()
        await poller.poll_once()
        assert poller.ready()
        assert job_ids(jobs) == {"ftjob-match", "ftjob-pinned"}
        listing = [r for r in api.requests if r.path.endswith("/fine_tuning/jobs")]
        assert listing[0].query["metadata[team]"] == "ml"

        api.add_job("ftjob-new", created_at=NOW, metadata={"team": "ml"}, suffix="prod-new")
        api.add_checkpoint("ftjob-new", 5, {"train_loss": 1.5})
        clock.now += 60
        await poller.poll_once()
        assert job_ids(jobs) == {"ftjob-match", "ftjob-pinned"}  # the listing interval has not passed
        clock.now += 300
        await poller.poll_once()
        assert job_ids(jobs) == {"ftjob-match", "ftjob-pinned", "ftjob-new"}
        new = frozenset({("job_id", "ftjob-new"), ("step", "5")})
        assert exported(jobs)[("openai_fine_tuning_checkpoint_train_loss", new)] == 1.5

        # A job that leaves the filters loses its series at the next listing.
        api.update_job("ftjob-match", metadata={"team": "web"})
        clock.now += 300
        await poller.poll_once()
        assert job_ids(jobs) == {"ftjob-pinned", "ftjob-new"}


@pytest.mark.parametrize("total", [2, 3])
async def test_shards_together_export_exactly_what_one_replica_exports(total: int) -> None:
    api = FakeApi(api_key=API_KEY)
    add_jobs(api, {f"ftjob-{n:03d}": {"created_at": NOW - n} for n in range(40)})
    discovery = Discovery(max_age_seconds=None)

    async def export(shard: Shard) -> Samples:
        async with poller_for(api, discovery=discovery, shard=shard) as (poller, jobs):
            poller.set_jobs(["ftjob-000", "ftjob-001", "ftjob-002"])
            await poller.poll_once()
            await poller.poll_once()
            return exported(jobs)

    whole = await export(Shard())
    parts = [await export(Shard(index, total)) for index in range(total)]
    assert all(parts)  # every shard has some of the 40 jobs
    union: Samples = {}
    for part in parts:
        assert not set(part) & set(union)  # disjoint
        union.update(part)
    assert union == whole
    assert len(whole) > 40 * 5


async def test_a_job_that_finished_before_its_first_read_costs_one_read() -> None:
    api = FakeApi(api_key=API_KEY)
    # finished_at defaults to created_at + 60 s for a job added as finished: long before our read.
    add_jobs(api, {"ftjob-old-done": {"status": "succeeded", "created_at": NOW - 10 * DAY}, "ftjob-run": {}})
    async with poller_for(api) as (poller, jobs):
        poller.set_jobs(api.jobs)
        for _ in range(4):
            await poller.poll_once()
        assert api.count("checkpoints", "ftjob-old-done") == 1
        assert api.count("checkpoints", "ftjob-run") == 4
        done = frozenset({("job_id", "ftjob-old-done"), ("step", "20")})
        assert exported(jobs)[("openai_fine_tuning_checkpoint_train_loss", done)] == 0.4
