"""The web config in force: re-read when its file changes, as the exporter-toolkit re-reads its own.

A change is applied within a second (CHECK_INTERVAL_SECONDS), by a watcher thread: users and their
passwords, `auth_excluded_paths`, headers, TLS files and versions. A changed file that cannot be
used (invalid YAML, a bad hash, a certificate that does not load) keeps the previous config, with an
ERROR naming what is wrong, once per change. Switching between TLS and plain HTTP changes what
clients must speak: that takes a restart, and is logged as such.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from ckpt_exporter.filestamp import file_stamp
from ckpt_exporter.webauth import BasicAuth
from ckpt_exporter.webconfig import WebConfig, WebConfigError, load_web_config
from ckpt_exporter.webtls import TlsContexts

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class WebState:
    """What the server applies to a request, built from one version of the web config."""

    config: WebConfig
    auth: BasicAuth | None
    tls: TlsContexts | None

    @classmethod
    def build(cls, config: WebConfig, previous: WebState | None = None) -> WebState:
        """Unchanged parts are kept from `previous` (the verified-credentials cache, the TLS context)."""
        if previous is not None and config.users == previous.config.users:
            auth = previous.auth
        else:
            auth = BasicAuth(config.users) if config.users else None
        if previous is not None and config.tls == previous.config.tls:
            tls = previous.tls
        else:
            tls = TlsContexts(config.tls) if config.tls is not None else None
        return cls(config, auth, tls)


def user_changes(old: dict[str, str], new: dict[str, str]) -> str:
    """`added a; removed b; new password for c`: what changed, by user name (never a hash)."""
    parts = [
        (label, sorted(users))
        for label, users in (
            ("added", new.keys() - old.keys()),
            ("removed", old.keys() - new.keys()),
            ("new password for", {u for u in old.keys() & new.keys() if old[u] != new[u]}),
        )
        if users
    ]
    return "; ".join(f"{label} {', '.join(users)}" for label, users in parts)


class LiveWebConfig:
    """`current()`: the WebState for a request. The file (and the TLS files) are checked once a
    second by a watcher thread of their own (`start()`, `stop()`), never by a request: a reload can
    take a bcrypt hash or a certificate's load, which no scrape or probe should wait for."""

    def __init__(self, config: WebConfig, check_every: float = CHECK_INTERVAL_SECONDS) -> None:
        self._state = WebState.build(config)
        self._check_every = check_every
        self._stamp = file_stamp(config.path)
        self._stopped = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="web-config", daemon=True)

    @property
    def scheme(self) -> str:
        return self._state.config.scheme

    def current(self) -> WebState:
        return self._state

    def start(self) -> None:
        self._watcher.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopped.wait(self._check_every):
            self.refresh()

    def refresh(self) -> None:
        """Apply a change of the web config file, then of the TLS files it names."""
        path = self._state.config.path
        if path is not None:
            stamp = file_stamp(path)
            if stamp != self._stamp:
                self._stamp = stamp
                self._reload(path)
        if self._state.tls is not None:
            self._state.tls.refresh()

    def _reload(self, path: Path) -> None:
        try:
            config = load_web_config(path)
        except WebConfigError as exc:
            log.error("web config changed but cannot be used, keeping the previous one: %s", exc)
            return
        old = self._state.config
        if config.scheme != old.scheme:
            log.error(
                "web config %s now asks for %s instead of %s: that takes a restart; keeping the previous one",
                path,
                config.scheme,
                old.scheme,
            )
            return
        self._state = WebState.build(config, self._state)
        changes = [
            what
            for what, changed in (
                (f"basic auth users: {user_changes(old.users, config.users)}", config.users != old.users),
                ("TLS settings", config.tls != old.tls),
                ("auth_excluded_paths", config.auth_excluded_paths != old.auth_excluded_paths),
                ("headers", config.headers != old.headers),
            )
            if changed
        ]
        log.info("web config %s reloaded: %s", path, "; ".join(changes) or "no change in effect")
