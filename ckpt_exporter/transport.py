"""The HTTP side of the API client: the client factory, the key and its auth, one GET, its body.

The GET is built by hand (see `build_request`) and its body read within a byte cap, decoded by
ckpt_exporter.bodies as it arrives; whatever the transport library raises comes out as an
httpx.TransportError, a TooLarge or a BadEncoding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from ckpt_exporter.bodies import ACCEPT_ENCODING, BadEncoding, BoundedBody, TooLarge
from ckpt_exporter.filestamp import FileStamp, file_stamp
from ckpt_exporter.logging_setup import register_secret

log = logging.getLogger("ckpt_exporter.api")  # the API client's, as before the split

# A page of 100 checkpoints is about 50 KB; anything near this is not a checkpoint list.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class KeySource:
    """The API key, from settings or a mounted file that is re-read when it changes (rotation).

    Every key it hands out is registered for redaction from the logs.
    """

    def __init__(self, key: str | None = None, key_file: Path | None = None) -> None:
        self._key = key
        self._file = key_file
        self._stamp: FileStamp | None = None
        self._problem: str | None = None  # what is wrong with the file, logged once
        register_secret(key)

    def get(self) -> str | None:
        if self._file is None:
            return self._key
        stamp = file_stamp(self._file)
        if stamp == self._stamp:
            return self._key
        if stamp is None:  # removed, or a Secret being swapped: keep the last key we read
            self._stamp = None
            return self._keep("cannot be read (missing or unreadable)")
        try:
            key = self._file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            return self._keep(f"cannot be read ({type(exc).__name__})")
        self._stamp = stamp
        if not key:
            return self._keep("is empty")
        register_secret(key)
        if self._key is not None and key != self._key:
            log.info("the API key file %s changed: using the new key", self._file)
        elif self._problem is not None:
            log.info("the API key file %s is readable again: using its key", self._file)
        self._key, self._problem = key, None
        return self._key

    def _keep(self, problem: str) -> str | None:
        if problem != self._problem:
            self._problem = problem
            log.warning("the API key file %s %s: still using the key read before", self._file, problem)
        return self._key


class ApiKeyAuth(httpx.Auth):
    """Authorization: Bearer KEY (OpenAI), or api-key: KEY (Azure)."""

    def __init__(self, keys: KeySource, header: str = "Authorization") -> None:
        self._keys = keys
        self._header = header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = self._keys.get()
        if key and not key.isprintable():
            # A line break would split the header (and transports log the refused value): refused
            # here, so that the key never reaches a header; the request fails as invalid_request.
            raise ValueError("the API key holds a control character")
        if key:
            request.headers[self._header] = f"Bearer {key}" if self._header == "Authorization" else key
        yield request


def make_http_client(
    base_url: str,
    *,
    auth: httpx.Auth | None,
    headers: dict[str, str],
    timeout: float,
    max_connections: int,
    transport: str = "aiohttp",
    params: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """One AsyncClient per process: keep-alive connections, timeouts, the API's base URL."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    async_transport: httpx.AsyncBaseTransport
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        async_transport = AiohttpTransport(limits=limits)
    else:
        async_transport = httpx.AsyncHTTPTransport(limits=limits)
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/",
        auth=auth,
        # What bodies.BoundedBody decodes, whatever optional decoders httpx finds installed.
        headers={"Accept-Encoding": ACCEPT_ENCODING, **headers},
        params=params,
        timeout=httpx.Timeout(timeout),
        transport=async_transport,
        follow_redirects=False,
    )


@dataclass(frozen=True)
class Reply:
    """A response whose body has been read (within the byte cap)."""

    response: httpx.Response
    body: bytes

    @property
    def status(self) -> int:
        return self.response.status_code


class Unsendable(Exception):
    """A request that cannot be put on the wire: a URL too long or invalid, a control character in
    a header (the API key). Its message is the exception's type only: a header may be a secret."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(type(cause).__name__)


class Transport:
    """GETs of paths under the client's base URL, each body read whole within `max_response_bytes`."""

    def __init__(self, http: httpx.AsyncClient, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._http = http
        self._base_url = str(http.base_url)  # ends with "/"
        self._extensions = {"timeout": http.timeout.as_dict()}
        self.max_response_bytes = max_response_bytes

    @property
    def read_timeout(self) -> float | None:
        return self._http.timeout.read

    def build_request(self, path: str, params: dict[str, Any]) -> httpx.Request:
        """The GET for `path` (relative to the base URL) with `params` after the client's own.

        Built here rather than by `client.stream("GET", path, params=...)`: httpx's request builder
        parses and merges the URL three times over, a large share of the exporter's CPU.
        """
        own = [(key, value) for key, value in self._http.params.multi_items() if key not in params]
        query = urlencode([*own, *params.items()], quote_via=quote)
        url = httpx.URL(f"{self._base_url}{path}?{query}" if query else f"{self._base_url}{path}")
        request = httpx.Request("GET", url, headers=self._http.headers, extensions=self._extensions)
        if self._http.cookies:  # what the API set (e.g. a load balancer's), sent back as httpx does
            self._http.cookies.set_cookie_header(request)
        return request

    async def get(self, path: str, params: dict[str, Any]) -> Reply:
        """One attempt; TooLarge past the cap, Unsendable for a request that cannot go out,
        httpx.TransportError for any transport failure."""
        try:
            return await self._fetch(path, params)
        except httpx.LocalProtocolError as exc:  # httpx's own transport refusing a header
            raise Unsendable(exc) from None
        except (httpx.TransportError, TooLarge, BadEncoding, TimeoutError):  # the caller maps a timeout
            raise
        except (httpx.InvalidURL, ValueError) as exc:  # aiohttp refuses a header with a ValueError
            raise Unsendable(exc) from None
        except Exception as exc:
            # A transport library's own error that slipped through its mapping (httpx-aiohttp
            # re-raises what it does not know): a failed attempt like any other.
            if not (isinstance(exc, OSError | EOFError) or _is_transport_library_error(exc)):
                raise
            log.debug("request failed with %s", type(exc).__name__)
            raise httpx.TransportError(f"{type(exc).__name__}") from exc

    async def _fetch(self, path: str, params: dict[str, Any]) -> Reply:
        cap = self.max_response_bytes
        response = await self._http.send(self.build_request(path, params), stream=True)
        async with contextlib.aclosing(response):
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > cap:
                raise TooLarge(response.status_code, int(declared), cap)
            if response.is_stream_consumed:  # built with its content (a test double): httpx read it
                body = BoundedBody(response.status_code, "", cap)
                body.feed(response.content)
                return Reply(response, body.body())
            # The raw bytes, decoded here within the cap (httpx would inflate a chunk whole first).
            body = BoundedBody(response.status_code, response.headers.get("content-encoding", ""), cap)
            async for chunk in response.aiter_raw():
                body.feed(chunk)
            return Reply(response, body.body())


def is_timeout(exc: httpx.TransportError) -> bool:
    """A timeout, not some other transport failure.

    httpx-aiohttp maps every aiohttp connection error (a reset, a server that hung up) to
    httpx.ConnectTimeout, so the underlying cause decides.
    """
    if not isinstance(exc, httpx.TimeoutException):
        return False
    cause = exc.__cause__
    return cause is None or isinstance(cause, TimeoutError)


def _is_transport_library_error(exc: Exception) -> bool:
    """aiohttp's errors (the transport under httpx-aiohttp), without importing aiohttp here."""
    return any(cls.__module__.startswith("aiohttp") for cls in type(exc).__mro__)
