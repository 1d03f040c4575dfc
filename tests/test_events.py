"""Live training metrics from job events; the Azure flavor; several accounts in one exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest

from ckpt_exporter.app import build_account
from ckpt_exporter.diff import Order
from ckpt_exporter.events import EventFeed
from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.fake import FakeApi, FakeApiServer
from ckpt_exporter.models import ListPage
from ckpt_exporter.poller import Poller
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.settings import AccountSettings, Settings
from tests.helpers import Samples, parse_samples

KEY = "sk-events-test-SECRET"
T0 = 1_750_000_000


def metrics_event(step: int, **data: Any) -> dict[str, Any]:
    return {"step": step, "total_steps": 1000, **data}


def feed_api(newest_first: bool) -> FakeApi:
    api = FakeApi(api_key=KEY, newest_first=newest_first)
    api.add_job("ftjob-live")
    api.add_event("ftjob-live", "Fine-tuning job started", created_at=T0)
    for step in range(1, 8):
        api.add_event(
            "ftjob-live",
            f"Step {step}/1000",
            data=metrics_event(step, train_loss=2.0 - step / 10, valid_loss=2.1 - step / 10),
            created_at=T0 + step,
        )
    return api


async def fetch_from(api: FakeApi, job_id: str, after: str | None, limit: int) -> ListPage:
    job = api.jobs[job_id]
    items = list(reversed(job.events)) if job.newest_first else list(job.events)
    ids = [e["id"] for e in items]
    start = ids.index(after) + 1 if after in ids else (0 if after is None else len(ids))
    api.request_counts[("events", job_id)] += 1
    return ListPage(data=items[start : start + limit], has_more=start + limit < len(items))


@pytest.mark.parametrize("newest_first", [True, False])
async def test_event_feed_reads_only_what_is_new(newest_first: bool) -> None:
    api = feed_api(newest_first)
    feed = EventFeed("ftjob-live", page_size=3)

    async def fetch(after: str | None, limit: int) -> ListPage:
        return await fetch_from(api, "ftjob-live", after, limit)

    first = await feed.refresh(fetch)
    assert feed.order is (Order.NEWEST_FIRST if newest_first else Order.OLDEST_FIRST)
    # Newest first: the top page is enough. Oldest first: the 8 events take 3 pages of 3.
    assert first.requests == (1 if newest_first else 3)
    assert feed.latest_metrics is not None and feed.latest_metrics.step == 7
    assert (feed.latest_metrics.train_loss, feed.latest_metrics.valid_loss) == (2.0 - 0.7, 2.1 - 0.7)
    assert feed.counts == {"info": 0, "warn": 0, "error": 0}  # the first read is the baseline

    for _ in range(3):
        steady = await feed.refresh(fetch)
        assert (steady.requests, steady.new) == (1, [])

    # Two new metrics events (one missing valid_loss) and a warning.
    api.add_event("ftjob-live", "Step 8/1000", data=metrics_event(8, train_loss=1.15), created_at=T0 + 8)
    api.add_event("ftjob-live", "High loss", level="warn", created_at=T0 + 9)
    api.add_event("ftjob-live", "Step 9/1000", data=metrics_event(9, train_loss=1.1), created_at=T0 + 10)
    result = await feed.refresh(fetch)
    assert result.requests == (2 if newest_first else 1)  # 3 new at page size 3: +1 to see a known one
    assert [e.message for e in sorted(result.new, key=lambda e: e.created_at)] == [
        "Step 8/1000",
        "High loss",
        "Step 9/1000",
    ]
    latest = feed.latest_metrics
    assert latest is not None
    assert (latest.step, latest.train_loss, latest.valid_loss, latest.total_steps) == (9, 1.1, None, 1000)
    assert feed.counts == {"info": 2, "warn": 1, "error": 0}


async def test_invalid_metrics_events_are_rejected_not_exported() -> None:
    api = FakeApi(api_key=KEY)
    api.add_job("ftjob-x")
    api.add_event("ftjob-x", "ok", data=metrics_event(1, train_loss=1.0), created_at=T0)
    api.add_event("ftjob-x", "bad", data=metrics_event(2, train_loss="0.5"), created_at=T0 + 1)
    feed = EventFeed("ftjob-x")

    async def fetch(after: str | None, limit: int) -> ListPage:
        return await fetch_from(api, "ftjob-x", after, limit)

    result = await feed.refresh(fetch)
    assert [r.reason for r in result.rejected] == ["invalid_event"]
    assert feed.latest_metrics is not None and (feed.latest_metrics.step, feed.latest_metrics.train_loss) == (
        1,
        1.0,
    )


def exported(jobs: ExpositionCache, prefix: str) -> Samples:
    return parse_samples(jobs.body(False).decode(), prefix)


def one(job_id: str, **labels: str) -> frozenset[tuple[str, str]]:
    return frozenset({("job_id", job_id), *labels.items()})


@asynccontextmanager
async def accounts(
    *pairs: tuple[AccountSettings, FakeApi],
) -> AsyncIterator[tuple[list[Poller], ExpositionCache]]:
    """Real accounts (their own HTTP clients, keys and flavors) over loopback fake APIs."""
    settings = Settings(page_size=5, max_retries=0, poll_interval_seconds=1)
    jobs = ExpositionCache()
    metrics = SelfMetrics()
    async with AsyncExitStack() as stack:
        built = []
        for account, api in pairs:
            prefix = urlsplit(account.api_base_url).path  # the fake serves it on loopback
            server = stack.enter_context(FakeApiServer(api, prefix=prefix))
            account = account.model_copy(update={"api_base_url": server.base_url})
            runtime = build_account(account, settings, jobs, metrics)
            stack.push_async_callback(runtime.http.aclose)
            stack.push_async_callback(runtime.poller.stop)
            built.append(runtime.poller)
        yield built, jobs


def account(name: str, jobs: list[str], **fields: Any) -> AccountSettings:
    prefix = fields.pop("prefix", "/v1")
    return AccountSettings(name=name, api_key=KEY, jobs=jobs, api_base_url=f"http://fake{prefix}", **fields)


async def test_live_gauges_follow_events_and_finished_jobs_cost_no_events_requests() -> None:
    api = feed_api(newest_first=True)
    api.add_job("ftjob-done", status="succeeded")
    api.add_event("ftjob-done", "done", data=metrics_event(5, train_loss=0.9), created_at=T0)
    api.add_job("ftjob-queued", status="queued")
    async with accounts((account("default", ["ftjob-live", "ftjob-done", "ftjob-queued"]), api)) as (
        (poller,),
        jobs,
    ):
        await poller.poll_once()  # statuses are read in this poll; events from the next
        await poller.poll_once()
        live = exported(jobs, "openai_fine_tuning_job_")
        assert live[("openai_fine_tuning_job_train_loss", one("ftjob-live"))] == pytest.approx(1.3, abs=0)
        assert live[("openai_fine_tuning_job_step", one("ftjob-live"))] == 7.0
        assert live[("openai_fine_tuning_job_total_steps", one("ftjob-live"))] == 1000.0
        assert ("openai_fine_tuning_job_train_loss", one("ftjob-done")) not in live
        assert live[("openai_fine_tuning_job_events_total", one("ftjob-live", level="warn"))] == 0.0

        api.reset_counts()
        api.add_event("ftjob-live", "Step 8", data=metrics_event(8, train_loss=1.25), created_at=T0 + 20)
        api.add_event("ftjob-live", "Out of memory, retrying", level="error", created_at=T0 + 21)
        await poller.poll_once()  # within one poll
        live = exported(jobs, "openai_fine_tuning_job_")
        assert live[("openai_fine_tuning_job_train_loss", one("ftjob-live"))] == 1.25
        assert live[("openai_fine_tuning_job_step", one("ftjob-live"))] == 8.0
        assert ("openai_fine_tuning_job_valid_loss", one("ftjob-live")) not in live  # absent in event 8
        assert live[("openai_fine_tuning_job_events_total", one("ftjob-live", level="error"))] == 1.0
        assert live[("openai_fine_tuning_job_events_total", one("ftjob-live", level="info"))] == 1.0
        for _ in range(2):
            await poller.poll_once()
        assert api.count("events", "ftjob-live") == 3  # one per poll
        assert api.count("events", "ftjob-done") == 0
        assert api.count("events", "ftjob-queued") == 0
        assert api.count("checkpoints", "ftjob-live") == 3


async def test_azure_and_openai_flavors_export_the_same_samples() -> None:
    def populated() -> FakeApi:
        api = feed_api(newest_first=False)  # Azure's example lists oldest first
        for step in (100, 200):
            api.add_checkpoint("ftjob-live", step, {"train_loss": 1 / step, "full_valid_loss": 2 / step})
        return api

    openai_api, azure_api, azure_v1_api = populated(), populated(), populated()
    results = []
    for acct, api in (
        (account("default", ["ftjob-live"], organization="org-1", project="proj-1"), openai_api),
        (account("default", ["ftjob-live"], api_flavor="azure", prefix="/openai"), azure_api),
        (account("default", ["ftjob-live"], api_flavor="azure", prefix="/openai/v1"), azure_v1_api),
    ):
        async with accounts((acct, api)) as ((poller,), jobs):
            await poller.poll_once()
            await poller.poll_once()
            results.append(exported(jobs, "openai_fine_tuning_"))
    assert results[0] == results[1] == results[2]
    assert ("openai_fine_tuning_job_train_loss", one("ftjob-live")) in results[0]

    def headers(request: Any) -> dict[str, str]:  # HTTP header names are case-insensitive
        return {name.lower(): value for name, value in request.headers.items()}

    openai_request = openai_api.requests[0]
    assert openai_request.path.startswith("/v1/fine_tuning/jobs")
    sent = headers(openai_request)
    assert (sent["authorization"], sent["openai-organization"], sent["openai-project"]) == (
        f"Bearer {KEY}",
        "org-1",
        "proj-1",
    )
    assert "api-key" not in sent and "api-version" not in openai_request.query
    for request in azure_api.requests:
        assert request.path.startswith("/openai/fine_tuning/jobs")
        assert headers(request)["api-key"] == KEY and "authorization" not in headers(request)
        assert request.query["api-version"] == "2024-10-21"
    for request in azure_v1_api.requests:
        assert request.path.startswith("/openai/v1/fine_tuning/jobs")
        assert headers(request)["api-key"] == KEY and "api-version" not in request.query


async def test_several_accounts_each_with_its_key_jobs_and_discovery() -> None:
    research, product, azure = (
        FakeApi(api_key="sk-research"),
        FakeApi(api_key="sk-product"),
        FakeApi(api_key="az"),
    )
    for api, job_id in ((research, "ftjob-r1"), (product, "ftjob-p1"), (azure, "ftjob-a1")):
        api.add_job(job_id, model="gpt-4o-mini-2024-07-18", suffix=job_id[-2:])
        api.add_checkpoint(job_id, 10, {"train_loss": 0.5})
    async with accounts(
        (
            AccountSettings(
                name="research", api_key="sk-research", jobs=["ftjob-r1"], api_base_url="http://fake/v1"
            ),
            research,
        ),
        (
            AccountSettings(
                name="product", api_key="sk-product", discover=True, api_base_url="http://fake/v1"
            ),
            product,
        ),
        (
            AccountSettings(
                name="azure-east",
                api_key="az",
                jobs=["ftjob-a1"],
                api_flavor="azure",
                api_base_url="http://fake/openai",
            ),
            azure,
        ),
    ) as (pollers, jobs):
        for poller in pollers:
            await poller.poll_once()
        info = exported(jobs, "openai_fine_tuning_job_info")
        assert {dict(labels)["job_id"]: dict(labels)["account"] for _, labels in info} == {
            "ftjob-r1": "research",
            "ftjob-p1": "product",
            "ftjob-a1": "azure-east",
        }
        up = exported(jobs, "ckpt_exporter_job_up")
        assert set(up.values()) == {1.0} and len(up) == 3
        # The account is on the info metric only, not on every series.
        assert all(
            "account" not in dict(labels) for name, labels in exported(jobs, "openai_fine_tuning_checkpoint_")
        )
        assert (
            research.count("checkpoints", "ftjob-p1") == 0 and product.count("checkpoints", "ftjob-p1") == 1
        )


def test_settings_accounts_and_azure_validation() -> None:
    from ckpt_exporter.settings import SettingsError, load_settings

    needs_resource = r"^invalid setting accounts\[0\]: api_base_url: the azure flavor needs"
    with pytest.raises(SettingsError, match=needs_resource):
        load_settings({"accounts": [{"name": "a", "api_flavor": "azure", "api_key": "k", "jobs": ["j"]}]})
    settings = load_settings(
        {
            "accounts": [
                {"name": "a", "api_key": "k", "jobs": ["ftjob-1"]},
                {"name": "b", "api_key": "k", "jobs": ["ftjob-1"]},
            ]
        }
    )
    with pytest.raises(SettingsError, match="ftjob-1 is listed in two accounts"):
        settings.require_api_key()
    azure = AccountSettings(name="x", api_flavor="azure", api_base_url="https://r.openai.azure.com/openai")
    assert azure.api_version == "2024-10-21"
    v1 = AccountSettings(name="x", api_flavor="azure", api_base_url="https://r.openai.azure.com/openai/v1")
    assert v1.api_version is None
