"""A running job's events: what is new since the last read, and the latest metrics event.

While a job trains, its events carry a metrics event per step; the exporter keeps only the latest
one (a step label there would make a series per step). Like the checkpoints list, the events list's
order is not documented, so it is learnt from `created_at` and read the same way: newest first,
read from the top until a known event; oldest first, ask `after` the newest known event. In steady
state that is one request per poll.

The first read sets the baseline: events that were already there are not counted.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from pydantic import ValidationError

from ckpt_exporter.models import JobEvent, MetricsEventData, Rejected, describe, parse_metrics_event_data
from ckpt_exporter.pages import FetchPage, Order, PageWalker, learn_order

EVENT_LEVELS = ("info", "warn", "error")
SEEN_MEMORY = 100  # ids of the most recent events kept to recognise them on the next read
FIRST_READ_MAX_PAGES = 50  # an oldest-first history longer than this is skipped to its end


@dataclass
class EventsResult:
    new: list[JobEvent] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    requests: int = 0


def _parse_event(raw: object) -> JobEvent | Rejected:
    try:
        return JobEvent.model_validate(raw)
    except ValidationError as exc:
        return Rejected("invalid_event", describe(exc))


def _learn(events: list[JobEvent]) -> Order | None:
    return learn_order([event.created_at for event in events])


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
        if self.order is Order.OLDEST_FIRST and self.newest_id is not None:
            listed = await self._walk(fetch, self.newest_id, result)
        else:  # newest first: from the top to the first known event; order unknown: all of it
            listed = await self._walk(fetch, None, result)
        self.order = self.order or _learn(listed)
        new = [event for event in listed if event.id not in self._seen]
        self._remember(listed)
        metrics = self._metrics_events(new, result)
        if metrics:
            newest = max(metrics, key=lambda m: (m[1].step or 0, m[0].created_at))[1]
            if self.latest_metrics is None or (newest.step or 0) >= (self.latest_metrics.step or 0):
                self.latest_metrics = newest
        if self.read_once:
            for event in new:
                self.counts[event.level] = self.counts.get(event.level, 0) + 1
            result.new = new
        self.read_once = True
        return result

    async def _walk(self, fetch: FetchPage, after: str | None, result: EventsResult) -> list[JobEvent]:
        """Events from `after` on, in the API's order; newest first, up to the first known one."""
        walker = PageWalker(fetch, after, self.page_size, _parse_event)
        listed: list[JobEvent] = []
        try:
            while (page := await walker.next_page()) is not None:
                for event in page:
                    if self.order is Order.NEWEST_FIRST and event.id in self._seen:
                        return listed
                    listed.append(event)
                if self.order is None and not self.read_once and _learn(listed) is Order.NEWEST_FIRST:
                    return listed  # a first read of a newest-first list needs only its top
                if walker.requests >= FIRST_READ_MAX_PAGES and not self.read_once:
                    return listed
        finally:
            result.requests += walker.requests
            result.rejected.extend(walker.rejected)
        return listed

    def _remember(self, listed: list[JobEvent]) -> None:
        if not listed:
            return
        if self.order is not None:
            self.newest_id = (listed[0] if self.order is Order.NEWEST_FIRST else listed[-1]).id
        # Oldest first, so that the memory forgets the oldest: a newest-first read stops at the
        # newest event it remembers, whatever the size of the burst before it.
        for event in reversed(listed) if self.order is Order.NEWEST_FIRST else listed:
            self._seen[event.id] = None
            self._seen.move_to_end(event.id)
        while len(self._seen) > SEEN_MEMORY:
            self._seen.popitem(last=False)

    @staticmethod
    def _metrics_events(
        events: list[JobEvent], result: EventsResult
    ) -> list[tuple[JobEvent, MetricsEventData]]:
        out = []
        for event in events:
            if event.type != "metrics" or event.data is None:
                continue
            try:
                out.append((event, parse_metrics_event_data(event.data)))
            except ValidationError as exc:
                result.rejected.append(Rejected("invalid_event", describe(exc)))
        return out
