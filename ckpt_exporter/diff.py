"""The diff layer: per job, the known checkpoints, and how little to fetch to find the new ones.

The order of the checkpoints list is not documented (OpenAI's example is newest-first, Azure's is
oldest-first), so the order is learnt from what the API returns:

- newest-first: read from the top and stop at the first id we already know;
- oldest-first: ask `after` the newest id we know, which returns only what is new;
- unknown (fewer than two distinct steps seen yet): read the whole list, which is one request.

A full read every `full_read_every` polls reconciles checkpoints the API no longer lists. Once the
job's checkpoints are known, that read asks for as many as we know plus one (up to MAX_LIMIT) so that
it, too, is one request; the first read of a job walks pages of `page_size`.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import ValidationError

from ckpt_exporter.api import ApiError
from ckpt_exporter.models import Checkpoint, ListPage, parse_checkpoint

log = logging.getLogger(__name__)

FetchPage = Callable[[str | None, int], Awaitable[ListPage]]  # (after, limit) -> page
MAX_PAGES = 10_000  # a safety net far above any real job (OpenAI keeps the last 3 epochs)
MAX_LIMIT = 100  # the largest `limit` a reconciling read asks for
T = TypeVar("T")


class Order(enum.Enum):
    NEWEST_FIRST = "newest_first"
    OLDEST_FIRST = "oldest_first"


def learn_order(items: list[Checkpoint]) -> Order | None:
    """The list's order, if the items show one (at least two different positions, monotonic)."""
    keys = [item.order_key for item in items]
    pairs = list(itertools.pairwise(keys))
    if not pairs:
        return None
    if all(a >= b for a, b in pairs) and any(a > b for a, b in pairs):
        return Order.NEWEST_FIRST
    if all(a <= b for a, b in pairs) and any(a < b for a, b in pairs):
        return Order.OLDEST_FIRST
    return None


@dataclass
class Rejected:
    """An item of a page we could not use, with a bounded reason (for a metric label)."""

    reason: str
    detail: str


@dataclass
class DiffResult:
    new: list[Checkpoint] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    requests: int = 0
    full_read: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.new or self.removed)

    def absorb(self, walker: PageWalker[Checkpoint]) -> None:
        self.requests += walker.requests
        self.rejected.extend(walker.rejected)


class CheckpointDiff:
    """The known checkpoints of one job, and the logic that brings them up to date."""

    def __init__(self, job_id: str, page_size: int = 20, full_read_every: int = 10) -> None:
        self.job_id = job_id
        self.page_size = page_size
        self.full_read_every = full_read_every
        self.known: dict[str, Checkpoint] = {}
        self.order: Order | None = None
        self._polls_since_full_read = 0
        self._need_full_read = True

    def checkpoints(self) -> tuple[Checkpoint, ...]:
        """The known checkpoints, oldest first."""
        return tuple(sorted(self.known.values(), key=lambda c: c.order_key))

    def newest(self) -> Checkpoint | None:
        return max(self.known.values(), key=lambda c: c.order_key, default=None)

    def force_full_read(self) -> None:
        self._need_full_read = True

    async def refresh(self, fetch: FetchPage) -> DiffResult:
        """Fetch what is new since the last refresh and apply it; ApiError leaves the state as it was."""
        full = (
            self._need_full_read
            or self.order is None
            or not self.known
            or self._polls_since_full_read + 1 >= self.full_read_every
        )
        result = DiffResult(full_read=full)
        if full:
            await self._full_read(fetch, result)
        elif self.order is Order.NEWEST_FIRST:
            await self._read_newest_first(fetch, result)
        else:
            await self._read_oldest_first(fetch, result)
        return result

    async def _full_read(self, fetch: FetchPage, result: DiffResult) -> None:
        listed: list[Checkpoint] = []
        limit = min(max(self.page_size, len(self.known) + 1), MAX_LIMIT)
        walker = self._walker(fetch, None, limit)
        while (page := await walker.next_page()) is not None:
            listed.extend(page)
        result.absorb(walker)
        seen = {c.id: c for c in listed}
        result.new = [c for c in seen.values() if c.id not in self.known]
        result.removed = [cid for cid in self.known if cid not in seen]
        self.known = seen
        self.order = learn_order(listed) or self.order
        self._need_full_read = False
        self._polls_since_full_read = 0

    async def _read_newest_first(self, fetch: FetchPage, result: DiffResult) -> None:
        found_known = False
        new: list[Checkpoint] = []
        walker = self._walker(fetch, None, self.page_size)
        while not found_known and (page := await walker.next_page()) is not None:
            for item in page:
                if item.id in self.known:
                    found_known = True
                    break
                new.append(item)
        result.absorb(walker)
        if not found_known:
            # We read the whole list without meeting a known id: it is a full read after all.
            removed = list(self.known)
            self.known = {c.id: c for c in new}
            result.new, result.removed, result.full_read = new, removed, True
            self._polls_since_full_read = 0
            return
        self._apply_new(new, result)

    async def _read_oldest_first(self, fetch: FetchPage, result: DiffResult) -> None:
        newest = self.newest()
        assert newest is not None  # the order is only known once checkpoints are
        new: list[Checkpoint] = []
        walker = self._walker(fetch, newest.id, self.page_size)
        while (page := await walker.next_page()) is not None:
            new.extend(item for item in page if item.id not in self.known)
        result.absorb(walker)
        self._apply_new(new, result)

    def _walker(self, fetch: FetchPage, after: str | None, limit: int) -> PageWalker[Checkpoint]:
        return PageWalker(fetch, after, limit, checkpoint_parser(self.job_id))

    def _apply_new(self, new: list[Checkpoint], result: DiffResult) -> None:
        for item in new:
            self.known[item.id] = item
        result.new = new
        self._polls_since_full_read += 1


class PageWalker(Generic[T]):
    """Walks a list page by page (`after` = last id of the previous page), parsing each item.

    Items that `parse` rejects are reported in `rejected`, the rest of the page is kept. A cursor
    seen twice, or an empty page that claims more, is a pagination loop.
    """

    def __init__(
        self, fetch: FetchPage, after: str | None, limit: int, parse: Callable[[object], T | Rejected]
    ) -> None:
        self._fetch = fetch
        self._after = after
        self._limit = limit
        self._parse = parse
        self._cursors: set[str | None] = {after}
        self._done = False
        self.requests = 0
        self.rejected: list[Rejected] = []

    async def next_page(self) -> list[T] | None:
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
        if not isinstance(cursor, str) or cursor in self._cursors or self.requests >= MAX_PAGES:
            raise ApiError("pagination_loop", "the list claims more pages but gives no new cursor")
        self._cursors.add(cursor)
        self._after = cursor
        return valid


def checkpoint_parser(job_id: str) -> Callable[[object], Checkpoint | Rejected]:
    """Validates a checkpoint of `job_id`; anything else is rejected with a bounded reason."""

    def parse(raw: object) -> Checkpoint | Rejected:
        parsed = parse_checkpoint(raw)
        if isinstance(parsed, ValidationError):
            return Rejected("invalid_checkpoint", describe(parsed))
        if parsed.fine_tuning_job_id != job_id:
            return Rejected("wrong_job", f"checkpoint {parsed.id} belongs to another job")
        return parsed

    return parse


def describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "item"
    return f"{where}: {first['msg']}"
