"""The scale benchmark: ckpt_exporter against the loopback fake API, beside naive baselines.

    python bench/run.py            # the full run (about 15 minutes on 2 cores)
    python bench/run.py --quick    # CI: small sizes, asserts machine-independent ratios only

Every process is real and measured from outside: the fake API (bench/fake_server.py), the exporter
(`python -m ckpt_exporter --config FILE`), the naive exporter (bench/naive_exporter.py) and the naive
poller (bench/naive_poller.py) each run in a process of their own, on 127.0.0.1 only. Scrape
latency is the time of an HTTP GET of /metrics (new connection, whole body read), RSS is VmRSS
from /proc, CPU is utime+stime from /proc, poll-cycle time comes from the exporter's
ckpt_exporter_poll_duration_seconds histogram and requests from the fake's own counts.

Prints a markdown table and writes the results as JSON (bench/results/latest.json unless --out).
With --quick it exits 1 when one of its checks fails. docs/benchmarks.md explains every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gzip
import http.client
import importlib.metadata
import itertools
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchdata import job_id, requests_needed, status_pages_needed  # noqa: E402

REPO = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
API_KEY = "sk-bench-not-a-real-key"
MAX_CONCURRENCY = 32  # requests in flight, for ckpt_exporter and the naive poller alike
# The exporter's request budget (max_requests_per_second, 10 by default, to spare the account's rate
# limit) is lifted: the benchmark measures what the exporter itself can do.
UNLIMITED_RATE = 1_000_000.0


# -- configuration of a run -------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    quick: bool
    sizes: tuple[int, ...]  # jobs x 3 checkpoints, for scrape latency and RSS
    scrapes: int  # scrapes per measurement (median and p99 of these)
    cold_scrapes: int  # scrapes right after a poll changed a job
    running: int  # the poll-cycle measurement: running jobs ...
    finished: int  # ... and finished ones
    latency: float  # API latency of that measurement, seconds
    poll_cycles: int  # steady-state cycles measured
    naive_cycles: int
    detection_jobs: int
    detection_trials: int
    steady: bool = True  # measure the scale runs' second cycle (quick: the first, to save time)
    min_poll_interval: float = 30.0  # of the poll-cycle run: room for a slow cycle, and a quiet gap
    transports: tuple[str, ...] = ("aiohttp", "httpx")


FULL = Plan(
    quick=False,
    sizes=(1000, 10000),
    scrapes=30,
    cold_scrapes=30,
    running=1000,
    finished=9000,
    latency=0.05,
    poll_cycles=5,
    naive_cycles=2,
    detection_jobs=100,
    detection_trials=10,
)
QUICK = Plan(
    quick=True,
    sizes=(200, 1000),
    scrapes=10,
    cold_scrapes=5,
    running=100,
    finished=300,
    latency=0.2,  # latency-bound even on a slow machine: the ratio to the floor is machine-independent
    poll_cycles=2,
    naive_cycles=1,
    detection_jobs=20,
    detection_trials=3,
    steady=False,
    min_poll_interval=2.0,
)


# -- processes ------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Children get SIGTERM if the runner dies (Linux), so none outlives an interrupted run."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process whose output goes to a log file; stopped by its pid, never by name."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self._log_file = self.log.open("w")
        self.popen = subprocess.Popen(
            argv,
            cwd=workdir,  # never the repository: `python -m` would import its ckpt_exporter first
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with prefix (the child announces its port that way)."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if line.startswith(prefix):
                return line.strip()
            if not line and self.popen.poll() is not None:
                break
        raise RuntimeError(f"{self.name} did not print {prefix!r}; see {self.log}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log_file.close()


class Children:
    """Every process the run starts; all are stopped on exit, whatever happens."""

    def __init__(self, workdir: Path, source: Path) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}
        self.env["PYTHONPATH"] = str(source)
        self.env["PYTHONUNBUFFERED"] = "1"
        self._all: list[Process] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, [sys.executable, *argv], self.workdir, {**self.env, **(env or {})})
        self._all.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        if process in self._all:
            self._all.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self._all):
            with contextlib.suppress(Exception):
                process.stop()
        self._all.clear()


# -- HTTP ---------------------------------------------------------------------------------------


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


def sample_value(body: bytes, name: str) -> float | None:
    match = re.search(rb"^" + re.escape(name.encode()) + rb"(?:\{[^}]*\})? (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else None


def count_samples(body: bytes, prefixes: tuple[bytes, ...] = (b"openai_", b"ckpt_exporter_")) -> int:
    return sum(1 for line in body.splitlines() if line.startswith(prefixes))


# -- the fake API -------------------------------------------------------------------------------


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


# -- the exporter ---------------------------------------------------------------------------------


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

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError):
                http_get(self.port, "/healthz", timeout=2)
                return
            time.sleep(0.1)
        raise RuntimeError(f"the exporter did not listen within {timeout}s")

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


# -- measurements -------------------------------------------------------------------------------


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


def poll_run(
    children: Children, plan: Plan, fake: Fake, transport: str, log: Callable[[str], None]
) -> dict[str, Any]:
    """Poll-cycle time, CPU and requests per cycle for plan.running running + plan.finished finished
    jobs at plan.latency, with one transport."""
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
    first, last = points[0], points[-1]
    cycles = last.cycles - first.cycles
    durations = [
        (b.poll_seconds - a.poll_seconds) / (b.cycles - a.cycles) for a, b in itertools.pairwise(points)
    ]
    delta = {key: end_counts.get(key, 0) - startup_counts.get(key, 0) for key in end_counts}
    running_ids = {job_id(n) for n in range(plan.running)}
    per_cycle = per_endpoint(delta, cycles)
    checkpoint_counts = [delta.get(("checkpoints", jid), 0) for jid in sorted(running_ids)]
    finished_checkpoint_requests = sum(
        count
        for (endpoint, jid), count in delta.items()
        if endpoint == "checkpoints" and jid not in running_ids
    )
    requests_per_cycle = sum(delta.values()) / cycles
    reads_events = per_cycle.get("events", 0) > 0
    needed = requests_needed(plan.running, reads_events)
    floor = needed * plan.latency / MAX_CONCURRENCY
    cycle_seconds = (last.poll_seconds - first.poll_seconds) / cycles
    cpu = (last.cpu - first.cpu) / cycles
    result = {
        "transport": transport,
        "running": plan.running,
        "finished": plan.finished,
        "latency_seconds": plan.latency,
        "max_concurrency": MAX_CONCURRENCY,
        "poll_interval_seconds": interval,
        "cycles_measured": cycles,
        "startup_requests": startup_total,
        "requests_each_cycle": [
            (b - a) / (q.cycles - p.cycles)
            for a, b, p, q in zip(totals, totals[1:], points, points[1:], strict=False)
        ],
        "startup_by_endpoint": per_endpoint(startup_counts, 1),
        "requests_per_cycle": requests_per_cycle,
        "requests_per_cycle_by_endpoint": per_cycle,
        "reads_events": reads_events,
        "needed_requests_per_cycle": needed,
        "status_pages_needed": status_pages_needed(plan.running),
        "finished_checkpoint_requests": finished_checkpoint_requests,
        "running_checkpoint_requests_min_max": [min(checkpoint_counts), max(checkpoint_counts)],
        "cycle_seconds": cycle_seconds,
        "cycle_seconds_each": durations,
        "floor_seconds": floor,
        "ratio_to_floor": cycle_seconds / floor,
        "cpu_seconds_per_cycle": cpu,
        "cpu_ms_per_request": 1000 * cpu / requests_per_cycle,
        "fake_cpu_seconds_per_cycle": (last.fake_cpu - first.fake_cpu) / cycles,
        "rss_mb": last.rss_mb,
    }
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


# -- the machine ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions = {}
    for package in ("prometheus-client", "httpx", "httpx-aiohttp", "aiohttp", "pydantic"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
        "packages": versions,
    }


def source_info(source: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(source)}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        run = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        info["commit"] = run.stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "ckpt_exporter"],
            capture_output=True,
            text=True,
            check=True,
        )
        info["ckpt_exporter_modified"] = bool(status.stdout.strip())
    return info


# -- checks, targets and the table ------------------------------------------------------------


@dataclass
class Verdicts:
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, holds: bool, detail: str) -> None:
        self.items.append({"name": name, "holds": holds, "detail": detail})

    @property
    def all_hold(self) -> bool:
        return all(item["holds"] for item in self.items)


def quick_checks(results: dict[str, Any]) -> Verdicts:
    """Machine-independent ratios with wide margins (CI)."""
    checks = Verdicts()
    if "scale" in results:
        larger = results["scale"][-1]
        ratio = larger["naive_gzip"]["median"] / larger["ours_gzip"]["median"]
        checks.add(
            f"scrape at {larger['jobs']} jobs >= 3x faster than naive (gzip, medians)",
            ratio >= 3,
            f"x{ratio:.1f}",
        )
        series_ratio = larger["naive_samples"] / larger["samples"]
        checks.add(
            "the naive exporter serves the same series", 0.98 <= series_ratio <= 1.02, f"{series_ratio:.3f}"
        )
    for poll in results.get("poll", []):
        transport = poll["transport"]
        checks.add(
            f"{transport}: finished jobs cost 0 checkpoint requests after their final read",
            poll["finished_checkpoint_requests"] == 0,
            str(poll["finished_checkpoint_requests"]),
        )
        low, high = poll["running_checkpoint_requests_min_max"]
        checks.add(
            f"{transport}: each running job costs exactly 1 checkpoints request per cycle",
            low == high == poll["cycles_measured"],
            f"{low}..{high} over {poll['cycles_measured']} cycles",
        )
        by_endpoint = poll["requests_per_cycle_by_endpoint"]
        checks.add(
            f"{transport}: requests/cycle = running jobs x (checkpoints, events) + listing pages, exactly",
            by_endpoint.get("checkpoints", 0) == poll["running"]
            and by_endpoint.get("events", 0) in (0, poll["running"])
            and by_endpoint.get("jobs", 0) == poll["status_pages_needed"]
            and by_endpoint.get("job", 0) == 0
            and poll["requests_per_cycle"] == poll["needed_requests_per_cycle"],
            json.dumps({k: round(v, 2) for k, v in by_endpoint.items()}),
        )
    if results.get("poll"):
        default = results["poll"][0]
        checks.add(
            f"{default['transport']}: poll-cycle time <= 2x the floor",
            default["ratio_to_floor"] <= 2.0,
            f"x{default['ratio_to_floor']:.2f}",
        )
    if "naive_poll" in results:
        naive = results["naive_poll"]
        lists = len(naive["lists"].split(","))
        checks.add(
            "the naive poller reads every list of every job every cycle",
            naive["requests_per_cycle"] == naive["jobs"] * lists,
            f"{naive['requests_per_cycle']:.0f}",
        )
    return checks


def targets(results: dict[str, Any]) -> Verdicts:
    """The issue's targets, on this machine (the full run)."""
    out = Verdicts()
    by_size = {s["jobs"]: s for s in results.get("scale", [])}
    if 1000 in by_size:
        s = by_size[1000]
        for key, label in (("ours_gzip", "cache valid"), ("ours_gzip_after_change", "after a change")):
            ratio = s["naive_gzip"]["median"] / s[key]["median"]
            out.add(
                f"scrape >= 20x faster than naive at 1,000 jobs (gzip, {label})", ratio >= 20, f"x{ratio:.0f}"
            )
    if 10000 in by_size:
        s = by_size[10000]
        for key, label in (("ours_gzip", "cache valid"), ("ours_gzip_after_change", "after a change")):
            p99 = s[key]["p99"]
            out.add(
                f"scrape < 50 ms at 10,000 jobs (gzip, {label}; p99)",
                p99 < 50,
                f"median {s[key]['median']:.1f} ms, p99 {p99:.1f} ms",
            )
    for poll in results.get("poll", []):
        out.add(
            f"poll-cycle time within 1.3x the floor ({poll['transport']})",
            poll["ratio_to_floor"] <= 1.3,
            f"{poll['cycle_seconds']:.2f}s / {poll['floor_seconds']:.2f}s = x{poll['ratio_to_floor']:.2f}",
        )
    for size, limit in ((1000, 80), (10000, 250)):
        if size in by_size:
            rss = max(by_size[size]["rss_mb"], by_size[size]["rss_mb_after_scrapes"])
            out.add(f"RSS < {limit} MB at {size:,} jobs", rss < limit, f"{rss:.0f} MB")
    if results.get("poll"):
        finished = [p["finished_checkpoint_requests"] for p in results["poll"]]
        out.add(
            "finished jobs cost 0 requests per cycle after their final read",
            all(f == 0 for f in finished),
            f"{max(finished)} checkpoint requests for {results['poll'][0]['finished']:,} finished jobs",
        )
    return out


def fmt_ms(d: dict[str, float]) -> str:
    return f"{d['median']:.1f} / {d['p99']:.1f}"


def _md_scale(results: dict[str, Any], add: Callable[[str], None]) -> None:
    add(f"**Scrape latency**, ms, median / p99 of {results['plan']['scrapes']} scrapes of /metrics")
    add(
        "(the naive exporter: prometheus_client labelled Gauges holding the same series, rendered per scrape)"
    )
    add("")
    add(
        "| jobs x 3 ckpts | series | ours gzip | ours gzip, after a change | ours plain | naive gzip "
        "| naive plain | naive ÷ ours (gzip) |"
    )
    add("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in results["scale"]:
        ratio = s["naive_gzip"]["median"] / s["ours_gzip"]["median"]
        ratio_cold = s["naive_gzip"]["median"] / s["ours_gzip_after_change"]["median"]
        add(
            f"| {s['jobs']:,} | {s['samples']:,} | {fmt_ms(s['ours_gzip'])} | "
            f"{fmt_ms(s['ours_gzip_after_change'])} | {fmt_ms(s['ours_plain'])} | "
            f"{fmt_ms(s['naive_gzip'])} | {fmt_ms(s['naive_plain'])} | "
            f"x{ratio:.0f} (x{ratio_cold:.0f} after a change) |"
        )
    add("")
    which = "second" if results["plan"]["steady"] else "first"
    add(f"**Memory and CPU** (running jobs x 3 checkpoints, API latency 0, the {which} poll cycle)")
    add("")
    add(
        "| jobs | ours RSS | naive exporter RSS (gauges only, no poller) "
        "| ours CPU s / poll cycle | poll cycle |"
    )
    add("| ---: | ---: | ---: | ---: | ---: |")
    for s in results["scale"]:
        rss = max(s["rss_mb"], s["rss_mb_after_scrapes"])
        add(
            f"| {s['jobs']:,} | {rss:.0f} MB | {s['naive_rss_mb']:.0f} MB | "
            f"{s['cpu_seconds_per_cycle']:.2f} | {s['cycle_seconds']:.2f} s |"
        )
    add("")


def _md_poll(results: dict[str, Any], add: Callable[[str], None]) -> None:
    p0, naive = results["poll"][0], results.get("naive_poll")
    add(
        f"**Requests per poll cycle**: {p0['running']:,} running + {p0['finished']:,} finished jobs "
        f"(3 checkpoints each), steady state, {p0['cycles_measured']} cycles"
    )
    add("")
    add("| | checkpoints | events | jobs listing pages | single-job reads | total | needed |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in results["poll"]:
        e = p["requests_per_cycle_by_endpoint"]
        add(
            f"| ours ({p['transport']}) | {e.get('checkpoints', 0):,.0f} | {e.get('events', 0):,.0f} | "
            f"{e.get('jobs', 0):,.0f} | {e.get('job', 0):,.0f} | {p['requests_per_cycle']:,.0f} | "
            f"{p['needed_requests_per_cycle']:,} |"
        )
    if naive is not None:
        ne = naive["requests_per_cycle_by_endpoint"]
        add(
            f"| naive poller | {ne.get('checkpoints', 0):,.0f} | {ne.get('events', 0):,.0f} | 0 | 0 | "
            f"{naive['requests_per_cycle']:,.0f} | {p0['needed_requests_per_cycle']:,} |"
        )
    add("")
    add(
        f"Finished jobs' checkpoint requests over the measured cycles: "
        f"{', '.join(str(p['finished_checkpoint_requests']) for p in results['poll'])} "
        f"(start-up, until the first quiet moment: {p0['startup_requests']:,} requests)."
    )
    add("")
    add(
        f"**Poll-cycle time**, same jobs, API latency {p0['latency_seconds'] * 1000:.0f} ms, "
        f"max_concurrency {p0['max_concurrency']}; floor = needed requests x latency / max_concurrency"
    )
    add("")
    add("| | poll cycle (mean) | floor | ÷ floor | CPU s / cycle | CPU ms / request |")
    add("| --- | ---: | ---: | ---: | ---: | ---: |")
    for p in results["poll"]:
        add(
            f"| ours, {p['transport']} transport | {p['cycle_seconds']:.2f} s | {p['floor_seconds']:.2f} s | "
            f"x{p['ratio_to_floor']:.2f} | {p['cpu_seconds_per_cycle']:.2f} | {p['cpu_ms_per_request']:.2f} |"
        )
    if naive is not None:
        add(
            f"| naive poller (every page of all {naive['jobs']:,} jobs) | {naive['cycle_seconds']:.2f} s | "
            f"{naive['floor_seconds']:.2f} s | x{naive['cycle_seconds'] / naive['floor_seconds']:.2f} | "
            f"{naive['cpu_seconds_per_cycle']:.2f} | "
            f"{1000 * naive['cpu_seconds_per_cycle'] / naive['requests_per_cycle']:.2f} |"
        )
    add("")


def _md_detection(results: dict[str, Any], add: Callable[[str], None]) -> None:
    d = results["detection"]
    add(
        f"**Detection latency** (checkpoint in the API → in /metrics), {len(d['trials'])} trials, "
        f"{d['jobs']} running jobs, poll interval {d['poll_interval_seconds']:g} s, API latency "
        f"{d['latency_seconds'] * 1000:.0f} ms: median {d['median_seconds']:.2f} s, "
        f"max {d['max_seconds']:.2f} s."
    )
    add("")


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    m = results["machine"]
    add(f"Run: {results['mode']}, {results['started']}; {m['nproc']} cores ({m['cpu_model']}), ")
    add(f"{m['ram_gb']} GB RAM, Python {m['python']}; ckpt_exporter {results['source'].get('commit', '?')}.")
    add("")
    if "scale" in results:
        _md_scale(results, add)
    if results.get("poll"):
        _md_poll(results, add)
    if "detection" in results:
        _md_detection(results, add)
    verdicts = results.get("checks") or results.get("targets") or []
    title = "Checks (CI)" if results["mode"] == "quick" else "Targets"
    add(f"**{title}**")
    add("")
    add("| | holds | |")
    add("| --- | --- | --- |")
    for v in verdicts:
        add(f"| {v['name']} | {'yes' if v['holds'] else '**no**'} | {v['detail']} |")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


PARTS = ("scale", "poll", "detection")


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C does, so that every child is stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="CI: small sizes, checks machine-independent ratios"
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH / "results" / "latest.json", help="where to write the JSON results"
    )
    parser.add_argument("--markdown", type=Path, help="also write the markdown table to this file")
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="the directory whose ckpt_exporter package is measured (default: this repository)",
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default: all of {','.join(PARTS)})",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    if not only <= set(PARTS):
        parser.error(f"--only: unknown part(s) {', '.join(sorted(only - set(PARTS)))}")
    source = args.source.resolve()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupted)
    results: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "source": source_info(source),
        "plan": asdict(plan),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part, so that a failure later keeps what was measured
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="ckpt-bench-") as tmp:
        children = Children(Path(tmp), source)
        try:
            if "scale" in only:
                log("scrape latency, RSS, CPU per cycle")
                results["scale"] = []
                for jobs in plan.sizes:
                    results["scale"].append(scale_run(children, plan, jobs, log))
                    save()
            if "poll" in only:
                log(
                    f"poll cycles: {plan.running} running + {plan.finished} finished jobs, "
                    f"{plan.latency * 1000:.0f} ms"
                )
                fake = Fake(children, plan.running, plan.finished, plan.latency)
                results["poll"] = []
                for transport in plan.transports:
                    results["poll"].append(poll_run(children, plan, fake, transport, log))
                    save()
                lists = "checkpoints,events" if results["poll"][0]["reads_events"] else "checkpoints"
                results["naive_poll"] = naive_poll_run(children, plan, fake, lists, log)
                children.stop(fake.process)
                save()
            if "detection" in only:
                log("detection latency")
                results["detection"] = detection_run(children, plan, log)
        except BaseException:
            log("the run failed; logs of the processes it started:")
            for process in list(children._all):
                log(f"--- {process.name}\n{process.tail()}")
            results["failed"] = True
            save()
            raise
        finally:
            children.stop_all()
    results["seconds"] = time.monotonic() - started
    verdicts = quick_checks(results) if plan.quick else targets(results)
    results["checks" if plan.quick else "targets"] = verdicts.items
    save()
    table = markdown(results)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    print(table)
    log(f"done in {results['seconds']:.0f}s; results in {args.out}")
    if plan.quick and not verdicts.all_hold:
        log("FAILED: " + "; ".join(v["name"] for v in verdicts.items if not v["holds"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
