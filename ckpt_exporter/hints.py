"""Hints: one line when the answers of many jobs together point at the settings, not at the jobs.

Every job of an account answering 404 is rarely every job gone: the account's base URL misses its
path (https://api.openai.com instead of https://api.openai.com/v1), or points at another service,
and each job's own line ("not found ... it does not exist or was deleted") sends the operator
after the job ids instead.
"""

from __future__ import annotations

import logging

# The poller's logger: operators filter on it (docs/operations.md quotes its lines).
log = logging.getLogger("ckpt_exporter.poller")


class NotFoundHint:
    """Says once, per account, that every watched job answers 404 from the same base URL.

    `note` is called with each job's latest outcome (O(1): a poll of 10,000 jobs calls it 10,000
    times); the hint is said again only after some job answered something else in between.
    """

    def __init__(self, account: str, base_url: str) -> None:
        self._account = account
        self._base_url = base_url
        self._not_found: set[str] = set()
        self._said = False

    def note(self, job_id: str, not_found: bool, watched: int) -> None:
        """The job's latest outcome was a 404 (or not), out of `watched` jobs of the account."""
        if not_found:
            self._not_found.add(job_id)
        else:
            self._not_found.discard(job_id)
            self._said = False
        if not self._said and watched > 0 and len(self._not_found) >= watched:
            self._said = True
            log.warning(
                "account %s: all %d watched job(s) answer 404 (not found) from %s: check api_base_url; "
                "a base URL without its path (OpenAI's is https://api.openai.com/v1, Azure's "
                "https://RESOURCE.openai.azure.com/openai) makes every job look missing",
                self._account,
                watched,
                self._base_url,
            )

    def forget(self, job_id: str) -> None:
        """The job is no longer watched."""
        self._not_found.discard(job_id)
