"""What a benchmark run measures: the sizes and repetitions of the full run and of the quick one."""

from __future__ import annotations

from dataclasses import dataclass

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
