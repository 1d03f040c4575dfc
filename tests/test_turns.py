"""Who goes first: the request slots (urgent first) and the poller's turns (bounded polls)."""

from __future__ import annotations

import asyncio

from ckpt_exporter.exposition import RenderedJobs
from ckpt_exporter.poller import Poller
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.slots import PrioritySlots
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


async def test_at_most_max_active_polls_run_at_once_and_every_job_gets_its_turn() -> None:
    poller = Poller(None, RenderedJobs(), SelfMetrics(), max_active_polls=3)  # type: ignore[arg-type]
    ids = [f"ftjob-{i}" for i in range(10)]
    poller.set_jobs(ids)
    active, peak, polled = 0, 0, []

    async def poll(job: object) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        polled.append(job.job_id)  # type: ignore[attr-defined]
        active -= 1

    poller._poll_job = poll  # type: ignore[method-assign]
    tasks = poller._dispatch()
    assert len(tasks) == 1
    assert poller._dispatch() == []  # queued jobs are not queued twice
    await asyncio.gather(*tasks)
    assert peak == 3
    assert sorted(polled) == sorted(ids)
    assert poller._in_flight == {}


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
            await exporter._tick()
            assert not exporter.ready()
            assert gc.get_freeze_count() == 0
            await exporter.accounts[0].poller.wait_idle()
            assert exporter.ready()
            await exporter._tick()  # the first tick that finds every job read once
            assert gc.get_freeze_count() > 0
        finally:
            gc.unfreeze()
            for account in exporter.accounts:
                await account.poller.stop()
                await account.http.aclose()
            exporter.server.stop()  # bound at construction


async def test_a_tick_that_comes_while_the_last_cycle_still_runs_polls_the_jobs_it_queued() -> None:
    poller = Poller(None, RenderedJobs(), SelfMetrics(), max_active_polls=1)  # type: ignore[arg-type]
    ids = [f"ftjob-{i}" for i in range(4)]
    poller.set_jobs(ids)
    polled: list[str] = []

    async def poll(job: object) -> None:
        await asyncio.sleep(0.01)
        polled.append(job.job_id)  # type: ignore[attr-defined]

    poller._poll_job = poll  # type: ignore[method-assign]
    first = poller._dispatch()  # tick N queues all four
    while "ftjob-0" in poller._in_flight or "ftjob-1" in poller._in_flight:  # polled, done
        await asyncio.sleep(0.001)
    again = [job_id for job_id in ids if job_id not in poller._in_flight]
    assert again == ["ftjob-0", "ftjob-1"]
    second = poller._dispatch()  # tick N+1, while tick N still polls ftjob-2 and ftjob-3
    await asyncio.wait_for(asyncio.gather(*first, *second), 5)
    assert sorted(polled) == sorted([*ids, *again])
    assert poller._in_flight == {}
    assert poller._turns._value == 1
