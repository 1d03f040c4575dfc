"""A response body, decoded as it arrives and never held beyond its byte cap.

The cap applies to the decoded bytes, counted before they are kept: a gzip bomb (a kilobyte on the
wire, gigabytes inflated) costs at most the cap. Only what the exporter asks for is decoded
(Accept-Encoding: gzip, deflate), in one layer: a stacked encoding such as `gzip, gzip`, which no
API sends and which would multiply the inflation, is refused before a byte is inflated.
"""

from __future__ import annotations

import zlib

ACCEPT_ENCODING = "gzip, deflate"
# Parsed, JSON takes up to some 25 times its size (`[{},{},...]`: a dict of 64 bytes for every 3),
# so a body is parsed only if it holds at most this many values: a page of 100 jobs, the largest
# real one, holds a few thousand.
MAX_JSON_VALUES = 200_000
DECODED = ("gzip", "x-gzip", "deflate")


class TooLarge(Exception):
    def __init__(self, status: int, size: int, cap: int) -> None:
        super().__init__(f"the response is larger than {cap} bytes (at least {size})")
        self.status = status


class BadEncoding(Exception):
    """A Content-Encoding other than one layer of gzip or deflate, or a body that does not decode."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def content_codings(header: str) -> list[str]:
    """The codings a Content-Encoding header lists, identity left out.

    >>> content_codings("gzip"), content_codings("gzip, GZIP"), content_codings("identity")
    (['gzip'], ['gzip', 'gzip'], [])
    """
    return [c for c in (part.strip().lower() for part in header.split(",")) if c and c != "identity"]


class BoundedBody:
    """The chunks of one response body, decoded and kept within `cap` bytes (TooLarge past it)."""

    def __init__(self, status: int, content_encoding: str, cap: int) -> None:
        codings = content_codings(content_encoding)
        if len(codings) > 1 or (codings and codings[0] not in DECODED):
            raise BadEncoding(
                status, f"Content-Encoding {content_encoding!r}: only one of gzip, deflate is read"
            )
        self._status = status
        self._cap = cap
        self._coding = codings[0] if codings else None
        self._inflater = self._new_inflater(raw_deflate=False)
        self._started = False
        self._chunks: list[bytes] = []
        self.size = 0

    def _new_inflater(self, raw_deflate: bool) -> zlib._Decompress | None:
        if self._coding is None:
            return None
        if self._coding != "deflate":
            return zlib.decompressobj(zlib.MAX_WBITS | 16)
        # deflate is zlib-wrapped by the standard, raw from some servers: both are read, as httpx does
        return zlib.decompressobj(-zlib.MAX_WBITS if raw_deflate else zlib.MAX_WBITS)

    def feed(self, chunk: bytes) -> None:
        self._keep(self._inflate(chunk) if self._inflater is not None else chunk)

    def _inflate(self, chunk: bytes) -> bytes:
        assert self._inflater is not None
        try:
            # Never more than the cap leaves room for (plus one byte, to know it is over).
            decoded = self._inflater.decompress(chunk, self._cap - self.size + 1)
        except zlib.error as exc:
            if self._coding == "deflate" and not self._started:
                self._inflater, self._started = self._new_inflater(raw_deflate=True), True
                return self._inflate(chunk)
            raise BadEncoding(self._status, f"the {self._coding} body does not decode ({exc})") from None
        self._started = True
        return decoded

    def _keep(self, decoded: bytes) -> None:
        self.size += len(decoded)
        if self.size > self._cap:
            raise TooLarge(self._status, self.size, self._cap)
        if decoded:
            self._chunks.append(decoded)

    def body(self) -> bytes:
        """The whole decoded body, once every chunk has been fed."""
        if self._inflater is not None:
            try:
                self._keep(self._inflater.flush())
            except zlib.error as exc:
                raise BadEncoding(self._status, f"the {self._coding} body does not decode ({exc})") from None
        return b"".join(self._chunks)


def json_values_at_most(body: bytes) -> int:
    """An upper bound on the number of values in a JSON text: each one but the first follows a `[`,
    a `,` or a `:` (those inside strings count too, which only raises the bound).

    >>> json_values_at_most(b'{"data": [1, {"a": []}], "has_more": false}')
    8
    """
    return 1 + body.count(b"[") + body.count(b",") + body.count(b":")
