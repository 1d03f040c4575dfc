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

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from ckpt_exporter.models import Checkpoint, Rejected, describe, invalid_reason, parse_checkpoint
from ckpt_exporter.pages import FetchPage, Order, PageWalker, learn_order

log = logging.getLogger(__name__)

MAX_LIMIT = 100  # the largest `limit` a reconciling read asks for
# What one job may make us hold: real jobs have a few (OpenAI keeps the last 3 epochs' checkpoints),
# Azure one per epoch. Past it the list is read no further, and the rest is counted, not kept.
MAX_CHECKPOINTS = 1000
MAX_CHECKPOINT_PAGES = 1000  # pages per walk: all of MAX_CHECKPOINTS even at page_size 1


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
        self._hidden: set[str] = set()  # ids hidden by a newer checkpoint at the same step
        self._exported: tuple[Checkpoint, ...] = ()

    def checkpoints(self) -> tuple[Checkpoint, ...]:
        """The checkpoints to export, oldest first: one per step (see `one_per_step`), as of the
        last refresh that changed them."""
        return self._exported

    def _note_duplicates(self, result: DiffResult) -> None:
        """Choose the checkpoints to export; count each checkpoint that another at its step hides,
        once, when it starts to be hidden."""
        self._exported, hidden = one_per_step(self.known.values())
        for checkpoint in hidden:
            if checkpoint.id not in self._hidden:
                result.rejected.append(
                    Rejected(
                        "duplicate_step",
                        f"checkpoint {checkpoint.id} shares step {checkpoint.step_number} with a newer one, "
                        "which is exported",
                    )
                )
        self._hidden = {checkpoint.id for checkpoint in hidden}

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
        if result.changed:
            self._note_duplicates(result)
        return result

    async def _full_read(self, fetch: FetchPage, result: DiffResult) -> None:
        listed: list[Checkpoint] = []
        limit = min(max(self.page_size, len(self.known) + 1), MAX_LIMIT)
        walker = self._walker(fetch, None, limit)
        while (page := await walker.next_page()) is not None:
            listed.extend(page)
            listed = self._within(listed, MAX_CHECKPOINTS, walker, result)
        result.absorb(walker)
        seen = {c.id: c for c in listed}
        result.new = [c for c in seen.values() if c.id not in self.known]
        result.removed = [cid for cid in self.known if cid not in seen]
        self.known = seen
        self.order = learn_order([c.order_key for c in listed]) or self.order
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
            new = self._within(new, MAX_CHECKPOINTS - len(self.known), walker, result)
        result.absorb(walker)
        if not found_known and not walker.truncated:
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
            new = self._within(new, MAX_CHECKPOINTS - len(self.known), walker, result)
        result.absorb(walker)
        self._apply_new(new, result)

    def _walker(self, fetch: FetchPage, after: str | None, limit: int) -> PageWalker[Checkpoint]:
        return PageWalker(fetch, after, limit, checkpoint_parser(self.job_id), MAX_CHECKPOINT_PAGES)

    @staticmethod
    def _within(
        items: list[Checkpoint], room: int, walker: PageWalker[Checkpoint], result: DiffResult
    ) -> list[Checkpoint]:
        """`items` up to the room left under MAX_CHECKPOINTS; past it the walk stops, counted."""
        if len(items) <= room:
            return items
        walker.stop(truncated=True)
        result.rejected.append(
            Rejected(
                "too_many_checkpoints", f"the job lists more than {MAX_CHECKPOINTS}; the rest is not kept"
            )
        )
        return items[: max(room, 0)]

    def _apply_new(self, new: list[Checkpoint], result: DiffResult) -> None:
        for item in new:
            self.known[item.id] = item
        result.new = new
        self._polls_since_full_read += 1


def checkpoint_parser(job_id: str) -> Callable[[object], Checkpoint | Rejected]:
    """Validates a checkpoint of `job_id`; anything else is rejected with a bounded reason."""

    def parse(raw: object) -> Checkpoint | Rejected:
        parsed = parse_checkpoint(raw)
        if isinstance(parsed, ValidationError):
            return Rejected(invalid_reason(parsed, "invalid_checkpoint"), describe(parsed))
        if parsed.fine_tuning_job_id != job_id:
            return Rejected("wrong_job", f"checkpoint {parsed.id} belongs to another job")
        return parsed

    return parse


def one_per_step(checkpoints: Iterable[Checkpoint]) -> tuple[tuple[Checkpoint, ...], list[Checkpoint]]:
    """(the checkpoint of each step, oldest step first; the checkpoints they hide).

    Two checkpoints at one step would be two series with the same labels. The one exported is the
    newest: the latest created_at, then the greatest id.
    """
    by_step: dict[int, Checkpoint] = {}
    hidden: list[Checkpoint] = []
    for checkpoint in sorted(checkpoints, key=lambda c: (c.step_number, c.created_at, c.id)):
        if (older := by_step.get(checkpoint.step_number)) is not None:
            hidden.append(older)
        by_step[checkpoint.step_number] = checkpoint
    return tuple(by_step.values()), hidden
