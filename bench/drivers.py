"""The two processes every measurement drives: the loopback fake API (bench/fake_server.py), with its
request counts and controls, and the exporter (`python -m ckpt_exporter --config FILE`), read only
at quiet moments between its poll cycles."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from plans import MAX_CONCURRENCY, UNLIMITED_RATE
from processes import Children, free_port
from wire import http_get, http_post_json, sample_value

BENCH = Path(__file__).resolve().parent
API_KEY = "sk-bench-not-a-real-key"


class Fake:
    def __init__(self, children: Children, running: int, finished: int, latency: float) -> None:
        self.running, self.finished, self.latency = running, finished, latency
        self.process = children.start(
            "fake-api",
            [
                str(BENCH / "fake_server.py"),
                "--running",
                str(running),
                "--finished",
                str(finished),
                "--latency",
                str(latency),
            ],
        )
        self.port = int(self.process.read_line("PORT ", timeout=300).split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def total(self) -> int:
        return int(self.summary()["total"])

    def summary(self) -> dict[str, Any]:
        """{"total": n, "by_endpoint": {endpoint: n}}"""
        return dict(json.loads(http_get(self.port, "/_bench/counts?summary=1")))

    def counts(self) -> dict[tuple[str, str], int]:
        document = json.loads(http_get(self.port, "/_bench/counts"))
        return {(endpoint, jid): count for endpoint, jid, count in document["by_job"]}

    def reset(self) -> None:
        http_post_json(self.port, "/_bench/reset", {})

    def add_checkpoint(self, n: int) -> tuple[str, int]:
        answer = http_post_json(self.port, "/_bench/checkpoint", {"job": n})
        return str(answer["job_id"]), int(answer["step"])


@dataclass
class Point:
    """The exporter's state at a quiet moment between poll cycles."""

    at: float
    cycles: int
    poll_seconds: float  # ckpt_exporter_poll_duration_seconds_sum
    cpu: float
    rss_mb: float
    fake_cpu: float


class Exporter:
    def __init__(
        self, children: Children, fake: Fake, name: str, interval: float, settings: dict[str, Any]
    ) -> None:
        self.port = free_port()
        self.fake = fake
        # Between cycles the API sees no request for (interval - cycle time); inside a cycle a
        # pause this long would be a stall of the exporter's event loop.
        self.quiet = min(max(0.3 * interval, 0.3), 3.0)
        config = {
            "api_base_url": fake.base_url,
            "listen_address": "127.0.0.1",
            "listen_port": self.port,
            "max_concurrency": MAX_CONCURRENCY,
            "max_requests_per_second": UNLIMITED_RATE,
            "poll_interval_seconds": interval,
            **settings,
        }
        path = children.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.process = children.start(
            name, ["-m", "ckpt_exporter", "--config", str(path)], env={"CKPT_EXPORTER_API_KEY": API_KEY}
        )
        self.started = time.monotonic()

    def metrics(self) -> bytes:
        return http_get(self.port, "/metrics")

    def point(self) -> Point:
        body = self.metrics()
        return Point(
            at=time.monotonic(),
            cycles=int(sample_value(body, "ckpt_exporter_poll_duration_seconds_count") or 0),
            poll_seconds=sample_value(body, "ckpt_exporter_poll_duration_seconds_sum") or 0.0,
            cpu=self.process.cpu_seconds(),
            rss_mb=self.process.rss_mb(),
            fake_cpu=self.fake.process.cpu_seconds(),
        )

    def wait_cycles(self, cycles: int, timeout: float) -> Point:
        """Wait until `cycles` poll cycles have completed and the API has seen no request for
        `quiet` seconds (the exporter is between cycles), without scraping in the meantime."""
        quiet = self.quiet
        deadline = time.monotonic() + timeout
        last_total, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            self._check_alive()
            total = self.fake.total()
            now = time.monotonic()
            if total != last_total:
                last_total, last_change = total, now
            elif now - last_change >= quiet:
                try:
                    point = self.point()
                except OSError:  # not listening yet
                    point = None
                if point is not None and point.cycles >= cycles:
                    return point
                last_change = now  # quiet but not done (starting, or a pause in a cycle): look again
            time.sleep(0.1)
        raise RuntimeError(f"{cycles} poll cycle(s) did not complete within {timeout:.0f}s")

    def _check_alive(self) -> None:
        if not self.process.alive():
            raise RuntimeError(f"the exporter exited; its log:\n{self.process.tail()}")
