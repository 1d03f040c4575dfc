"""Who goes first: the request slots (urgent first) and the poller's turns (bounded polls)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from ckpt_exporter.api import ApiClient
from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.poller import Poller
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.slots import PrioritySlots
from ckpt_exporter.turns import Turns
from tests.helpers import free_port


async def _hold(slots: PrioritySlots, name: str, order: list[str], *, urgent: bool = False) -> None:
    async with slots.hold(urgent=urgent):
        order.append(name)
        await asyncio.sleep(0)


async def test_urgent_waiters_go_first_then_arrival_order() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    async with slots.hold():
        tasks = [asyncio.create_task(_hold(slots, f"job-{i}", order)) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(_hold(slots, "listing", order, urgent=True)))
        await asyncio.sleep(0)
        assert order == []
    await asyncio.gather(*tasks)
    assert order == ["listing", "job-0", "job-1", "job-2"]
    assert slots.free == 1


async def test_a_cancelled_waiter_gives_back_its_place_and_a_handed_over_slot() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    async with slots.hold():
        queued = asyncio.create_task(_hold(slots, "cancelled in the queue", order))
        handed = asyncio.create_task(_hold(slots, "cancelled after the hand-over", order))
        last = asyncio.create_task(_hold(slots, "last", order))
        await asyncio.sleep(0)
        queued.cancel()
        await asyncio.sleep(0)
    # The slot is now handed to `handed`, which is cancelled before it runs: it must pass it on.
    handed.cancel()
    await asyncio.wait_for(asyncio.gather(queued, handed, last, return_exceptions=True), 5)
    assert order == ["last"]
    assert slots.free == 1


@dataclass(frozen=True)
class Job:
    job_id: str


def watched(ids: list[str]) -> dict[str, Job]:
    return {job_id: Job(job_id) for job_id in ids}


async def test_at_most_max_active_polls_run_at_once_and_every_job_gets_its_turn() -> None:
    jobs = watched([f"ftjob-{i}" for i in range(10)])
    active, peak, polled = 0, 0, []

    async def poll(job: Job) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        polled.append(job.job_id)
        active -= 1

    turns = Turns(3, poll, jobs.get)
    tasks = turns.queue(list(jobs.values()))
    assert len(tasks) == 1
    assert all(turns.busy(job_id) for job_id in jobs)  # queued jobs are busy: not queued twice
    await asyncio.gather(*tasks)
    assert peak == 3
    assert sorted(polled) == sorted(jobs)
    assert (turns.tasks(), turns.free) == ([], 3)
    assert not any(turns.busy(job_id) for job_id in jobs)


async def test_the_poller_does_not_queue_a_job_twice() -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}/v1/") as http:
        poller = Poller(ApiClient(http), ExpositionCache(), SelfMetrics(), max_active_polls=3)
        poller.set_jobs(["ftjob-0", "ftjob-1"])
        tasks = poller.dispatch()
        assert len(tasks) == 1
        assert poller.dispatch() == []  # queued jobs are not queued twice
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await poller.stop()


async def test_the_state_of_the_first_cycle_is_frozen_out_of_full_gc_passes_once_ready() -> None:
    import gc

    from ckpt_exporter.app import Exporter
    from ckpt_exporter.fake import FakeApi, FakeApiServer
    from ckpt_exporter.settings import load_settings

    api = FakeApi(api_key="sk-test")
    api.add_job("ftjob-a")
    api.add_checkpoint("ftjob-a", 10, {"train_loss": 0.5})
    with FakeApiServer(api) as server:
        settings = load_settings(
            {
                "api_base_url": server.base_url,
                "api_key": "sk-test",
                "jobs": ["ftjob-a"],
                "listen_port": free_port(),
            },
            None,
        )
        exporter = Exporter(settings)
        try:
            await exporter.tick()
            assert not exporter.ready()
            assert gc.get_freeze_count() == 0
            await exporter.accounts[0].poller.wait_idle()
            assert exporter.ready()
            await exporter.tick()  # the first tick that finds every job read once
            assert gc.get_freeze_count() > 0
        finally:
            gc.unfreeze()
            for account in exporter.accounts:
                await account.poller.stop()
                await account.http.aclose()
            exporter.server.stop()  # bound at construction


async def test_a_tick_that_comes_while_the_last_cycle_still_runs_polls_the_jobs_it_queued() -> None:
    ids = [f"ftjob-{i}" for i in range(4)]
    jobs = watched(ids)
    polled: list[str] = []

    async def poll(job: Job) -> None:
        await asyncio.sleep(0.01)
        polled.append(job.job_id)

    turns = Turns(1, poll, jobs.get)
    first = turns.queue(list(jobs.values()))  # tick N queues all four
    while turns.busy("ftjob-0") or turns.busy("ftjob-1"):  # polled, done
        await asyncio.sleep(0.001)
    again = [job_id for job_id in ids if not turns.busy(job_id)]
    assert again == ["ftjob-0", "ftjob-1"]
    second = turns.queue([jobs[job_id] for job_id in again])  # tick N+1, while tick N still polls
    await asyncio.wait_for(asyncio.gather(*first, *second), 5)
    assert sorted(polled) == sorted([*ids, *again])
    assert not any(turns.busy(job_id) for job_id in ids)
    assert turns.free == 1
