"""The one pagination loop's bounds (issue 12 point 3): a cursor cycle of any length is a loop, the
page bound ends a walk as if the list did, and the jobs listing says so once."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from ckpt_exporter.api import ApiClient
from ckpt_exporter.listing import MAX_STATUS_PAGES, Listing
from ckpt_exporter.models import ApiError, ListPage, Rejected
from ckpt_exporter.pages import PageWalker


def item(item_id: str) -> dict[str, str]:
    return {"id": item_id}


def keep(raw: object) -> str | Rejected:
    return str(raw["id"]) if isinstance(raw, dict) else Rejected("invalid", "not an object")


class Cycle:
    """A -> B -> C -> A: each page's last id is new to the page before, but not to the walk."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    async def fetch(self, after: str | None, limit: int) -> ListPage:
        self.asked.append(after)
        following = {None: "A", "A": "B", "B": "C", "C": "A"}[after]
        return ListPage(data=[item(following)], has_more=True)


async def test_a_cursor_cycle_of_any_length_is_a_pagination_loop() -> None:
    cycle = Cycle()
    walker = PageWalker(cycle.fetch, None, 20, keep)
    assert [await walker.next_page() for _ in range(3)] == [["A"], ["B"], ["C"]]
    with pytest.raises(ApiError) as loop:
        await walker.next_page()
    assert loop.value.reason == "pagination_loop"
    assert cycle.asked == [None, "A", "B", "C"]


async def test_the_page_bound_ends_the_walk_with_what_it_read() -> None:
    async def endless(after: str | None, limit: int) -> ListPage:
        n = 0 if after is None else int(after) + 1
        return ListPage(data=[item(str(n))], has_more=True)

    walker = PageWalker(endless, None, 20, keep, max_pages=3)
    pages = []
    while (page := await walker.next_page()) is not None:
        pages.append(page)
    assert pages == [["0"], ["1"], ["2"]]
    assert walker.truncated
    assert walker.requests == 3
    assert walker.rejected == [Rejected("too_many_pages", "it goes on past 3 pages; read up to there")]


async def test_a_status_walk_past_the_page_bound_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    requests: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        requests.append(after)
        n = 0 if after is None else int(after.removeprefix("ftjob-")) + 1
        job = {"id": f"ftjob-{n}", "status": "succeeded", "created_at": 1_764_000_000}
        return httpx.Response(200, content=json.dumps({"data": [job], "has_more": True}).encode())

    http = httpx.AsyncClient(base_url="https://api.test/v1/", transport=httpx.MockTransport(answer))
    async with http:
        listing = Listing(ApiClient(http, max_retries=0), "default")
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                await listing.statuses({"ftjob-never-listed": None}, lambda document: None)
    assert len(requests) == 2 * MAX_STATUS_PAGES
    logged = [r.getMessage() for r in caplog.records if "too_many_pages" in r.getMessage()]
    assert logged == [
        f"account default: jobs listing failed (too_many_pages): the listing goes on past {MAX_STATUS_PAGES} "
        "pages; statuses stay as last read"
    ]
