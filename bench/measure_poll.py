"""Poll cycles and detection: requests, time and CPU per cycle of ours (each transport) and of the
naive poller against one fake API with latency, and how long a new checkpoint takes to reach
/metrics."""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchdata import job_id, requests_needed, status_pages_needed
from drivers import BENCH, Exporter, Fake, Point
from plans import MAX_CONCURRENCY, Plan
from processes import Children


@dataclass
class PollCycles:
    """One exporter's measured poll cycles: its state at each quiet moment and the fake's counts."""

    interval: float
    startup_total: int  # requests from start-up to the first quiet moment
    points: list[Point]  # the start of the steady state, then each measured cycle's end
    totals: list[int]  # the fake's request total at each of those points
    startup_counts: dict[tuple[str, str], int]  # (endpoint, job) -> requests, at points[0]
    end_counts: dict[tuple[str, str], int]  # the same at points[-1]


def observe_poll_cycles(children: Children, plan: Plan, fake: Fake, transport: str) -> PollCycles:
    floor_bound = requests_needed(plan.running, True) * plan.latency / MAX_CONCURRENCY
    interval = max(plan.min_poll_interval, round(4 * floor_bound, 1))
    fake.reset()
    exporter = Exporter(
        children,
        fake,
        f"exporter-poll-{transport}",
        interval,
        # Discovery: the listing gives every job with its status, so a finished job gets its one
        # final read at start-up. (Named in a job list, every job would be read until the status
        # refresh reached it: see docs/benchmarks.md.) No second discovery during the measurement.
        {
            "discover": True,
            "discovery_max_age_days": None,
            "discovery_interval_seconds": 3600,
            "http_transport": transport,
        },
    )
    # Start-up: discovery, then every job's first read (a finished job's final one). The first
    # quiet moment after it, plus one cycle more, starts the steady state.
    settled = exporter.wait_cycles(1, timeout=max(900.0, 40 * interval))
    startup_total = fake.total()
    points = [exporter.wait_cycles(settled.cycles + 1, timeout=10 * interval)]
    startup_counts = fake.counts()
    totals = [sum(startup_counts.values())]
    for k in range(1, plan.poll_cycles + 1):
        points.append(exporter.wait_cycles(points[0].cycles + k, timeout=10 * interval))
        totals.append(fake.total())
    end_counts = fake.counts()
    children.stop(exporter.process)
    return PollCycles(interval, startup_total, points, totals, startup_counts, end_counts)


def request_figures(plan: Plan, observed: PollCycles) -> dict[str, Any]:
    """Requests per cycle, in all and by endpoint and job, over the measured cycles."""
    points, totals = observed.points, observed.totals
    cycles = points[-1].cycles - points[0].cycles
    end_counts, startup_counts = observed.end_counts, observed.startup_counts
    delta = {key: end_counts.get(key, 0) - startup_counts.get(key, 0) for key in end_counts}
    running_ids = {job_id(n) for n in range(plan.running)}
    per_cycle = per_endpoint(delta, cycles)
    checkpoint_counts = [delta.get(("checkpoints", jid), 0) for jid in sorted(running_ids)]
    finished_checkpoint_requests = sum(
        count
        for (endpoint, jid), count in delta.items()
        if endpoint == "checkpoints" and jid not in running_ids
    )
    reads_events = per_cycle.get("events", 0) > 0
    return {
        "cycles_measured": cycles,
        "startup_requests": observed.startup_total,
        "requests_each_cycle": [
            (b - a) / (q.cycles - p.cycles)
            for a, b, p, q in zip(totals, totals[1:], points, points[1:], strict=False)
        ],
        "startup_by_endpoint": per_endpoint(startup_counts, 1),
        "requests_per_cycle": sum(delta.values()) / cycles,
        "requests_per_cycle_by_endpoint": per_cycle,
        "reads_events": reads_events,
        "needed_requests_per_cycle": requests_needed(plan.running, reads_events),
        "status_pages_needed": status_pages_needed(plan.running),
        "finished_checkpoint_requests": finished_checkpoint_requests,
        "running_checkpoint_requests_min_max": [min(checkpoint_counts), max(checkpoint_counts)],
    }


def time_figures(plan: Plan, observed: PollCycles, requests: dict[str, Any]) -> dict[str, Any]:
    """Cycle time against the floor (needed requests x latency / concurrency), CPU and RSS."""
    points = observed.points
    first, last = points[0], points[-1]
    cycles = requests["cycles_measured"]
    durations = [
        (b.poll_seconds - a.poll_seconds) / (b.cycles - a.cycles) for a, b in itertools.pairwise(points)
    ]
    floor = requests["needed_requests_per_cycle"] * plan.latency / MAX_CONCURRENCY
    cycle_seconds = (last.poll_seconds - first.poll_seconds) / cycles
    cpu = (last.cpu - first.cpu) / cycles
    return {
        "cycle_seconds": cycle_seconds,
        "cycle_seconds_each": durations,
        "floor_seconds": floor,
        "ratio_to_floor": cycle_seconds / floor,
        "cpu_seconds_per_cycle": cpu,
        "cpu_ms_per_request": 1000 * cpu / requests["requests_per_cycle"],
        "fake_cpu_seconds_per_cycle": (last.fake_cpu - first.fake_cpu) / cycles,
        "rss_mb": last.rss_mb,
    }


def poll_run(
    children: Children, plan: Plan, fake: Fake, transport: str, log: Callable[[str], None]
) -> dict[str, Any]:
    """Poll-cycle time, CPU and requests per cycle for plan.running running + plan.finished finished
    jobs at plan.latency, with one transport."""
    observed = observe_poll_cycles(children, plan, fake, transport)
    requests = request_figures(plan, observed)
    times = time_figures(plan, observed, requests)
    result = {
        "transport": transport,
        "running": plan.running,
        "finished": plan.finished,
        "latency_seconds": plan.latency,
        "max_concurrency": MAX_CONCURRENCY,
        "poll_interval_seconds": observed.interval,
        **requests,
        **times,
    }
    cycle_seconds, floor = times["cycle_seconds"], times["floor_seconds"]
    cpu, requests_per_cycle = times["cpu_seconds_per_cycle"], requests["requests_per_cycle"]
    log(
        f"  {transport}: cycle {cycle_seconds:.2f}s (floor {floor:.2f}s, x{cycle_seconds / floor:.2f}), "
        f"CPU {cpu:.2f}s/cycle, {requests_per_cycle:.0f} requests/cycle"
    )
    return result


def per_endpoint(counts: dict[tuple[str, str], int], cycles: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for (endpoint, _), count in counts.items():
        out[endpoint] = out.get(endpoint, 0) + count / cycles
    return out


def naive_poll_run(
    children: Children, plan: Plan, fake: Fake, lists: str, log: Callable[[str], None]
) -> dict[str, Any]:
    fake.reset()
    total_jobs = plan.running + plan.finished
    cpu_before = fake.process.cpu_seconds()
    naive = children.start(
        "naive-poller",
        [
            str(BENCH / "naive_poller.py"),
            "--base-url",
            fake.base_url,
            "--jobs",
            str(total_jobs),
            "--cycles",
            str(plan.naive_cycles),
            "--max-concurrency",
            str(MAX_CONCURRENCY),
            "--lists",
            lists,
        ],
    )
    assert naive.popen.stdout is not None
    line = naive.popen.stdout.readline()
    _, status, usage = os.wait4(naive.pid, 0)
    naive.popen.returncode = os.waitstatus_to_exitcode(status)
    children.stop(naive)
    if not line:
        raise RuntimeError(f"the naive poller failed:\n{naive.tail()}")
    cycles = json.loads(line)["cycles"]
    counts = fake.counts()
    requests = sum(counts.values()) / len(cycles)
    seconds = statistics.mean(c["seconds"] for c in cycles)
    floor = requests * plan.latency / MAX_CONCURRENCY
    result = {
        "jobs": total_jobs,
        "lists": lists,
        "cycles": len(cycles),
        "requests_per_cycle": requests,
        "requests_per_cycle_by_endpoint": per_endpoint(counts, len(cycles)),
        "cycle_seconds": seconds,
        "floor_seconds": floor,
        "cpu_seconds_per_cycle": (usage.ru_utime + usage.ru_stime) / len(cycles),
        "fake_cpu_seconds_per_cycle": (fake.process.cpu_seconds() - cpu_before) / len(cycles),
    }
    log(f"  naive poller: {requests:.0f} requests/cycle, {seconds:.1f}s/cycle")
    return result


def detection_run(children: Children, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """A checkpoint appears in the API at a random moment: how long until /metrics shows it."""
    interval = 1.0
    fake = Fake(children, running=plan.detection_jobs, finished=0, latency=plan.latency)
    exporter = Exporter(
        children,
        fake,
        "exporter-detection",
        interval,
        {"jobs": [job_id(n) for n in range(plan.detection_jobs)]},
    )
    first = exporter.wait_cycles(1, timeout=120)
    exporter.wait_cycles(first.cycles + 1, timeout=120)
    rng = random.Random(20261125)
    latencies = []
    for _ in range(plan.detection_trials):
        time.sleep(rng.uniform(0.2, 0.2 + interval))
        n = rng.randrange(plan.detection_jobs)
        appeared = time.monotonic()
        jid, step = fake.add_checkpoint(n)
        needle = f'job_id="{jid}",step="{step}"'.encode()
        deadline = appeared + 30
        while time.monotonic() < deadline:
            if needle in exporter.metrics():
                latencies.append(time.monotonic() - appeared)
                break
            time.sleep(0.025)
        else:
            raise RuntimeError(f"checkpoint {jid} step {step} did not reach /metrics within 30s")
    children.stop(exporter.process)
    children.stop(fake.process)
    result = {
        "jobs": plan.detection_jobs,
        "latency_seconds": plan.latency,
        "poll_interval_seconds": interval,
        "scrape_every_seconds": 0.025,
        "trials": latencies,
        "median_seconds": statistics.median(latencies),
        "max_seconds": max(latencies),
    }
    log(f"  detection: median {result['median_seconds']:.2f}s, max {result['max_seconds']:.2f}s")
    return result
