"""Typed settings: CLI flags > environment (CKPT_EXPORTER_*) > YAML file > OPENAI_* > defaults.

Every name here is a public contract: users' configuration files, environment variables and the
Helm chart depend on them. Each setting's docstring is its sentence in `--help`.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ckpt_exporter.account_settings import AccountFields, AccountSettings, split_list
from ckpt_exporter.listen import ListenAddress, check_host, listen_problem, parse_listen_address
from ckpt_exporter.settings_sources import (
    CONFIG_FILE_VARIABLE,
    ENV_PREFIX,
    OpenAIFallbacks,
    Origins,
    SettingsError,
    deeply_nested_variables,
    describe_validation_error,
    read_config_file,
)
from ckpt_exporter.yamlfile import MAX_NESTING

__all__ = [
    "AccountSettings",
    "Settings",
    "SettingsError",
    "cli_field_names",
    "load_settings",
    "settings_file",
]

DEFAULT_PORT = 9842  # in the exporter range 9100-9999; no well-known exporter uses it
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# Paths the server answers itself; the telemetry path must be another.
RESERVED_PATHS = frozenset({"/", "/healthz", "/readyz"})

# The YAML file's settings, read once per load (see load_settings).
_file_values: ContextVar[dict[str, Any] | None] = ContextVar("ckpt_exporter_file_values", default=None)


class Settings(BaseSettings, AccountFields):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        populate_by_name=True,
        hide_input_in_errors=True,
        validate_default=True,
        use_attribute_docstrings=True,
    )

    accounts: list[AccountSettings] = Field(default_factory=list)
    """Several accounts, each with the account settings and a name (YAML, or JSON in the environment)."""
    poll_interval_seconds: float = Field(60.0, ge=0.1)
    """Seconds between polls (down to 0.1)."""
    full_read_every_polls: int = Field(10, ge=1)
    """Every Nth poll of a job re-reads its whole checkpoint list."""
    listen_address: str = "0.0.0.0"
    """The host or IP address /metrics is served on, without a port (see listen_port)."""
    listen_port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    """The port /metrics is served on."""
    web_listen_address: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Addresses to serve on (host:port, [IPv6]:port, :port for all), instead of listen_address/port."""
    web_telemetry_path: str = "/metrics"
    """The path the metrics are served at."""
    max_concurrency: int = Field(16, ge=1, le=1024)
    """API requests in flight at once, over every job."""
    page_size: int = Field(20, ge=1, le=100)
    """The limit sent when listing checkpoints and events (1-100)."""
    request_timeout_seconds: float = Field(30.0, gt=0)
    """The timeout of one API request, in seconds."""
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    """The transport under httpx's client: aiohttp, or httpx's own (about 5 times the CPU a request)."""
    max_retries: int = Field(2, ge=0, le=10)
    """Retries of a failed API request before the job's poll counts as failed."""
    max_requests_per_second: float = Field(10.0, gt=0, allow_inf_nan=False)
    """API requests per second, every job together, evenly spaced."""
    web_config_file: Path | None = None
    """TLS and basic auth for /metrics: a web config file in the exporter-toolkit's format."""
    shard: int = Field(0, ge=0)
    """This replica watches the jobs with md5(job_id) mod total_shards == shard."""
    total_shards: int = Field(1, ge=1)
    """How many replicas share the jobs."""
    shard_from_pod_name: bool = False
    """Take the shard from the ordinal ending the StatefulSet pod's name (POD_NAME, else HOSTNAME)."""
    log_level: LogLevel = "INFO"
    """The least severe log lines written: debug, info, warn, error."""
    log_format: Literal["text", "logfmt", "json"] = "text"
    """How log lines are written: text, logfmt or json."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return "WARNING" if value.upper() == "WARN" else value.upper()

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("listen_address")
    @classmethod
    def _host_without_port(cls, value: str) -> str:
        return check_host(value.strip())

    @field_validator("web_listen_address", mode="before")
    @classmethod
    def _listen_addresses(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().startswith('["'):
            value = [value]  # "[::1]:9842" is an address, not a JSON list
        value = split_list(value)
        if not isinstance(value, list):
            return value
        # Each flag given is one element; one may still hold several, comma-separated.
        texts = [text.strip() for item in value for text in str(item).split(",") if text.strip()]
        return [str(parse_listen_address(text)) for text in texts]

    @field_validator("web_telemetry_path")
    @classmethod
    def _telemetry_path(cls, value: str) -> str:
        if not re.match(r"^/[^\s?#]*$", value):
            raise ValueError("must be a path starting with /, without spaces, '?' or '#'")
        if value in RESERVED_PATHS:
            raise ValueError(f"{value} is the server's own; choose another path")
        return value

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
        file_settings = InitSettingsSource(settings_cls, init_kwargs=_file_values.get() or {})
        return init_settings, env_settings, file_settings, OpenAIFallbacks(settings_cls)

    def listen_addresses(self) -> list[ListenAddress]:
        """Where to serve: web_listen_address, or else listen_address and listen_port."""
        if self.web_listen_address:
            return [parse_listen_address(text) for text in self.web_listen_address]
        return [ListenAddress(self.listen_address, self.listen_port)]

    def account_list(self) -> list[AccountSettings]:
        """The accounts to watch: `accounts`, or the default account of the top-level settings."""
        if self.accounts:
            return self.accounts
        fields = {name: getattr(self, name) for name in AccountFields.model_fields}
        return [AccountSettings.model_validate({"name": "default", **fields})]

    def check_runnable(self) -> None:
        """Raise SettingsError unless the exporter could start with these settings.

        What `run` needs beyond valid values, and what check-config refuses alike: in every account
        a key that can be read and something to watch, no job in two accounts, and listen addresses
        that resolve to addresses of this machine.
        """
        if self.accounts and (self.jobs or self.discover):
            raise SettingsError("accounts: give jobs and discover inside each account, not at the top level")
        seen: dict[str, str] = {}
        for account in self.account_list():
            where = "" if not self.accounts else f"accounts[{account.name}]."
            problem = account.key_problem()
            if problem is not None:
                setting = "api_key_file" if account.api_key_file is not None else "api_key"
                raise SettingsError(f"{where}{setting}: {problem}")
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
        for address in self.listen_addresses():
            problem = listen_problem(address)
            if problem is not None:
                name = "web_listen_address" if self.web_listen_address else "listen_address"
                raise SettingsError(f"{name}: cannot listen on {problem}")

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
    value = os.environ.get(CONFIG_FILE_VARIABLE)
    return Path(value) if value else None


def load_settings(cli_values: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Build the settings; raise SettingsError with a one-line message naming the bad setting."""
    config_file = config_file or settings_file()
    file_values: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.is_file():
            raise SettingsError(f"config file: {config_file} does not exist or is not a file")
        file_values = read_config_file(config_file)
    values = {k: v for k, v in (cli_values or {}).items() if v is not None}
    origins = Origins(
        cli=set(values),
        environ={name.upper() for name in os.environ},
        config_file=config_file,
        file_keys=set(file_values),
        account_fields=set(AccountSettings.model_fields),
    )
    token = _file_values.set(file_values)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, origins, Settings.model_fields)) from None
    except RecursionError:  # JSON in the environment (CKPT_EXPORTER_ACCOUNTS) nested thousands deep
        names = ", ".join(deeply_nested_variables(os.environ)) or "the environment"
        raise SettingsError(f"{names}: nested deeper than {MAX_NESTING} levels") from None
    finally:
        _file_values.reset(token)
