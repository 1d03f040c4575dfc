"""Scrape latency, RSS and CPU per poll cycle at a given number of jobs: ours with the cache valid,
ours right after a poll changed a job, and the naive exporter serving the same series."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchdata import job_id
from drivers import BENCH, Exporter, Fake, Point
from plans import Plan
from processes import Children
from wire import Scrape, count_samples, sample_value, scrape


def summary(seconds: list[float]) -> dict[str, float]:
    """Milliseconds: median, p99 (linear interpolation between order statistics), min, max, n."""
    ms = sorted(s * 1000 for s in seconds)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return {
        "median": statistics.median(ms),
        "p99": p99,
        "min": ms[0],
        "max": ms[-1],
        "n": len(ms),
    }


def measure_scrapes(port: int, count: int, gzipped: bool) -> tuple[list[float], Scrape]:
    scrape(port, gzipped)  # warm-up: the first scrape after a change assembles the body
    times, last = [], None
    for _ in range(count):
        last = scrape(port, gzipped)
        times.append(last.seconds)
    assert last is not None
    return times, last


def scale_run(children: Children, plan: Plan, jobs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Scrape latency, RSS and CPU per cycle with `jobs` running jobs x 3 checkpoints (0 latency)."""
    # Long enough for a quiet gap after each cycle (quick: only the first cycle is waited for).
    interval = max(3.0, 0.02 * jobs) if plan.steady else 600.0
    fake = Fake(children, running=jobs, finished=0, latency=0.0)
    exporter = Exporter(
        children,
        fake,
        f"exporter-scale-{jobs}",
        interval,
        {"jobs": [job_id(n) for n in range(jobs)]},
    )
    first = exporter.wait_cycles(1, timeout=max(600.0, 30 * interval))
    before = fake.summary()["by_endpoint"]
    if plan.steady:
        steady = exporter.wait_cycles(first.cycles + 1, timeout=30 * interval)
    else:  # cycle 1 (statuses unknown: every job's status read besides its checkpoints)
        steady, first = first, Point(first.at, 0, 0.0, 0.0, 0.0, 0.0)
    log(
        f"  {jobs} jobs: cycle {steady.cycles} took {steady.poll_seconds - first.poll_seconds:.1f}s, "
        f"{steady.cpu - first.cpu:.1f} CPU s; RSS {steady.rss_mb:.0f} MB"
    )
    after_cycle = fake.summary()
    total_before = after_cycle["total"]
    gz_times, gz_last = measure_scrapes(exporter.port, plan.scrapes, gzipped=True)
    plain_times, plain_last = measure_scrapes(exporter.port, plan.scrapes, gzipped=False)
    after = exporter.point()
    overlapped = fake.total() != total_before or after.cycles != steady.cycles
    body = plain_last.body
    saved = children.workdir / f"metrics-{jobs}.txt"
    saved.write_bytes(body)
    result = {
        "jobs": jobs,
        "checkpoints_per_job": 3,
        "poll_interval_seconds": interval,
        "samples": count_samples(body),
        "body_bytes_plain": plain_last.wire_bytes,
        "body_bytes_gzip": gz_last.wire_bytes,
        "first_cycle_seconds": first.poll_seconds,
        "cycle_seconds": steady.poll_seconds - first.poll_seconds,
        "cpu_seconds_per_cycle": steady.cpu - first.cpu,
        "requests_by_endpoint": {
            endpoint: count - (before.get(endpoint, 0) if plan.steady else 0)
            for endpoint, count in after_cycle["by_endpoint"].items()
        },
        "fake_cpu_seconds_per_cycle": steady.fake_cpu - first.fake_cpu,
        "rss_mb": steady.rss_mb,
        "rss_mb_after_scrapes": after.rss_mb,
        "scrapes_overlapped_a_poll": overlapped,
        "ours_gzip": summary(gz_times),
        "ours_plain": summary(plain_times),
    }
    children.stop(exporter.process)
    children.stop(fake.process)
    result["ours_gzip_after_change"] = cold_scrapes(children, plan, jobs, log)
    result.update(naive_scrapes(children, plan, saved, body, log))
    return result


def cold_scrapes(children: Children, plan: Plan, jobs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Scrapes that each follow a poll that changed one job: 1 running + (jobs - 1) finished jobs,
    found by discovery (one listing read gives every status), polled every second."""
    fake = Fake(children, running=1, finished=jobs - 1, latency=0.0)
    exporter = Exporter(
        children,
        fake,
        f"exporter-cold-{jobs}",
        1.0,
        {"discover": True, "discovery_max_age_days": None},
    )
    first = exporter.wait_cycles(1, timeout=900)
    exporter.wait_cycles(first.cycles + 1, timeout=60)
    times: list[float] = []
    previous = -1.0
    deadline = time.monotonic() + 20 * plan.cold_scrapes + 60
    while len(times) < plan.cold_scrapes and time.monotonic() < deadline:
        time.sleep(1.05)
        result = scrape(exporter.port, gzipped=True)
        cycles = sample_value(result.body, "ckpt_exporter_poll_duration_seconds_count") or 0.0
        if cycles > previous >= 0:  # a poll cycle (which renewed the running job) came in between
            times.append(result.seconds)
        previous = cycles
    children.stop(exporter.process)
    children.stop(fake.process)
    if len(times) < plan.cold_scrapes:
        raise RuntimeError(f"only {len(times)} scrapes after a poll cycle in the time allowed")
    measured = summary(times)
    log(f"  {jobs} jobs: gzip scrape after a change, median {measured['median']:.1f} ms")
    return measured


def naive_scrapes(
    children: Children, plan: Plan, saved: Path, ours: bytes, log: Callable[[str], None]
) -> dict[str, Any]:
    started = time.monotonic()
    naive = children.start("naive-exporter", [str(BENCH / "naive_exporter.py"), "--metrics", str(saved)])
    words = naive.read_line("PORT ", timeout=900).split()
    port = int(words[1])
    log(f"  naive exporter: {words[3]} series loaded in {time.monotonic() - started:.0f}s")
    gz_times, _ = measure_scrapes(port, plan.scrapes, gzipped=True)
    plain_times, plain_last = measure_scrapes(port, plan.scrapes, gzipped=False)
    result = {
        "naive_samples": count_samples(plain_last.body),
        "naive_body_bytes_plain": plain_last.wire_bytes,
        "naive_rss_mb": naive.rss_mb(),
        "naive_gzip": summary(gz_times),
        "naive_plain": summary(plain_times),
    }
    children.stop(naive)
    return result
