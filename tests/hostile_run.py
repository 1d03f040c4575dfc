"""The real exporter against tests/hostile_api.py, and what the tests read of it (issue 12).

with exporter_for(api, ["ftjob-a"]) as exporter:
    assert wait_for(lambda: error_reasons(exporter, "ftjob-a") == {"too_large": 1.0}, 20)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.helpers import DrainedExporterProcess
from tests.hostile_api import HostileApi, HostileServer

API_KEY = "sk-hostile-test-key-0123456789"
POLL = "0.3"
RSS_LIMIT_MB = 150
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
Labelled = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextmanager
def exporter_for(api: HostileApi, jobs: list[str], **settings: str) -> Iterator[DrainedExporterProcess]:
    """The real exporter polling the hostile API every 0.3 s, its request budget lifted (the key is
    API_KEY unless `api_key_file` is given)."""
    with HostileServer(api) as server:
        env = {
            "CKPT_EXPORTER_API_BASE_URL": server.base_url,
            **({} if "api_key_file" in settings else {"CKPT_EXPORTER_API_KEY": API_KEY}),
            "CKPT_EXPORTER_JOBS": ",".join(jobs),
            "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": POLL,
            "CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "1000",
            **{f"CKPT_EXPORTER_{name.upper()}": value for name, value in settings.items()},
        }
        exporter = DrainedExporterProcess(env)
        try:
            yield exporter
        finally:
            output = exporter.stop()
            assert API_KEY not in output


def samples(families: Any, names: tuple[str, ...]) -> Labelled:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
        if sample.name in names
    }


def try_samples(exporter: DrainedExporterProcess, names: tuple[str, ...]) -> Labelled:
    """The samples of /metrics (text format), or {} while it does not answer or does not parse."""
    try:
        return samples(parse_text(exporter.metrics()), names)
    except (httpx.TransportError, ValueError):
        return {}


def by_job(found: Labelled, name: str) -> dict[str, float]:
    return {dict(labels)["job_id"]: value for (n, labels), value in found.items() if n == name}


def error_reasons(exporter: DrainedExporterProcess, job_id: str) -> dict[str, float]:
    found = try_samples(exporter, ("ckpt_exporter_api_errors_total",))
    return {
        dict(labels)["reason"]: value
        for (_, labels), value in found.items()
        if dict(labels)["job_id"] == job_id
    }


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def log_lines(exporter: DrainedExporterProcess, needle: str) -> list[str]:
    return [line for line in exporter.output_so_far().split("\n") if needle in line]
