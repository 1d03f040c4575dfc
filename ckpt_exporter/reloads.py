"""What a reload (SIGHUP, or a change of the settings file) applies, and what it cannot.

Applied at once: each account's `jobs` (a job added is polled from the next tick on, a job removed
loses its series) and `log_level`. Every other setting is read at start only: it shapes the HTTP
clients, the listening sockets, the schedule or the exposition. A reload that changes one of them
logs, once, which setting takes a restart, with its running and its new value (never a key's), and
the exporter goes on with the values it started with.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import SecretStr

from ckpt_exporter.settings import Settings

log = logging.getLogger(__name__)

LIVE_SETTINGS = frozenset({"jobs", "log_level"})
Change = tuple[Any, Any]  # (running value, value in the reloaded settings)


def restart_changes(running: Settings, reloaded: Settings) -> dict[str, Change]:
    """The settings that differ and take a restart, by name: accounts[NAME].setting inside accounts."""
    old, new = running.model_dump(), reloaded.model_dump()
    changes = {
        name: (old[name], new[name])
        for name in Settings.model_fields
        if name not in LIVE_SETTINGS and name != "accounts" and old[name] != new[name]
    }
    old_accounts = {account["name"]: account for account in old["accounts"]}
    new_accounts = {account["name"]: account for account in new["accounts"]}
    if set(old_accounts) != set(new_accounts):
        changes["accounts"] = (sorted(old_accounts), sorted(new_accounts))
    for name in old_accounts.keys() & new_accounts.keys():
        before, after = old_accounts[name], new_accounts[name]
        for key in before:
            if key not in LIVE_SETTINGS and before[key] != after[key]:
                changes[f"accounts[{name}].{key}"] = (before[key], after[key])
    return changes


def _shown(name: str, change: Change) -> str:
    if name.endswith("api_key") or isinstance(change[1], SecretStr):
        return f"{name} (changed)"
    if name == "accounts":
        return f"accounts {', '.join(change[0]) or 'none'} -> {', '.join(change[1]) or 'none'}"
    return f"{name} {_value(change[0])} -> {_value(change[1])}"


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


class RestartNotices:
    """Says once which reloaded settings take a restart: not again at every reload that still has
    them, but again when one changes anew (or changes back and then again)."""

    def __init__(self) -> None:
        self._logged: dict[str, Any] = {}

    def note(self, changes: dict[str, Change]) -> None:
        fresh = {
            name: change for name, change in changes.items() if self._logged.get(name, _NONE) != change[1]
        }
        self._logged = {name: change[1] for name, change in changes.items()}
        if fresh:
            log.warning(
                "settings reloaded, but %s %s a restart to change: running on with the values of the start",
                "; ".join(_shown(name, change) for name, change in sorted(fresh.items())),
                "takes" if len(fresh) == 1 else "take",
            )


_NONE = object()
