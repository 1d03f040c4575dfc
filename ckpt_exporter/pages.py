"""The one pagination loop: every list the exporter reads (checkpoints, events, the jobs listing).

The API's lists are pages of `data` with `has_more`; the next page is asked `after` the last id of
the page before. The order of a list is not always documented (OpenAI's checkpoints example is
newest-first, Azure's oldest-first), so callers learn it from what the API returns.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ckpt_exporter.models import MAX_STRING_LENGTH, ApiError, ListPage, Rejected

FetchPage = Callable[[str | None, int], Awaitable[ListPage]]  # (after, limit) -> page
MAX_PAGES = 1000  # pages per walk unless the caller bounds it otherwise
T = TypeVar("T")


class Order(enum.Enum):
    NEWEST_FIRST = "newest_first"
    OLDEST_FIRST = "oldest_first"


class _Comparable(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


def learn_order(keys: Sequence[_Comparable]) -> Order | None:
    """The list's order, if its items' keys show one (at least two different ones, monotonic).

    >>> learn_order([3, 2, 2, 1]), learn_order([1, 2]), learn_order([1, 1]), learn_order([1, 3, 2])
    (<Order.NEWEST_FIRST: 'newest_first'>, <Order.OLDEST_FIRST: 'oldest_first'>, None, None)
    """
    pairs = list(itertools.pairwise(keys))
    if not pairs:
        return None
    if all(not a < b for a, b in pairs) and any(b < a for a, b in pairs):
        return Order.NEWEST_FIRST
    if all(not b < a for a, b in pairs) and any(a < b for a, b in pairs):
        return Order.OLDEST_FIRST
    return None


class PageWalker(Generic[T]):
    """Walks a list page by page (`after` = last id of the previous page), parsing each item.

    Items that `parse` rejects are reported in `rejected`, the rest of the page is kept. A cursor
    seen twice in the walk (a cycle of any length), or a page that claims more but gives no cursor,
    is a pagination loop (ApiError). `max_pages` bounds the walk: there it ends, as if the list did,
    with a too_many_pages in `rejected` (`truncated`), so that what it read is used.
    """

    def __init__(
        self,
        fetch: FetchPage,
        after: str | None,
        limit: int,
        parse: Callable[[object], T | Rejected],
        max_pages: int = MAX_PAGES,
    ) -> None:
        self._fetch = fetch
        self._after = after
        self._limit = limit
        self._parse = parse
        self._max_pages = max_pages
        self._cursors: set[str | None] = {after}
        self._done = False
        self.requests = 0
        self.rejected: list[Rejected] = []
        self.truncated = False

    async def next_page(self) -> list[T] | None:
        """The next page's valid items; None once the list has ended."""
        if self._done:
            return None
        page = await self._fetch(self._after, self._limit)
        self.requests += 1
        valid = []
        for raw in page.data:
            item = self._parse(raw)
            if isinstance(item, Rejected):
                self.rejected.append(item)
            else:
                valid.append(item)
        if not page.has_more:
            self._done = True
            return valid
        # The cursor is the last id on the page (an unusable item may still carry one).
        ids = [raw.get("id") for raw in page.data if isinstance(raw, dict)]
        cursor = next((i for i in reversed(ids) if isinstance(i, str) and i), None)
        if not isinstance(cursor, str) or cursor in self._cursors:
            raise ApiError("pagination_loop", "the list claims more pages but gives no new cursor")
        if len(cursor) > MAX_STRING_LENGTH:  # the walk keeps every cursor it used
            raise ApiError(
                "string_too_long",
                f"the next cursor (the page's last id) is over {MAX_STRING_LENGTH} characters",
            )
        if self.requests >= self._max_pages:
            self.truncated = self._done = True
            self.rejected.append(
                Rejected("too_many_pages", f"it goes on past {self._max_pages} pages; read up to there")
            )
            return valid
        self._cursors.add(cursor)
        self._after = cursor
        return valid

    def stop(self, truncated: bool = False) -> None:
        """End the walk here: the caller has read as far as it needs (or, `truncated`, as far as it
        may: a bound of its own)."""
        self._done = True
        self.truncated = self.truncated or truncated
