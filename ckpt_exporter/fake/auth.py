"""Which credentials the fake accepts on each address form, as OpenAI and Azure do.

The address forms, told apart by the request's path:

- OpenAI: `/v1/fine_tuning/...` (or the server's own prefix): `Authorization: Bearer <API key>`.
- Azure classic: `/openai/fine_tuning/...?api-version=...`. Without api-version Azure answers
  404 `{"error": {"code": "404", "message": "Resource not found"}}`, not 400 (MicrosoftDocs/azure-docs
  issue 114602 asks for a 400; the 404 body is the one clients report, e.g. ThinkInAIXYZ/deepchat
  issue 262), so the fake does the same.
- Azure v1: `/openai/v1/fine_tuning/...`, no api-version (GA since August 2025).
- Foundry project: `/api/projects/<project>/openai/v1/fine_tuning/...`, the same v1 API (any project
  name is served).

What Azure accepts on each (Microsoft's Azure OpenAI REST reference, "Authentication": an `api-key`
header, or Microsoft Entra ID with `Authorization: Bearer <token>`; its v1 API guide: the OpenAI
client's key-based auth, which sends the key as `Authorization: Bearer <key>`, works on
/openai/v1/):

    form              api-key header   Bearer <API key>   Bearer <Entra token>
    Azure classic     yes              no (a token)       yes
    Azure v1          yes              yes                yes
    Foundry project   yes              yes                yes

On the classic form a Bearer credential is taken as an Entra token only: clients that sent their
key that way report Azure's token answer (run-llama/llama_index issue 12484). The answers, in
Azure's shapes: a wrong key 401 `{"error": {"code": "401", "message": "Access denied due to
invalid subscription key..."}}`; a missing, invalid or expired token 401 `{"statusCode": 401,
"message": "Unauthorized. Access token is missing, invalid, audience is incorrect
(https://cognitiveservices.azure.com), or have expired."}`; a key on a resource whose key
authentication is disabled (disableLocalAuth) 403 `{"error": {"code": "AuthenticationTypeDisabled",
"message": "Key based authentication is disabled for this resource."}}` (as clients report it:
microsoft/sample-app-aoai-chatGPT issue 1000). When both an api-key header and a Bearer credential
come, the fake judges the api-key header.

Entra tokens are judged by the `token_check` the FakeApi is given (True for a valid, unexpired
token); fake/identity.py issues them. A fake with neither a key nor a token check accepts anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ckpt_exporter.fake.documents import error_body

TokenCheck = Callable[[str], bool]


class AddressForm(StrEnum):
    OPENAI = "openai"
    AZURE_CLASSIC = "azure_classic"
    AZURE_V1 = "azure_v1"
    FOUNDRY_PROJECT = "foundry_project"


AZURE_BASES = ("/openai", "/openai/v1", "/api/projects/{project}/openai/v1")


def address_form(path: str) -> AddressForm:
    if path.startswith("/openai/v1/"):
        return AddressForm.AZURE_V1
    if path.startswith("/openai/"):
        return AddressForm.AZURE_CLASSIC
    if path.startswith("/api/projects/") and "/openai/v1/" in path:
        return AddressForm.FOUNDRY_PROJECT
    return AddressForm.OPENAI


@dataclass(frozen=True)
class Refusal:
    status: int
    body: dict[str, Any]


NO_API_VERSION = Refusal(404, {"error": {"code": "404", "message": "Resource not found"}})
AZURE_BAD_KEY = Refusal(
    401,
    {
        "error": {
            "code": "401",
            "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
            "to provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource.",
        }
    },
)
AZURE_BAD_TOKEN = Refusal(
    401,
    {
        "statusCode": 401,
        "message": "Unauthorized. Access token is missing, invalid, audience is incorrect "
        "(https://cognitiveservices.azure.com), or have expired.",
    },
)
KEY_AUTH_DISABLED = Refusal(
    403,
    {
        "error": {
            "code": "AuthenticationTypeDisabled",
            "message": "Key based authentication is disabled for this resource.",
        }
    },
)
OPENAI_BAD_KEY = Refusal(401, error_body("Incorrect API key provided.", "invalid_api_key"))


@dataclass(frozen=True)
class Credentials:
    """What the fake accepts: the API key (None: no key is valid, unless nothing is checked at
    all), the Entra token check, and whether key authentication is enabled."""

    api_key: str | None
    token_check: TokenCheck | None = None
    key_auth: bool = True

    @property
    def open(self) -> bool:
        """Neither a key nor a token is checked: anything goes (the benchmark's fake)."""
        return self.api_key is None and self.token_check is None and self.key_auth

    def refusal(self, path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> Refusal | None:
        """The answer refusing the request, or None when it may go on."""
        form = address_form(path)
        if form is AddressForm.AZURE_CLASSIC and "api-version" not in query:
            return NO_API_VERSION
        authorization = headers.get("Authorization", "")
        bearer = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None
        if self.open:
            return None
        if form is AddressForm.OPENAI:  # OpenAI knows neither api-key nor Entra tokens
            return None if self.api_key is not None and bearer == self.api_key else OPENAI_BAD_KEY
        api_key = headers.get("api-key")
        if api_key is not None:
            return self._judge_key(api_key)
        if bearer is None:
            return AZURE_BAD_KEY if self.key_auth else AZURE_BAD_TOKEN
        if self.token_check is not None and self.token_check(bearer):
            return None
        if form is AddressForm.AZURE_CLASSIC:  # a Bearer credential is a token there, never a key
            return AZURE_BAD_TOKEN
        if self.api_key is not None and bearer == self.api_key:
            return self._judge_key(bearer)
        return AZURE_BAD_TOKEN if _looks_like_a_token(bearer) or not self.key_auth else AZURE_BAD_KEY

    def _judge_key(self, key: str) -> Refusal | None:
        if not self.key_auth:
            return KEY_AUTH_DISABLED
        return None if key == self.api_key else AZURE_BAD_KEY


def _looks_like_a_token(credential: str) -> bool:
    """A JWT (header.payload.signature), as Entra's access tokens are; an API key is not."""
    return credential.count(".") == 2
