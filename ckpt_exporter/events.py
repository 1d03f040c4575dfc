"""A running job's events: what is new since the last read, and the latest metrics event.

While a job trains, its events carry a metrics event per step; the exporter keeps only the latest
one (a step label there would make a series per step). Like the checkpoints list, the events list's
order is not documented, so it is learnt from `created_at` and read the same way: newest first,
read from the top until a known event; oldest first, ask `after` the newest known event. In steady
state that is one request per poll.

The first read sets the baseline: events that were already there are not counted.

What a read holds is bounded whatever the list sends: at most EVENTS_MAX_PAGES pages, counted as
they come; of the events themselves only the newest SEEN_MEMORY (to recognise them next time, and
for the log) and the newest metrics event are kept. A job's counts have at most MAX_EVENT_LEVELS
levels (label values); events of a level beyond them are counted as too_many_event_levels.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from pydantic import ValidationError

from ckpt_exporter.models import (
    JobEvent,
    MetricsEventData,
    Rejected,
    describe,
    invalid_reason,
    parse_metrics_event_data,
)
from ckpt_exporter.pages import FetchPage, Order, PageWalker, learn_order

EVENT_LEVELS = ("info", "warn", "error")
SEEN_MEMORY = 100  # ids of the most recent events kept to recognise them on the next read
EVENTS_MAX_PAGES = 50  # pages per read; an oldest-first history longer than this is caught up poll by poll
MAX_EVENT_LEVELS = 8  # the documented three and five more


@dataclass
class EventsResult:
    new: list[JobEvent] = field(default_factory=list)  # the newest of the new events (SEEN_MEMORY at most)
    rejected: list[Rejected] = field(default_factory=list)
    requests: int = 0


def _parse_event(raw: object) -> JobEvent | Rejected:
    try:
        return JobEvent.model_validate(raw)
    except ValidationError as exc:
        return Rejected(invalid_reason(exc, "invalid_event"), describe(exc))


class _Read:
    """What one read keeps of the new events it walks, in the API's order, whatever their number:
    their times (to learn the order), levels counted, the first and last SEEN_MEMORY of them, and
    the newest metrics event."""

    def __init__(self, result: EventsResult) -> None:
        self.result = result
        self.times: list[int] = []
        self.levels: collections.Counter[str] = collections.Counter()
        self.head: list[JobEvent] = []
        self.tail: collections.deque[JobEvent] = collections.deque(maxlen=SEEN_MEMORY)
        self.metrics: tuple[tuple[int, int], MetricsEventData] | None = None

    def add(self, event: JobEvent) -> None:
        self.times.append(event.created_at)
        self.levels[event.level] += 1
        if len(self.head) < SEEN_MEMORY:
            self.head.append(event)
        self.tail.append(event)
        if event.type == "metrics" and event.data is not None:
            try:
                data = parse_metrics_event_data(event.data)
            except ValidationError as exc:
                self.result.rejected.append(Rejected(invalid_reason(exc, "invalid_event"), describe(exc)))
                return
            key = (data.step or 0, event.created_at)
            if self.metrics is None or key > self.metrics[0]:
                self.metrics = (key, data)

    def newest(self, order: Order | None) -> list[JobEvent]:
        """The newest SEEN_MEMORY events, oldest first."""
        return list(reversed(self.head)) if order is Order.NEWEST_FIRST else list(self.tail)


class EventFeed:
    def __init__(self, job_id: str, page_size: int = 100) -> None:
        self.job_id = job_id
        self.page_size = page_size
        self.order: Order | None = None
        self.newest_id: str | None = None
        self.latest_metrics: MetricsEventData | None = None
        self.counts: dict[str, int] = dict.fromkeys(EVENT_LEVELS, 0)
        self.read_once = False
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    async def refresh(self, fetch: FetchPage) -> EventsResult:
        """Read the new events, update the latest metrics and the counts; ApiError leaves all as is."""
        result = EventsResult()
        read = _Read(result)
        if self.order is Order.OLDEST_FIRST and self.newest_id is not None:
            await self._walk(fetch, self.newest_id, read)
        else:  # newest first: from the top to the first known event; order unknown: all of it
            await self._walk(fetch, None, read)
        self.order = self.order or learn_order(read.times)
        newest = read.newest(self.order)
        self._remember(newest)
        if read.metrics is not None:
            step = read.metrics[1].step or 0
            if self.latest_metrics is None or step >= (self.latest_metrics.step or 0):
                self.latest_metrics = read.metrics[1]
        if self.read_once:
            self._count(read.levels, result)
            result.new = newest
        self.read_once = True
        return result

    async def _walk(self, fetch: FetchPage, after: str | None, read: _Read) -> None:
        """The new events from `after` on, in the API's order; newest first, up to the first known one."""
        walker = PageWalker(fetch, after, self.page_size, _parse_event, EVENTS_MAX_PAGES)
        try:
            while (page := await walker.next_page()) is not None:
                for event in page:
                    if event.id in self._seen:
                        if self.order is Order.NEWEST_FIRST:
                            return
                        continue
                    read.add(event)
                if (
                    self.order is None
                    and not self.read_once
                    and learn_order(read.times) is Order.NEWEST_FIRST
                ):
                    return  # a first read of a newest-first list needs only its top
        finally:
            read.result.requests += walker.requests
            # The first read of a long history stops at the bound by design: it is only the baseline.
            read.result.rejected.extend(
                r for r in walker.rejected if self.read_once or r.reason != "too_many_pages"
            )

    def _count(self, levels: collections.Counter[str], result: EventsResult) -> None:
        """Add a read's counts; a level past MAX_EVENT_LEVELS is counted as a reason, not a series.

        Levels are admitted in the order they first came in time (the API's order, reversed when
        newest first), so the same levels win whichever way the list is ordered.
        """
        firsts = list(levels)
        for level in reversed(firsts) if self.order is Order.NEWEST_FIRST else firsts:
            if level in self.counts or len(self.counts) < MAX_EVENT_LEVELS:
                self.counts[level] = self.counts.get(level, 0) + levels[level]
                continue
            item = Rejected("too_many_event_levels", f"level {level[:40]!r}: over {MAX_EVENT_LEVELS} levels")
            result.rejected.extend([item] * levels[level])

    def _remember(self, newest: list[JobEvent]) -> None:
        """Remember the newest events (oldest first, so that the memory forgets the oldest)."""
        if not newest:
            return
        if self.order is not None:
            self.newest_id = newest[-1].id
        for event in newest:
            self._seen[event.id] = None
            self._seen.move_to_end(event.id)
        while len(self._seen) > SEEN_MEMORY:
            self._seen.popitem(last=False)
