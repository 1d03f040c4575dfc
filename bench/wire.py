"""What crosses the wire: plain GETs and POSTs to the children, a timed scrape, and reading samples
out of a text-format body."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import time
from dataclasses import dataclass
from typing import Any


def http_get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 60) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET :{port}{path}: HTTP {response.status}")
        return body
    finally:
        connection.close()


def http_post_json(port: int, path: str, document: dict[str, Any]) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST", path, body=json.dumps(document), headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        return json.loads(response.read())
    finally:
        connection.close()


@dataclass
class Scrape:
    seconds: float
    wire_bytes: int
    body: bytes  # decompressed


def scrape(port: int, gzipped: bool) -> Scrape:
    """One scrape as Prometheus does it: a GET of /metrics, timed to the last byte of the body."""
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        started = time.perf_counter()
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        raw = response.read()
        seconds = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"scrape of :{port}: HTTP {response.status}")
        compressed = response.getheader("Content-Encoding") == "gzip"
    finally:
        connection.close()
    return Scrape(seconds, len(raw), gzip.decompress(raw) if compressed else raw)


def sample_value(body: bytes, name: str) -> float | None:
    match = re.search(rb"^" + re.escape(name.encode()) + rb"(?:\{[^}]*\})? (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else None


def count_samples(body: bytes, prefixes: tuple[bytes, ...] = (b"openai_", b"ckpt_exporter_")) -> int:
    return sum(1 for line in body.splitlines() if line.startswith(prefixes))
