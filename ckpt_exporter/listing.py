"""The account's jobs listing: the discovery filter, the shard rule, and the two walks over it.

The status refresh walks the listing (newest first, up to 100 jobs a page) only as far as the jobs
whose status it needs; discovery walks it, filtered by metadata, as far as the jobs young enough to
match. Both walk with the one pagination loop (pages.PageWalker), loop check included.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from pydantic import ValidationError

from ckpt_exporter.account_auth import is_account_failure
from ckpt_exporter.api import ApiClient
from ckpt_exporter.models import (
    ApiError,
    FineTuningJob,
    ListPage,
    Rejected,
    describe,
    invalid_reason,
    parse_job,
)
from ckpt_exporter.pages import PageWalker

# The poller's logger: operators filter on it (docs/operations.md quotes its lines).
log = logging.getLogger("ckpt_exporter.poller")

LIST_LIMIT = 100  # jobs per listing page
MAX_STATUS_PAGES = 1000  # the status refresh reads individually what these pages do not reach
MAX_DISCOVERY_PAGES = 1000


@dataclass(frozen=True)
class Discovery:
    """Which of the account's jobs to watch besides the configured ones."""

    interval: float = 300.0
    statuses: frozenset[str] = frozenset()  # empty: any status
    max_age_seconds: float | None = 30 * 86400.0
    metadata: dict[str, str] = field(default_factory=dict)
    model_pattern: str | None = None
    suffix_pattern: str | None = None

    def matches(self, job: FineTuningJob, now: float) -> bool:
        return (
            (not self.statuses or job.status in self.statuses)
            and (self.max_age_seconds is None or job.created_at >= now - self.max_age_seconds)
            and all((job.metadata or {}).get(k) == v for k, v in self.metadata.items())
            and (self.model_pattern is None or fnmatch.fnmatchcase(job.model or "", self.model_pattern))
            and (self.suffix_pattern is None or fnmatch.fnmatchcase(job.suffix, self.suffix_pattern))
        )


@dataclass(frozen=True)
class Shard:
    """This replica's share of the jobs: md5(job_id) mod total == index (as kube-state-metrics)."""

    index: int = 0
    total: int = 1

    def owns(self, job_id: str) -> bool:
        if self.total == 1:
            return True
        return int(hashlib.md5(job_id.encode()).hexdigest(), 16) % self.total == self.index


def parse_listed_job(raw: object) -> FineTuningJob | Rejected:
    try:
        return parse_job(raw)
    except ValidationError as exc:
        return Rejected(invalid_reason(exc, "invalid_job"), describe(exc))
    except Exception as exc:  # a document that breaks the validator itself: skipped like the rest
        return Rejected("invalid_job", type(exc).__name__)


@dataclass
class Discovered:
    """What a discovery walk found, and what ended it before the listing's end, if anything (a
    pagination loop, the page bound, a failed page): then the jobs found are watched, none dropped."""

    found: dict[str, FineTuningJob]
    stopped: ApiError | None = None


class Listing:
    """The walks of one account's jobs listing, and the memory of its last failure (logged once)."""

    def __init__(self, client: ApiClient, account: str) -> None:
        self._client = client
        self._account = account
        self._last_error: str | None = None

    def _walker(self, metadata: dict[str, str] | None, max_pages: int) -> PageWalker[FineTuningJob]:
        async def fetch(after: str | None, limit: int) -> ListPage:
            return await self._client.list_jobs(after=after, limit=limit, metadata=metadata)

        return PageWalker(fetch, None, LIST_LIMIT, parse_listed_job, max_pages)

    @staticmethod
    def _log_rejected(walker: PageWalker[FineTuningJob]) -> None:
        for item in walker.rejected:
            if item.reason != "too_many_pages":  # the walk's end, not a job: see `truncated`
                log.warning("jobs listing: ignored an invalid job (%s)", item.detail)
        walker.rejected.clear()

    async def statuses(
        self, wanted: dict[str, FineTuningJob | None], apply: Callable[[FineTuningJob], None]
    ) -> None:
        """Walk until every job in `wanted` (id: its last document) is seen, removing it; or, when
        all of them were read before, until the listing is older than the oldest of them."""
        known = [document.created_at for document in wanted.values() if document is not None]
        oldest = min(known) if len(known) == len(wanted) else None
        walker = self._walker(None, MAX_STATUS_PAGES)
        while wanted and (documents := await walker.next_page()) is not None:
            self._log_rejected(walker)
            for document in documents:
                if document.id in wanted:
                    del wanted[document.id]
                    apply(document)
            if not documents or (oldest is not None and documents[-1].created_at < oldest):
                break
        if walker.truncated:  # the rest is read one job at a time
            self.failed(ApiError("too_many_pages", f"the listing goes on past {MAX_STATUS_PAGES} pages"))
            return
        self._last_error = None

    async def discover(
        self,
        discovery: Discovery,
        shard: Shard,
        now: float,
        watched: Collection[str],
        apply: Callable[[FineTuningJob], None],
    ) -> Discovered:
        """The jobs that match the filters and this shard; `apply` gets every watched job seen."""
        found: dict[str, FineTuningJob] = {}
        walker = self._walker(discovery.metadata, MAX_DISCOVERY_PAGES)
        max_age = discovery.max_age_seconds
        try:
            while (documents := await walker.next_page()) is not None:
                self._log_rejected(walker)
                for document in documents:
                    if document.id in watched:
                        apply(document)
                    if discovery.matches(document, now) and shard.owns(document.id):
                        found[document.id] = document
                if not documents:
                    break
                if max_age is not None and all(d.created_at < now - max_age for d in documents):
                    break  # the listing is newest first: the rest is older still
        except ApiError as exc:
            return Discovered(found, exc)
        if walker.truncated:
            bound = ApiError("too_many_pages", f"the listing goes on past {MAX_DISCOVERY_PAGES} pages")
            return Discovered(found, bound)
        self._last_error = None
        return Discovered(found)

    def failed(self, exc: ApiError) -> None:
        """Log a failed walk once per reason (a 401/403 or a sign-in failure is the account's)."""
        if not is_account_failure(exc) and self._last_error != exc.reason:
            log.warning(
                "account %s: jobs listing failed (%s): %s; statuses stay as last read",
                self._account,
                exc.reason,
                exc,
            )
        self._last_error = exc.reason
