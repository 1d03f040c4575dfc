"""The settings of one API account: where it is, its key, its jobs and its discovery filters.

The top-level settings (settings.py) describe the default account; `accounts` lists several, each an
AccountSettings. Each field's docstring is its sentence in `--help`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

OPENAI_BASE_URL = "https://api.openai.com/v1"
AZURE_API_VERSION = "2024-10-21"
AZURE_TOKEN_SCOPE = "https://cognitiveservices.azure.com/.default"
# A job id goes into a URL path: only plain identifiers (OpenAI's look like ftjob-abc123).
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def split_list(value: Any) -> Any:
    """A list setting given as text: a JSON list, or comma-separated."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list ({exc.msg})") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class AccountFields(BaseModel):
    """What one API account needs: where it is, its key, its jobs and its discovery filters.

    The top-level settings describe the default account; `accounts` lists several instead.
    """

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, hide_input_in_errors=True, use_attribute_docstrings=True
    )

    api_flavor: Literal["openai", "azure"] = "openai"
    """Which API: openai, or azure for Azure OpenAI (an api-key header and an api-version)."""
    api_base_url: str = OPENAI_BASE_URL
    """The API's base URL (below every setting of ours: OPENAI_BASE_URL)."""
    api_key: SecretStr | None = None
    """The API key, never on the command line (below every setting of ours: OPENAI_API_KEY)."""
    api_key_file: Path | None = None
    """A file holding the API key (a mounted Secret), re-read when it changes."""
    organization: str | None = None
    """Sent as the OpenAI-Organization header."""
    project: str | None = None
    """Sent as the OpenAI-Project header."""
    jobs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """The fine-tuning job ids to watch, comma-separated or a JSON list."""
    azure_api_version: str | None = AZURE_API_VERSION
    """Azure's api-version query parameter (none is sent on Azure's /openai/v1 path)."""
    azure_auth: Literal["key", "entra"] = "key"
    """Azure's sign-in: key (the api-key header), or entra (keyless Microsoft Entra ID tokens)."""
    azure_token_scope: str = AZURE_TOKEN_SCOPE
    """The scope of the Entra ID tokens asked for (azure_auth entra)."""
    azure_client_id: str | None = None
    """A user-assigned managed identity's client id, or the workload identity's (azure_auth entra)."""
    discover: bool = False
    """Also watch the account's jobs that match the discovery filters."""
    discovery_interval_seconds: float = Field(300.0, ge=0.1)
    """Seconds between two reads of the jobs listing that look for new jobs."""
    discovery_statuses: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Discovery: only jobs in these statuses, comma-separated (empty: any)."""
    discovery_max_age_days: float | None = Field(30.0, gt=0)
    """Discovery: only jobs created within this many days (null: any age)."""
    discovery_metadata: dict[str, str] = Field(default_factory=dict)
    """Discovery: the API's metadata filter, a JSON object."""
    discovery_model_pattern: str | None = None
    """Discovery: a glob on the base model, such as gpt-4o-mini*."""
    discovery_suffix_pattern: str | None = None
    """Discovery: a glob on the job's suffix."""

    @field_validator("api_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("jobs", "discovery_statuses", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        return split_list(value)

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
        """Why no key can be sent, or None: none given, or a key file that is empty or unreadable."""
        if self.azure_auth == "entra":  # keyless: tokens from azure-identity
            return None
        if self.api_key_file is None and not (self.api_key and self.api_key.get_secret_value().strip()):
            return (
                "no API key; set CKPT_EXPORTER_API_KEY (or OPENAI_API_KEY), "
                "or api_key_file / CKPT_EXPORTER_API_KEY_FILE"
            )
        try:
            key = self.read_api_key()
        except OSError as exc:
            return f"cannot read {self.api_key_file} ({exc.strerror or exc})"
        except UnicodeDecodeError as exc:
            return f"{self.api_key_file} is not UTF-8 text (byte {exc.start})"
        return f"{self.api_key_file} is empty" if key is None else None


class AccountSettings(AccountFields):
    """One of several accounts (OpenAI projects, Azure resources) watched by one exporter."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """The account's name: the account label of openai_fine_tuning_job_info."""
