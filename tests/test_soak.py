"""Soak: 200 jobs, a minute of random faults against the real process, and nothing grows.

Slow (excluded from the quick run; `pytest -m slow` runs it, as .ci/run does). RSS (VmRSS) and open
file descriptors are sampled after a warm-up and at the end: a leak of memory, sockets or tasks
under faults shows as growth. Every scrape is timed, no exception may escape, and once the faults
stop every job is up with exactly the API's checkpoints.
"""

from __future__ import annotations

import os
import random
import time

import httpx
import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer, Fault
from tests.helpers import (
    API_KEY,
    DrainedExporterProcess,
    checkpoint_samples,
    expected_samples,
    metrics_for,
    parse_samples,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

JOBS = 200
DURATION = float(os.environ.get("CKPT_SOAK_SECONDS", "60"))  # longer runs hunt slower leaks
WARMUP = 20.0
KEEP = 6  # checkpoints the API keeps per job, like the real one keeps the last epochs
# Some growth is expected and bounded: each (job, reason) pair that random faults reach adds an
# ckpt_exporter_api_errors_total series (200 jobs x ~15 reasons). Over 180 s RSS went 71.6 MiB at
# 20 s, 75.3 at 60 s, 80.0 at 125 s and stayed there (80.2 at 176 s); fds 9-13 throughout.
RSS_GROWTH_LIMIT = 1.10  # at most 10% more than after the warm-up...
RSS_SLACK_KB = 4096  # ...plus 4 MiB of allocator noise
FD_GROWTH_LIMIT = 8

FAULTS = [
    Fault.http(500),
    Fault.http(502),
    Fault.http(503, {"x-should-retry": "false"}),
    # A 429 holds every request of the account for the time it asks (issue 12): one kind, with a
    # short wait, so that the soak still serves its thousand faults in a minute (Retry-After in
    # seconds, and its account-wide hold, are tested in tests/test_faults.py and test_api.py).
    Fault.http(429, {"retry-after-ms": "300"}),
    Fault.http(404),
    Fault.hang(3),
    Fault("reset"),
    Fault("close"),
    Fault("truncated"),
    Fault("malformed_json"),
    Fault("wrong_types"),
    Fault("metrics_not_object"),
    Fault("missing_step"),
    Fault("nan"),
    Fault("infinity"),
    Fault("other_job"),
    Fault("repeated_cursor"),
    Fault("empty_page_more"),
    Fault.huge_page(500),
    Fault.with_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "500ms"}),
]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_soak_200_jobs_random_faults_nothing_grows() -> None:
    rng = random.Random(20261125)
    api = FakeApi(api_key=API_KEY)
    api.record_requests = False
    jobs = [f"ftjob-soak{n:03d}" for n in range(JOBS)]
    steps = dict.fromkeys(jobs, 0)

    def add_checkpoint(job_id: str) -> None:
        steps[job_id] += 10
        api.add_checkpoint(job_id, steps[job_id], metrics_for(jobs.index(job_id), steps[job_id]))
        for old in api.jobs[job_id].checkpoints[:-KEEP]:
            api.remove_checkpoint(job_id, old["id"])

    for n, job_id in enumerate(jobs):
        api.add_job(job_id, newest_first=n % 2 == 0)
        for _ in range(3):
            add_checkpoint(job_id)
    with FakeApiServer(api) as server:
        exporter = DrainedExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": server.base_url,
                "CKPT_EXPORTER_API_KEY": API_KEY,
                "CKPT_EXPORTER_JOBS": ",".join(jobs),
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "2",
                "CKPT_EXPORTER_REQUEST_TIMEOUT_SECONDS": "1",
                "CKPT_EXPORTER_MAX_RETRIES": "1",
                "CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "400",
                "CKPT_EXPORTER_MAX_CONCURRENCY": "32",
                "CKPT_EXPORTER_FULL_READ_EVERY_POLLS": "5",
            }
        )
        pid = exporter.proc.pid
        samples: list[tuple[float, int, int]] = []
        slowest = 0.0
        try:
            exporter.wait_ready(timeout=60)
            started = time.monotonic()
            next_scrape = started
            while (elapsed := time.monotonic() - started) < DURATION:
                for _ in range(3):
                    api.inject(rng.choice(jobs), rng.choice(FAULTS), times=rng.randint(1, 3))
                if rng.random() < 0.5:
                    add_checkpoint(rng.choice(jobs))
                if time.monotonic() >= next_scrape:
                    next_scrape += 1.0
                    before = time.monotonic()
                    response = httpx.get(exporter.url + "/metrics", timeout=5)
                    took = time.monotonic() - before
                    slowest = max(slowest, took)
                    assert response.status_code == 200 and took < 2.0, took
                    assert exporter.proc.poll() is None, "the exporter died"
                    if elapsed >= WARMUP:
                        samples.append((elapsed, rss_kb(pid), open_fds(pid)))
                time.sleep(0.1)

            api.clear_faults()
            text = ""

            def recovered() -> bool:
                nonlocal text
                text = httpx.get(exporter.url + "/metrics", timeout=5).text
                up = {dict(k[1])["job_id"]: v for k, v in parse_samples(text, "ckpt_exporter_job_up").items()}
                return up == dict.fromkeys(jobs, 1.0) and checkpoint_samples(text, jobs) == expected_samples(
                    api, jobs
                )

            # 404s back off for up to 2^n poll intervals: give the slowest job time to come back.
            assert wait_for(recovered, 60, interval=1.0), [
                j for j in jobs if f'ckpt_exporter_job_up{{job_id="{j}"}} 0.0' in text
            ]
        finally:
            output = exporter.stop()
    served = len(api.served())
    first, last = samples[0], samples[-1]
    rss_peak = max(rss for _, rss, _ in samples)
    print(
        f"\nsoak: {JOBS} jobs, {DURATION:.0f}s, {served} faults served, "
        f"slowest scrape {slowest * 1000:.0f} ms; "
        f"RSS {first[1] / 1024:.1f} MiB at {first[0]:.0f}s -> {last[1] / 1024:.1f} MiB at {last[0]:.0f}s "
        f"(peak {rss_peak / 1024:.1f}); fds {first[2]} -> {last[2]}"
    )
    assert exporter.proc.returncode == 0
    assert "Traceback" not in output and "crashed" not in output, output[-3000:]
    assert API_KEY not in output
    assert served > 1000
    print("samples (s, RSS KiB, fds):", samples[:: max(1, len(samples) // 12)])
    assert last[1] <= first[1] * RSS_GROWTH_LIMIT + RSS_SLACK_KB, samples
    assert last[2] <= first[2] + FD_GROWTH_LIMIT, samples
