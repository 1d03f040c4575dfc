"""The diff layer against a scripted list: what it fetches, and what it concludes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from ckpt_exporter.diff import CheckpointDiff
from ckpt_exporter.models import ApiError, Checkpoint, ListPage
from ckpt_exporter.pages import Order, learn_order

JOB = "ftjob-a"


def raw(step: int, job: str = JOB, **metrics: Any) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": f"ckpt-{step}",
        "created_at": 1_700_000_000 + step,
        "fine_tuned_model_checkpoint": f"ft:m:o::x:ckpt-step-{step}",
        "fine_tuning_job_id": job,
        "metrics": {"step": step, **metrics},
        "step_number": step,
    }


class ScriptedList:
    """A list endpoint over `items`, in the given order, recording each (after, limit) asked."""

    def __init__(self, steps: list[int], newest_first: bool) -> None:
        self.items = [raw(s) for s in steps]
        self.newest_first = newest_first
        self.calls: list[tuple[str | None, int]] = []

    def add(self, step: int) -> None:
        self.items.append(raw(step))

    async def fetch(self, after: str | None, limit: int) -> ListPage:
        self.calls.append((after, limit))
        ordered = sorted(self.items, key=lambda c: c["step_number"], reverse=self.newest_first)
        ids = [c["id"] for c in ordered]
        start = ids.index(after) + 1 if after in ids else (0 if after is None else len(ids))
        data = ordered[start : start + limit]
        return ListPage(data=data, has_more=start + limit < len(ordered))


def steps(diff: CheckpointDiff) -> list[int]:
    return [c.step_number for c in diff.checkpoints()]


@pytest.mark.parametrize("newest_first", [True, False])
async def test_first_read_walks_pages_then_one_request_per_poll(newest_first: bool) -> None:
    api = ScriptedList(list(range(1, 13)), newest_first)
    diff = CheckpointDiff(JOB, page_size=5, full_read_every=10)
    first = await diff.refresh(api.fetch)
    assert (first.requests, len(first.new), first.full_read) == (3, 12, True)
    assert diff.order is (Order.NEWEST_FIRST if newest_first else Order.OLDEST_FIRST)
    api.calls.clear()
    for _ in range(8):
        result = await diff.refresh(api.fetch)
        assert (result.requests, result.new, result.removed) == (1, [], [])
    expected_after = None if newest_first else "ckpt-12"
    assert api.calls == [(expected_after, 5)] * 8


@pytest.mark.parametrize("newest_first", [True, False])
async def test_new_checkpoints_are_found_across_pages(newest_first: bool) -> None:
    api = ScriptedList([1, 2, 3], newest_first)
    diff = CheckpointDiff(JOB, page_size=2)
    await diff.refresh(api.fetch)
    for step in range(4, 10):
        api.add(step)
    result = await diff.refresh(api.fetch)
    assert sorted(c.step_number for c in result.new) == [4, 5, 6, 7, 8, 9]
    assert steps(diff) == list(range(1, 10))
    assert result.requests == (4 if newest_first else 3)  # newest-first reads up to the known page


async def test_unknown_order_reads_everything_in_one_request() -> None:
    api = ScriptedList([], True)
    diff = CheckpointDiff(JOB, page_size=5)
    assert (await diff.refresh(api.fetch)).requests == 1
    api.add(10)
    result = await diff.refresh(api.fetch)
    assert ([c.step_number for c in result.new], diff.order) == ([10], None)
    api.add(20)
    result = await diff.refresh(api.fetch)
    assert ([c.step_number for c in result.new], diff.order) == ([20], Order.NEWEST_FIRST)
    assert api.calls == [(None, 5), (None, 5), (None, 5)]


@pytest.mark.parametrize("newest_first", [True, False])
async def test_periodic_full_read_reconciles_removed_checkpoints_in_one_request(newest_first: bool) -> None:
    api = ScriptedList(list(range(1, 13)), newest_first)
    diff = CheckpointDiff(JOB, page_size=5, full_read_every=3)
    await diff.refresh(api.fetch)
    api.items = [c for c in api.items if c["step_number"] > 4]  # retention drops the oldest
    assert (await diff.refresh(api.fetch)).removed == []
    assert (await diff.refresh(api.fetch)).removed == []
    api.calls.clear()
    result = await diff.refresh(api.fetch)  # the 3rd poll since the last full read
    assert result.full_read
    assert sorted(result.removed) == [f"ckpt-{s}" for s in (1, 2, 3, 4)]
    assert steps(diff) == list(range(5, 13))
    assert api.calls == [(None, 13)]  # sized to the known set + 1: one request


async def test_newest_first_without_a_known_id_is_a_full_read() -> None:
    api = ScriptedList([1, 2], True)
    diff = CheckpointDiff(JOB, page_size=5)
    await diff.refresh(api.fetch)
    api.items = [raw(7), raw(8)]  # everything we knew is gone
    result = await diff.refresh(api.fetch)
    assert (result.full_read, sorted(result.removed), steps(diff)) == (True, ["ckpt-1", "ckpt-2"], [7, 8])


async def test_invalid_items_and_other_jobs_are_rejected_and_the_rest_kept() -> None:
    page = [
        raw(3, train_loss=0.3),
        raw(2, train_loss="0.2"),  # a loss as a string
        {"id": "ckpt-x", "object": "fine_tuning.job.checkpoint"},  # no step, no job
        raw(1, job="ftjob-other"),
        "not an object",
    ]

    async def fetch(after: str | None, limit: int) -> ListPage:
        return ListPage(data=page, has_more=False)

    diff = CheckpointDiff(JOB)
    result = await diff.refresh(fetch)
    assert [c.id for c in result.new] == ["ckpt-3"]
    assert [r.reason for r in result.rejected] == [
        "invalid_checkpoint",
        "invalid_checkpoint",
        "wrong_job",
        "invalid_checkpoint",
    ]


@pytest.mark.parametrize(
    ("pages"),
    [
        [ListPage(data=[raw(1)], has_more=True), ListPage(data=[raw(1)], has_more=True)],  # cursor seen
        [ListPage(data=[], has_more=True)],  # an empty page that claims more
    ],
)
async def test_pagination_loops_fail_the_poll_and_keep_the_state(pages: list[ListPage]) -> None:
    diff = CheckpointDiff(JOB)
    diff.known = {"ckpt-0": TypeAdapter(Checkpoint).validate_python(raw(0))}
    served = iter(pages)

    async def fetch(after: str | None, limit: int) -> ListPage:
        return next(served)

    with pytest.raises(ApiError) as caught:
        await diff.refresh(fetch)
    assert caught.value.reason == "pagination_loop"
    assert list(diff.known) == ["ckpt-0"]


def test_learn_order() -> None:
    c = [TypeAdapter(Checkpoint).validate_python(raw(s)) for s in (1, 2, 3)]
    assert learn_order([x.order_key for x in c]) is Order.OLDEST_FIRST
    assert learn_order([x.order_key for x in c[::-1]]) is Order.NEWEST_FIRST
    assert learn_order([x.order_key for x in c[:1]]) is None
    assert learn_order([x.order_key for x in (c[1], c[0], c[2])]) is None
