"""The account's auth state: whether the API accepts its key, as the answers say.

A 401 or 403 is about the account's key, not the job: it is logged once per change, for the
account, rather than once per job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ckpt_exporter.models import ApiError, SignInFailed

# The poller's logger: operators filter on it (docs/operations.md quotes its lines).
log = logging.getLogger("ckpt_exporter.poller")

AUTH_STATUSES = (401, 403)  # about the account's key, not the job: logged once per change


def is_account_failure(exc: ApiError) -> bool:
    """A failure of the account's key or sign-in, logged once for the account, not per job or walk."""
    return exc.status in AUTH_STATUSES or isinstance(exc, SignInFailed)


class AccountAuth:
    """Whether the API accepts the account's key, as the answers say; each change logged once.

    `epoch` is bumped at each change. A request begun before the last change was answered on the
    key as it was then: it neither logs a change nor undoes one.
    """

    def __init__(self, account: str, keyless: bool = False) -> None:
        self._account = account
        self._keyless = keyless  # Entra ID tokens: their 401s are the token source's (api.py, entra.py)
        self.failure: int | None = None  # the 401/403 last logged for the account
        self.epoch = 0

    def failed(self, exc: ApiError, epoch: int) -> None:
        if self.failure == exc.status or epoch != self.epoch:
            return
        self.failure = exc.status
        self.epoch += 1
        if exc.status == 403 and self._keyless:
            log.error(
                "account %s: the API refused the Entra ID token's access (HTTP 403): check the "
                "identity's role on the resource and the resource's network rules",
                self._account,
            )
        elif exc.status == 401:
            log.error(
                "account %s: the API rejected the key (HTTP 401): check CKPT_EXPORTER_API_KEY or the "
                "file api_key_file names; polls go on at the poll interval",
                self._account,
            )
        else:
            log.error(
                "account %s: the key lacks access (HTTP 403): check that it belongs to the jobs' "
                "organization and project and has fine-tuning read scope",
                self._account,
            )

    def accepted(self, epoch: int) -> None:
        if self.failure is None or epoch != self.epoch:
            return
        self.failure = None
        self.epoch += 1
        log.info("account %s: the API accepts the key again", self._account)

    def note(self, failures: Iterable[ApiError], epoch: int) -> None:
        for failure in failures:
            if failure.status in AUTH_STATUSES:
                self.failed(failure, epoch)
