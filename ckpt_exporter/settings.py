"""Typed settings: CLI flags > environment (CKPT_EXPORTER_*) > YAML file > defaults.

Every name here is a public contract: users' configuration files, environment variables and the
Helm chart depend on them.
"""

from __future__ import annotations

import json
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "CKPT_EXPORTER_"
OPENAI_BASE_URL = "https://api.openai.com/v1"
AZURE_API_VERSION = "2024-10-21"
AZURE_TOKEN_SCOPE = "https://cognitiveservices.azure.com/.default"
DEFAULT_PORT = 9842  # in the exporter range 9100-9999; no well-known exporter uses it

# A job id goes into a URL path: only plain identifiers (OpenAI's look like ftjob-abc123).
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

# The YAML file is chosen at load time (--config or CKPT_EXPORTER_CONFIG_FILE).
_config_file: ContextVar[Path | None] = ContextVar("ckpt_exporter_config_file", default=None)


class SettingsError(Exception):
    """Invalid configuration; the message is one line that names the setting."""


def _env(name: str, *fallbacks: str) -> AliasChoices:
    """CKPT_EXPORTER_NAME, then the fallbacks (the field name itself works too: populate_by_name)."""
    return AliasChoices(ENV_PREFIX + name.upper(), *fallbacks)


class AccountFields(BaseModel):
    """What one API account needs: where it is, its key, its jobs and its discovery filters.

    The top-level settings describe the default account; `accounts` lists several instead.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    api_flavor: Literal["openai", "azure"] = "openai"
    api_base_url: str = Field(OPENAI_BASE_URL, validation_alias=_env("api_base_url", "OPENAI_BASE_URL"))
    api_key: SecretStr | None = Field(None, validation_alias=_env("api_key", "OPENAI_API_KEY"))
    api_key_file: Path | None = None
    organization: str | None = None
    project: str | None = None
    jobs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Azure OpenAI: the api-version query parameter; none on the v1 path (.../openai/v1).
    azure_api_version: str | None = AZURE_API_VERSION
    # Azure: the api-key header (key), or keyless Microsoft Entra ID tokens (entra: entra.py).
    azure_auth: Literal["key", "entra"] = "key"
    azure_token_scope: str = AZURE_TOKEN_SCOPE
    azure_client_id: str | None = None
    # Discovery: list the account's jobs and watch those that match (jobs above are always watched).
    discover: bool = False
    discovery_interval_seconds: float = Field(300.0, ge=0.1)
    discovery_statuses: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: any
    discovery_max_age_days: float | None = Field(30.0, gt=0)  # jobs created within; null: any age
    discovery_metadata: dict[str, str] = Field(default_factory=dict)  # the API's metadata filter
    discovery_model_pattern: str | None = None  # glob on the base model, e.g. gpt-4o-mini*
    discovery_suffix_pattern: str | None = None  # glob on the user's suffix

    @field_validator("api_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("jobs", "discovery_statuses", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON list ({exc.msg})") from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("jobs")
    @classmethod
    def _valid_job_ids(cls, value: list[str]) -> list[str]:
        for job_id in value:
            if not JOB_ID_PATTERN.match(job_id):
                raise ValueError(
                    f"{job_id!r} is not a plain job identifier (letters, digits, '_', '-', '.', ':')"
                )
        return list(dict.fromkeys(value))  # drop duplicates, keep order

    @field_validator("discovery_metadata", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):  # from a flag; the environment source decodes JSON itself
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object ({exc.msg})") from None
        return value

    @model_validator(mode="after")
    def _key_file_exists(self) -> AccountFields:
        if self.api_key_file is not None and not self.api_key_file.is_file():
            raise ValueError(f"api_key_file: {self.api_key_file} is not a readable file")
        return self

    @model_validator(mode="after")
    def _azure_needs_a_resource(self) -> AccountFields:
        if self.api_flavor == "azure" and self.api_base_url == OPENAI_BASE_URL:
            raise ValueError(
                "api_base_url: the azure flavor needs the resource's URL, "
                "https://RESOURCE.openai.azure.com/openai"
            )
        if self.azure_auth == "entra" and self.api_flavor != "azure":
            raise ValueError("azure_auth: entra signs in to Azure; set api_flavor: azure")
        return self

    @property
    def api_version(self) -> str | None:
        """The api-version to send: Azure's, except on its v1 path."""
        if self.api_flavor != "azure" or self.api_base_url.endswith("/openai/v1"):
            return None
        return self.azure_api_version or None

    def read_api_key(self) -> str | None:
        """The key to send: the file's current content (rotated Secrets) wins over api_key."""
        if self.api_key_file is not None:
            return self.api_key_file.read_text(encoding="utf-8").strip() or None
        return self.api_key.get_secret_value() if self.api_key is not None else None

    def key_problem(self) -> str | None:
        if self.azure_auth == "entra":  # keyless: tokens from azure-identity
            return None
        if self.api_key_file is None and not (self.api_key and self.api_key.get_secret_value().strip()):
            return (
                "no API key; set CKPT_EXPORTER_API_KEY (or OPENAI_API_KEY), "
                "or api_key_file / CKPT_EXPORTER_API_KEY_FILE"
            )
        if self.api_key_file is not None and self.read_api_key() is None:
            return f"{self.api_key_file} is empty"
        return None


class AccountSettings(AccountFields):
    """One of several accounts (OpenAI projects, Azure resources) watched by one exporter."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Settings(BaseSettings, AccountFields):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        populate_by_name=True,
        hide_input_in_errors=True,
        validate_default=True,
    )

    accounts: list[AccountSettings] = Field(default_factory=list)
    poll_interval_seconds: float = Field(60.0, ge=0.1)
    full_read_every_polls: int = Field(10, ge=1)
    listen_address: str = "0.0.0.0"
    listen_port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    max_concurrency: int = Field(16, ge=1, le=1024)
    page_size: int = Field(20, ge=1, le=100)
    request_timeout_seconds: float = Field(30.0, gt=0)
    # httpx's API on aiohttp's transport by default: a third of the CPU per request (docs/benchmarks.md).
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    max_retries: int = Field(2, ge=0, le=10)
    # The request budget shared by every job (api.py), and TLS / basic auth for /metrics
    # (webconfig.py: the Prometheus exporter-toolkit's web config file format).
    max_requests_per_second: float = Field(10.0, gt=0, allow_inf_nan=False)
    web_config_file: Path | None = None
    # Sharding, as kube-state-metrics does it: this replica exports the jobs with
    # md5(job_id) mod total_shards == shard. shard_from_pod_name takes the shard from the ordinal
    # at the end of the StatefulSet pod's name (POD_NAME, else HOSTNAME).
    shard: int = Field(0, ge=0)
    total_shards: int = Field(1, ge=1)
    shard_from_pod_name: bool = False
    log_level: LogLevel = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("web_config_file")
    @classmethod
    def _valid_web_config(cls, value: Path | None) -> Path | None:
        if value is not None:
            from ckpt_exporter.webconfig import WebConfigError, load_web_config

            try:
                load_web_config(value)
            except WebConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _shard_in_range(self) -> Settings:
        if self.shard_from_pod_name:
            pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or ""
            match = re.search(r"-(\d+)$", pod)
            if match is None:
                raise ValueError(f"shard_from_pod_name: pod name {pod!r} does not end in -<ordinal>")
            self.shard = int(match.group(1))
        if self.shard >= self.total_shards:
            raise ValueError(f"shard: {self.shard} is not below total_shards ({self.total_shards})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _config_file.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    def account_list(self) -> list[AccountSettings]:
        """The accounts to watch: `accounts`, or the default account of the top-level settings."""
        if self.accounts:
            return self.accounts
        fields = {name: getattr(self, name) for name in AccountFields.model_fields}
        return [AccountSettings.model_validate({"name": "default", **fields})]

    def require_api_key(self) -> None:
        """What `run` needs beyond valid values: a key and something to watch, in every account."""
        if self.accounts and (self.jobs or self.discover):
            raise SettingsError("accounts: give jobs and discover inside each account, not at the top level")
        seen: dict[str, str] = {}
        for account in self.account_list():
            where = "" if not self.accounts else f"accounts[{account.name}]."
            problem = account.key_problem()
            if problem is not None:
                raise SettingsError(f"{where}api_key: {problem}")
            if not account.jobs and not account.discover:
                raise SettingsError(
                    f"{where}jobs: no job to watch; set CKPT_EXPORTER_JOBS (comma-separated job ids) "
                    "or CKPT_EXPORTER_DISCOVER=true"
                )
            for job_id in account.jobs:
                if job_id in seen:
                    raise SettingsError(
                        f"jobs: {job_id} is listed in two accounts ({seen[job_id]}, {account.name})"
                    )
                seen[job_id] = account.name

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, with the key masked (for check-config)."""
        data = self.model_dump(mode="json")
        data["api_key"] = "********" if self.api_key is not None else None
        for shown, account in zip(data["accounts"], self.accounts, strict=True):
            shown["api_key"] = "********" if account.api_key is not None else None
        return data


# Settings that are never accepted on the command line (a key there shows in `ps`).
SECRET_FIELDS = frozenset({"api_key"})


def cli_field_names() -> list[str]:
    return [name for name in Settings.model_fields if name not in SECRET_FIELDS]


def settings_file() -> Path | None:
    """The YAML file named by CKPT_EXPORTER_CONFIG_FILE, if any."""
    value = os.environ.get(ENV_PREFIX + "CONFIG_FILE")
    return Path(value) if value else None


def load_settings(cli_values: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Build the settings; raise SettingsError with a one-line message naming the bad setting."""
    config_file = config_file or settings_file()
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file: {config_file} does not exist or is not a file")
    token = _config_file.set(config_file)
    try:
        return Settings(**{k: v for k, v in (cli_values or {}).items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SettingsError(f"config file {config_file}: invalid YAML{where}: {problem}") from None
    except OSError as exc:
        raise SettingsError(f"config file {config_file}: {exc.strerror or exc}") from None
    except (TypeError, ValueError):
        raise SettingsError(f"config file {config_file}: must be a YAML mapping of setting: value") from None
    finally:
        _config_file.reset(token)


def _field_name(loc: str) -> str:
    """The field a validation error is about, whichever alias (env variable) supplied it."""
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and loc in alias.choices:
            return name
    return loc


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        if not error["loc"]:  # a check across settings; its message starts with the setting's name
            parts.append("invalid setting " + str(error["msg"]).removeprefix("Value error, "))
            continue
        name = _field_name(str(error["loc"][0]))
        if len(error["loc"]) > 1:  # inside accounts: accounts[0].api_base_url
            inner = ".".join(str(part) for part in error["loc"][2:])
            where = f"{name}[{error['loc'][1]}]" + (f".{inner}" if inner else "")
            name = str(error["loc"][-1])
        elif name in Settings.model_fields:
            where = f"{name} ({ENV_PREFIX + name.upper()})"
        else:
            where = name
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        elif name not in SECRET_FIELDS and "input" in error and isinstance(error["input"], str | int | float):
            message += f", got {error['input']!r}"
        parts.append(f"invalid setting {where}: {message}")
    return "; ".join(parts)
