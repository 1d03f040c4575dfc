"""Where settings come from, and which of them a mistake is in.

The sources, by precedence: command-line flags, CKPT_EXPORTER_* variables, the YAML file, OpenAI's
own OPENAI_BASE_URL and OPENAI_API_KEY (set in many shells for other tools, so they rank below
every setting of ours), then the defaults. A bad value is reported with the source it came from
(the flag, the variable, or the file), an unknown name with the closest known one.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from ckpt_exporter.yamlfile import MAX_NESTING, YamlFileError, read_yaml

ENV_PREFIX = "CKPT_EXPORTER_"
CONFIG_FILE_VARIABLE = ENV_PREFIX + "CONFIG_FILE"
# OpenAI's variables, below the YAML file: {variable: setting}.
OPENAI_FALLBACKS = {"OPENAI_BASE_URL": "api_base_url", "OPENAI_API_KEY": "api_key"}
# The variables Kubernetes sets for each Service of the namespace (service links): a Service named
# ckpt-exporter gives CKPT_EXPORTER_SERVICE_HOST, CKPT_EXPORTER_PORT_9842_TCP, ...
_SERVICE_LINK = re.compile(r"^(.+?)_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)$")


class SettingsError(Exception):
    """Invalid configuration; the message is one line that names the setting."""


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a mistyped one, if any is close (difflib's ratio 0.6 or more)."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    match = closest(name, known)
    return f" (did you mean {match}?)" if match else ""


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML file's settings; SettingsError naming the file (and the line or key) otherwise."""
    try:
        data = read_yaml(path)
    except YamlFileError as exc:
        raise SettingsError(f"config file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: must be a YAML mapping of setting: value")
    return {str(key): value for key, value in data.items()}


class OpenAIFallbacks(PydanticBaseSettingsSource):
    """OPENAI_BASE_URL and OPENAI_API_KEY, for the settings no other source gave (empty: unset)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # not used: __call__ gives the values

    def __call__(self) -> dict[str, Any]:
        return {name: os.environ[var] for var, name in OPENAI_FALLBACKS.items() if os.environ.get(var)}


def environment_names(fields: Iterable[str]) -> set[str]:
    """The CKPT_EXPORTER_* variables that mean something: one per setting, and the file's."""
    return {ENV_PREFIX + name.upper() for name in fields} | {CONFIG_FILE_VARIABLE}


def unknown_environment(environ: Mapping[str, str], known: Collection[str]) -> list[str]:
    """A warning for each CKPT_EXPORTER_* variable that names no setting, with the closest one.

    A warning, not a refusal: the environment is shared with everything else in the shell or the
    pod. Kubernetes' service-link variables (a Service named ckpt-exporter gives
    CKPT_EXPORTER_SERVICE_HOST and CKPT_EXPORTER_PORT) are not ours and pass without a word.
    """
    present = {name.upper() for name in environ}
    warnings = []
    for name in sorted(present):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        link = _SERVICE_LINK.match(name)
        if link is not None and link.group(1) + "_SERVICE_HOST" in present:
            continue
        suffixes = {other.removeprefix(ENV_PREFIX): other for other in known}
        match = closest(name.removeprefix(ENV_PREFIX), suffixes)
        hint = f"; did you mean {suffixes[match]}?" if match else ""
        warnings.append(f"environment variable {name} names no setting and is ignored{hint}")
    return warnings


@dataclass
class Origins:
    """Which source gave each setting, to say where a bad value is."""

    cli: Collection[str] = ()
    environ: Collection[str] = ()  # upper-cased variable names
    config_file: Path | None = None
    file_keys: Collection[str] = ()
    account_fields: Collection[str] = field(default_factory=set)

    def of(self, name: str) -> str:
        if name in self.cli:
            return "--" + name.replace("_", "-")
        if ENV_PREFIX + name.upper() in self.environ:
            return ENV_PREFIX + name.upper()
        if name in self.file_keys:
            return f"config file {self.config_file}"
        for var, setting in OPENAI_FALLBACKS.items():
            if setting == name and var in self.environ:
                return var
        return "default"


def describe_validation_error(exc: ValidationError, origins: Origins, fields: Collection[str]) -> str:
    """One line for pydantic's errors: each names the setting, where it came from and what is wrong."""
    parts = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        loc = [str(part) for part in error["loc"]]
        if not loc:  # a check across settings; its message starts with the setting's name
            parts.append("invalid setting " + message)
            continue
        name = loc[0]
        where = name + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in loc[1:])
        if error["type"] == "extra_forbidden":
            known = origins.account_fields if len(loc) > 1 else fields
            parts.append(f"unknown setting {where} in {origins.of(name)}{did_you_mean(loc[-1], known)}")
            continue
        shown = repr(error.get("input"))
        if _may_echo(loc) and isinstance(error.get("input"), str | int | float) and shown not in message:
            message += f", got {shown}"
        parts.append(f"invalid setting {where} ({origins.of(name)}): {message}")
    return "; ".join(parts)


def _may_echo(loc: list[str]) -> bool:
    """Whether the rejected value may be quoted: never a key, nor a whole accounts list (keys inside)."""
    return "api_key" not in loc and loc != ["accounts"]


def deeply_nested_variables(environ: Mapping[str, str]) -> list[str]:
    """Our variables whose value opens more brackets than MAX_NESTING (JSON nested too deep)."""
    return sorted(
        name
        for name, value in environ.items()
        if name.upper().startswith(ENV_PREFIX) and value.count("[") + value.count("{") > MAX_NESTING
    )
