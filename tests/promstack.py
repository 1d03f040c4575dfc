"""A real Prometheus for the tests: started on a free port, scraping the exporter, with the alert rules.

Shared by tests/test_prometheus_e2e.py and tests/test_prometheus_methods.py (tests/helpers.py holds
the other shared helpers; this part is kept apart to keep each module short).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from ckpt_exporter.fake import FakeApi, FakeApiServer
from tests.helpers import REPO, ExporterProcess, free_port, require_tool, wait_for

ALERTS = REPO / "helm" / "ckpt-exporter" / "files" / "alerts.yaml"

Labels = frozenset[tuple[str, str]]
Series = dict[Labels, float]


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str, what: str = "") -> dict[str, Any]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = response.json()
        assert response.status_code == 200 and body["status"] == "success", (what, expr, body)
        return body

    def query_range(self, expr: str, what: str = "", seconds: int = 30) -> dict[str, Any]:
        end = time.time()
        params: dict[str, str | float] = {"query": expr, "start": end - seconds, "end": end, "step": 1}
        response = httpx.get(self.url + "/api/v1/query_range", params=params, timeout=10)
        body: dict[str, Any] = response.json()
        assert response.status_code == 200 and body["status"] == "success", (what, expr, body)
        return body

    def series(self, expr: str) -> Series:
        body = self.query(expr)
        assert body["data"]["resultType"] == "vector", (expr, body)
        out: Series = {}
        for item in body["data"]["result"]:
            labels = frozenset(item["metric"].items())
            assert labels not in out, f"duplicate series {dict(labels)} for {expr}"
            out[labels] = float(item["value"][1])
        return out

    def get(self, path: str) -> Any:
        body = httpx.get(self.url + path, timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]


def start_prometheus(binary: str, tmp_path: Path, exporter_port: int) -> Prometheus:
    """Prometheus scraping the exporter every second, with the alert rules, evaluated every second."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "ckpt-exporter", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Prometheus(f"http://127.0.0.1:{port}", proc, log)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def prometheus_ready(prom: Prometheus) -> bool:
    if prom.proc.poll() is not None:
        raise AssertionError(f"prometheus exited:\n{prom.log.read_text(errors='replace')[-4000:]}")
    try:
        return httpx.get(prom.url + "/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, exporter_port: int) -> Iterator[Prometheus]:
    """A ready Prometheus scraping the exporter on `exporter_port`, stopped on the way out."""
    prom = start_prometheus(require_tool("prometheus"), tmp_path, exporter_port)
    try:
        assert wait_for(lambda: prometheus_ready(prom), 30, 0.2), "prometheus did not become ready"
        yield prom
    finally:
        stop_process(prom.proc)


@contextlib.contextmanager
def scraped_exporter(
    api: FakeApi, jobs: Sequence[str], tmp_path: Path
) -> Iterator[tuple[ExporterProcess, Prometheus]]:
    """The fake API on loopback, the real exporter polling `jobs` from it every 0.5 s, and a real
    Prometheus scraping the exporter with the alert rules."""
    require_tool("prometheus")  # skip (or fail in CI) before starting anything
    with FakeApiServer(api) as server:
        exporter = ExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": server.base_url,
                "CKPT_EXPORTER_API_KEY": api.api_key or "",
                "CKPT_EXPORTER_JOBS": ",".join(jobs),
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.5",
            }
        )
        try:
            exporter.wait_ready()
            with running_prometheus(tmp_path, exporter.port) as prom:
                yield exporter, prom
        finally:
            exporter.stop()
