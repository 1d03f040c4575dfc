"""Faults: the real exporter process against the fault-injecting fake API on loopback.

Every fault of the issue, each on a job of its own in one exporter, beside healthy jobs: the
process lives, /metrics answers within 2 s, the healthy jobs keep updating, a failing job's job_up
goes to 0 and comes back, bad items are counted and never exported, and once the faults clear
every checkpoint is exported with its exact values. Then the timing contracts (Retry-After in its
forms, the 404 backoff, the x-ratelimit pause, the request budget), the key (401/403, rotation),
shutdown under load and a restart.
"""

from __future__ import annotations

import email.utils
import itertools
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer, Fault
from tests.helpers import (
    API_KEY,
    ExporterProcess,
    checkpoint_samples,
    expected_samples,
    metrics_for,
    parse_samples,
    wait_for,
)

pytestmark = pytest.mark.integration

POLL = 0.3
SCRAPE_LIMIT = 2.0  # seconds: /metrics answers within this under every fault


def by_job(text: str, name: str) -> dict[str, float]:
    return {dict(labels)["job_id"]: value for (_, labels), value in parse_samples(text, name).items()}


def errors(text: str) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["job_id"], dict(labels)["reason"]): value
        for (_, labels), value in parse_samples(text, "ckpt_exporter_api_errors_total").items()
    }


class Scraper:
    """Scrapes /metrics, timing every scrape; the slowest one is the isolation figure."""

    def __init__(self, exporter: ExporterProcess) -> None:
        self.exporter = exporter
        self.slowest = 0.0
        self.count = 0

    def text(self) -> str:
        started = time.monotonic()
        response = httpx.get(self.exporter.url + "/metrics", timeout=SCRAPE_LIMIT + 3)
        elapsed = time.monotonic() - started
        self.slowest = max(self.slowest, elapsed)
        self.count += 1
        assert response.status_code == 200
        assert elapsed < SCRAPE_LIMIT, f"/metrics took {elapsed:.2f}s"
        assert self.exporter.proc.poll() is None, "the exporter died"
        return response.text

    def until(self, condition: Any, timeout: float) -> bool:
        return wait_for(lambda: condition(self.text()), timeout, interval=0.1)


def api_with_jobs(jobs: list[str], api_key: str = API_KEY) -> FakeApi:
    """A fake API where each job runs and has one checkpoint, at step 10."""
    api = FakeApi(api_key=api_key)
    for n, job_id in enumerate(jobs):
        api.add_job(job_id)
        api.add_checkpoint(job_id, 10, metrics_for(n, 10))
    return api


def exporter_env(server: FakeApiServer, jobs: list[str], **settings: Any) -> dict[str, str]:
    env = {
        "CKPT_EXPORTER_API_BASE_URL": server.base_url,
        "CKPT_EXPORTER_API_KEY": API_KEY,
        "CKPT_EXPORTER_JOBS": ",".join(jobs),
        "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": str(POLL),
        "CKPT_EXPORTER_REQUEST_TIMEOUT_SECONDS": "1",
        "CKPT_EXPORTER_MAX_RETRIES": "1",
        "CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "1000",
    }
    env.update({f"CKPT_EXPORTER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextmanager
def running(env: dict[str, str]) -> Iterator[tuple[ExporterProcess, Scraper]]:
    exporter = ExporterProcess(env)
    try:
        exporter.wait_ready()
        yield exporter, Scraper(exporter)
    finally:
        output = exporter.stop()
        assert exporter.proc.returncode == 0, output
        assert "Traceback" not in output, output


def requests_for(api: FakeApi, job_id: str, endpoint: str | None = None) -> list[float]:
    """Arrival times of the requests about one job (any endpoint, or one)."""
    marker = f"/fine_tuning/jobs/{job_id}"
    return [
        r.at
        for r in list(api.requests)
        if (r.path.endswith(marker) or marker + "/" in r.path)
        and (endpoint is None or r.path.endswith(f"{marker}/{endpoint}"))
    ]


# -- every fault at once ---------------------------------------------------------------------

FAILING: dict[str, tuple[Fault, str]] = {
    "http500": (Fault.http(500), "http_500"),
    "http502": (Fault.http(502), "http_502"),
    "http503": (Fault.http(503, {"x-should-retry": "true"}), "http_503"),
    "http408": (Fault.http(408), "http_408"),
    "http409": (Fault.http(409), "http_409"),
    # Without Retry-After: a 429 that asks for a wait holds the whole account (test_hostile_process).
    "http429": (Fault.http(429), "http_429"),
    "http403": (Fault.http(403), "http_403"),
    "hang": (Fault.hang(5), "timeout"),
    "reset": (Fault("reset"), "transport"),
    "close": (Fault("close"), "transport"),
    "truncated": (Fault("truncated"), "transport"),
    "malformed": (Fault("malformed_json"), "malformed_json"),
    "hugepage": (Fault.huge_page(5000), "too_large"),
    "loop": (Fault("repeated_cursor"), "pagination_loop"),
    "emptymore": (Fault("empty_page_more"), "pagination_loop"),
}
ITEMS: dict[str, tuple[str, str]] = {
    "wrongtypes": ("wrong_types", "invalid_checkpoint"),
    "notobject": ("metrics_not_object", "invalid_checkpoint"),
    "noid": ("missing_id", "invalid_checkpoint"),
    "nostep": ("missing_step", "invalid_checkpoint"),
    "nan": ("nan", "invalid_checkpoint"),
    "infinity": ("infinity", "invalid_checkpoint"),
    "otherjob": ("other_job", "wrong_job"),
}


def test_every_fault_at_once_isolated_counted_and_recovered_exactly() -> None:
    api = FakeApi(api_key=API_KEY)
    controls = ["ftjob-control1", "ftjob-control2"]
    failing = [f"ftjob-{name}" for name in FAILING]
    items = [f"ftjob-{name}" for name in ITEMS]
    jobs = controls + failing + items
    for n, job_id in enumerate(jobs):
        api.add_job(job_id, newest_first=n % 2 == 0)
        for step in (100, 200):
            api.add_checkpoint(job_id, step, metrics_for(n, step))
    with (
        FakeApiServer(api) as server,
        running(exporter_env(server, jobs, full_read_every_polls=3)) as (_, scraper),
    ):
        assert scraper.until(lambda t: checkpoint_samples(t, jobs) == expected_samples(api, jobs), 10)
        assert by_job(scraper.text(), "ckpt_exporter_job_up") == dict.fromkeys(jobs, 1.0)

        # Faults on, and a new checkpoint for every job.
        for name, (fault, _) in FAILING.items():
            api.inject(f"ftjob-{name}", fault, times=None, endpoint="checkpoints")
        for name, (kind, _) in ITEMS.items():
            api.inject(f"ftjob-{name}", kind, times=None, endpoint="checkpoints")
        for n, job_id in enumerate(jobs):
            api.add_checkpoint(job_id, 300, metrics_for(n, 300))

        # The healthy jobs and the jobs with bad items keep updating, exactly.
        updating = controls + items
        assert scraper.until(lambda t: checkpoint_samples(t, updating) == expected_samples(api, updating), 5)

        # Every failing job goes down with its reason; its last good samples stay exported.
        def all_down(text: str) -> bool:
            up, seen = by_job(text, "ckpt_exporter_job_up"), errors(text)
            return all(
                up[f"ftjob-{name}"] == 0.0 and seen.get((f"ftjob-{name}", reason), 0) >= 1
                for name, (_, reason) in FAILING.items()
            )

        assert scraper.until(all_down, 15), {
            k: v for k, v in errors(scraper.text()).items() if k[0] in failing
        }
        text = scraper.text()
        up = by_job(text, "ckpt_exporter_job_up")
        assert {job: up[job] for job in updating} == dict.fromkeys(updating, 1.0)
        for job_id in failing:
            kept = checkpoint_samples(text, [job_id])
            if job_id == "ftjob-loop":  # its incremental read saw step 300 before the full read looped
                continue
            assert {dict(k[1]).get("step") for k in kept if dict(k[1]).get("step")} == {"100", "200"}, job_id
        seen = errors(text)
        for name, (_, reason) in ITEMS.items():
            assert seen.get((f"ftjob-{name}", reason), 0) >= 1, name
        assert 'step="999999"' not in text and "ftckpt_bad" not in text and "ftckpt_huge" not in text

        # Faults off: every job up again, every checkpoint exported with its exact values.
        api.clear_faults()
        assert scraper.until(lambda t: by_job(t, "ckpt_exporter_job_up") == dict.fromkeys(jobs, 1.0), 10)
        assert scraper.until(lambda t: checkpoint_samples(t, jobs) == expected_samples(api, jobs), 5)
    print(f"slowest of {scraper.count} scrapes under faults: {scraper.slowest * 1000:.0f} ms")


# -- Retry-After -----------------------------------------------------------------------------


def test_retry_after_in_each_form_holds_back_the_job() -> None:
    """A 503's Retry-After holds the job it answered (a 429's holds the whole account: see
    tests/test_hostile_process.py)."""
    jobs = ["ftjob-seconds", "ftjob-spent", "ftjob-date", "ftjob-ms", "ftjob-long", "ftjob-control"]
    api = api_with_jobs(jobs)
    with FakeApiServer(api) as server, running(exporter_env(server, jobs)) as (_, scraper):
        date = email.utils.formatdate(time.time() + 3, usegmt=True)
        api.inject("ftjob-seconds", Fault.http(503, {"Retry-After": "2"}), endpoint="checkpoints")
        # max_retries is 1: three 503s spend the retries of one poll, and the poller holds the job.
        api.inject("ftjob-spent", Fault.http(503, {"Retry-After": "2"}), times=3, endpoint="checkpoints")
        api.inject("ftjob-date", Fault.http(503, {"Retry-After": date}), endpoint="checkpoints")
        api.inject("ftjob-ms", Fault.http(503, {"retry-after-ms": "1500"}), endpoint="checkpoints")
        api.inject("ftjob-long", Fault.http(503, {"Retry-After": "200"}), endpoint="checkpoints")
        api.add_checkpoint("ftjob-control", 20, metrics_for(5, 20))
        recovered = [j for j in jobs if j != "ftjob-long"]

        def settled(text: str) -> bool:
            up = by_job(text, "ckpt_exporter_job_up")
            everything_served = all(api.served(j) for j in jobs[:-1]) and len(api.served("ftjob-spent")) == 3
            return everything_served and up["ftjob-long"] == 0.0 and all(up[j] == 1.0 for j in recovered)

        assert scraper.until(settled, 12)
        text = scraper.text()

        def after_each_fault(job_id: str) -> list[float]:
            """For each fault served, the wait until the job's next checkpoints request."""
            times = requests_for(api, job_id, "checkpoints")
            waits = []
            for served in api.served(job_id):
                later = [t for t in times if t > served.at]
                waits.append(later[0] - served.at if later else float("inf"))
            return waits

        def events_within(job_id: str, hold: float) -> int:
            """The most events requests about the job that came within `hold` of one of its faults.
            One at most: the events request its poll sent along with the faulted checkpoints one
            (it may arrive after the fault: nothing can call it back). Unheld, one a tick would come."""
            times = requests_for(api, job_id, "events")
            return max(sum(served.at < t < served.at + hold for t in times) for served in api.served(job_id))

        assert min(after_each_fault("ftjob-seconds")) >= 2.0
        assert events_within("ftjob-seconds", 2.0) <= 1
        spent = after_each_fault("ftjob-spent")
        assert len(spent) == 3 and min(spent) >= 2.0, spent
        assert events_within("ftjob-spent", 2.0) <= 1
        date_at = email.utils.parsedate_to_datetime(date).timestamp()
        assert after_each_fault("ftjob-date")[0] >= date_at - api.served("ftjob-date")[0].at
        assert events_within("ftjob-date", date_at - api.served("ftjob-date")[0].at) <= 1
        assert min(after_each_fault("ftjob-ms")) >= 1.5
        assert events_within("ftjob-ms", 1.5) <= 1
        # Beyond the 120 s cap: not retried in place, and the poller holds the job for 200 s.
        assert after_each_fault("ftjob-long") == [float("inf")]
        assert by_job(text, "ckpt_exporter_job_up")["ftjob-long"] == 0.0
        assert errors(text)[("ftjob-long", "http_503")] == 1.0
        # The others recovered, and the control job never waited.
        up = by_job(text, "ckpt_exporter_job_up")
        assert {j: up[j] for j in jobs if j != "ftjob-long"} == {j: 1.0 for j in jobs if j != "ftjob-long"}
        ok = [j for j in jobs if j != "ftjob-long"]
        assert checkpoint_samples(text, ok) == expected_samples(api, ok)


# -- 404 -------------------------------------------------------------------------------------


def test_a_missing_job_backs_off_exponentially_and_comes_back() -> None:
    jobs = ["ftjob-gone", "ftjob-control"]
    api = api_with_jobs(jobs)
    with FakeApiServer(api) as server, running(exporter_env(server, jobs)) as (exporter, scraper):
        api.inject("ftjob-gone", Fault.http(404), times=None, endpoint="checkpoints")
        for step in (20, 30, 40):
            time.sleep(2)
            api.add_checkpoint("ftjob-control", step, metrics_for(1, step))
        control = ["ftjob-control"]
        assert scraper.until(lambda t: checkpoint_samples(t, control) == expected_samples(api, control), 2)
        # Doubling from 0.3 s, the 5th try comes 4.5 s after the first (at the poll interval
        # without a backoff: 1.2 s). Wait for it rather than count the tries of a fixed window.
        assert wait_for(lambda: len(api.served("ftjob-gone")) >= 5, 10), api.served("ftjob-gone")
        tries = [served.at for served in api.served("ftjob-gone")][:5]
        gaps = [b - a for a, b in itertools.pairwise(tries)]
        # Each wait at least doubles, from the poll interval (then the next tick starts the poll).
        assert all(gap >= POLL * 2**k * 0.95 for k, gap in enumerate(gaps)), gaps
        # The next try is 4.8 s or more away: every try so far is counted, once.
        expected = {"ftjob-gone": 0.0, "ftjob-control": 1.0}
        assert scraper.until(
            lambda t: (
                errors(t).get(("ftjob-gone", "http_404")) == len(api.served("ftjob-gone"))
                and by_job(t, "ckpt_exporter_job_up") == expected
            ),
            3,
        ), (errors(scraper.text()), len(api.served("ftjob-gone")))
        api.clear_faults()
        assert scraper.until(lambda t: by_job(t, "ckpt_exporter_job_up")["ftjob-gone"] == 1.0, 12)
        output = exporter.stop()
    assert "job ftjob-gone: not found (HTTP 404)" in output


# -- the key ---------------------------------------------------------------------------------


def log_lines(output: str, marker: str) -> list[str]:
    """The log lines that contain `marker`. Say "(HTTP 401)", not "401": a timestamp's
    milliseconds can read ",401"."""
    return [line for line in output.splitlines() if marker in line]


def auth_lines(output: str) -> tuple[int, int]:
    """How many times the log said the key was rejected, and that it was accepted again."""
    return len(log_lines(output, "(HTTP 401)")), len(log_lines(output, "accepts the key again"))


def test_a_rejected_key_is_logged_once_and_a_rotated_key_file_is_used_without_restart(tmp_path: Path) -> None:
    old_key, new_key = API_KEY, API_KEY + "-rotated"
    key_file = tmp_path / "api-key"
    key_file.write_text(old_key + "\n")
    jobs = ["ftjob-k1", "ftjob-k2", "ftjob-k3"]
    api = api_with_jobs(jobs, api_key=old_key)
    with FakeApiServer(api) as server:
        env = exporter_env(server, jobs)
        del env["CKPT_EXPORTER_API_KEY"]
        env["CKPT_EXPORTER_API_KEY_FILE"] = str(key_file)
        with running(env) as (exporter, scraper):
            api.api_key = new_key  # the old key is revoked
            assert scraper.until(lambda t: by_job(t, "ckpt_exporter_job_up") == dict.fromkeys(jobs, 0.0), 5)
            # several polls of three jobs, all 401
            assert scraper.until(lambda t: all(errors(t).get((j, "http_401"), 0) >= 2 for j in jobs), 5)
            text = scraper.text()
            assert checkpoint_samples(text, jobs) == expected_samples(api, jobs)  # last good samples stay
            key_file.write_text(new_key + "\n")  # the Secret is rotated
            assert scraper.until(lambda t: by_job(t, "ckpt_exporter_job_up") == dict.fromkeys(jobs, 1.0), 5)
            api.inject(None, Fault.http(403), times=None)
            assert scraper.until(lambda t: by_job(t, "ckpt_exporter_job_up") == dict.fromkeys(jobs, 0.0), 5)
            time.sleep(1)
            api.clear_faults()
            assert scraper.until(lambda t: by_job(t, "ckpt_exporter_job_up") == dict.fromkeys(jobs, 1.0), 5)
            output = exporter.stop()
    lines_401, lines_403 = log_lines(output, "(HTTP 401)"), log_lines(output, "(HTTP 403)")
    assert len(lines_401) == 1 and "api_key_file" in lines_401[0], lines_401
    assert len(lines_403) == 1 and "project" in lines_403[0], lines_403
    assert new_key not in output and old_key not in output


def test_an_answer_to_a_request_sent_before_the_key_was_revoked_does_not_undo_the_401() -> None:
    jobs = ["ftjob-r1", "ftjob-r2"]
    api = api_with_jobs(jobs)
    with FakeApiServer(api) as server, running(exporter_env(server, jobs)) as (exporter, scraper):
        # r1's checkpoints request is let in on the good key, and its answer held back 0.6 s
        # (within the 1 s request timeout) while the key is revoked and r2's polls are refused.
        api.inject("ftjob-r1", Fault.hang(0.6), endpoint="checkpoints")
        assert wait_for(lambda: api.served("ftjob-r1"), 5)
        api.api_key = API_KEY + "-revoked"
        # r1 is not polled again until that answer is in: two 401s of r1 come after it.
        assert scraper.until(lambda t: errors(t).get(("ftjob-r1", "http_401"), 0) >= 2, 5)
        output = exporter.stop()
    assert auth_lines(output) == (1, 0), output


def test_a_key_refused_by_one_endpoint_is_logged_once_not_at_every_poll() -> None:
    jobs = ["ftjob-e1", "ftjob-e2", "ftjob-e3"]
    api = api_with_jobs(jobs)
    api.inject(None, Fault.http(401), times=None, endpoint="events")  # checkpoints still answer
    with FakeApiServer(api) as server, running(exporter_env(server, jobs)) as (exporter, scraper):
        assert scraper.until(lambda t: all(errors(t).get((j, "http_401"), 0) >= 5 for j in jobs), 10)
        output = exporter.stop()
    assert auth_lines(output) == (1, 0), output


# -- rate limits -----------------------------------------------------------------------------


def test_rate_limit_headers_pause_every_job_and_the_budget_caps_the_rate() -> None:
    jobs = [f"ftjob-r{n:02d}" for n in range(30)]
    api = api_with_jobs(jobs)
    with FakeApiServer(api) as server:
        env = exporter_env(server, jobs, max_requests_per_second=20, poll_interval_seconds=0.2)
        with running(env) as (_, scraper):
            time.sleep(1)
            window_start = time.time()
            time.sleep(3)
            sent = [r.at for r in list(api.requests) if r.at >= window_start]
            busiest = max(sum(1 for t in sent if s <= t < s + 1.0) for s in sent)
            assert busiest <= 21, busiest  # 20 a second, evenly spaced: no burst
            waited = parse_samples(scraper.text(), "ckpt_exporter_rate_limit_wait_seconds_total")
            assert waited[("ckpt_exporter_rate_limit_wait_seconds_total", frozenset())] > 1.0

            headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}
            api.inject(jobs[0], Fault.with_headers(headers), endpoint="checkpoints")
            assert wait_for(lambda: api.served(jobs[0]), 5)
            answered = api.served(jobs[0])[0].at
            time.sleep(2.5)
            # Requests already on their way may land just after; then nothing until the reset.
            quiet = [r.at - answered for r in list(api.requests) if answered + 0.3 < r.at < answered + 1.9]
            assert quiet == [], quiet
            assert [r for r in list(api.requests) if r.at > answered + 2.0], "requests resumed"


# -- lifecycle -------------------------------------------------------------------------------


def test_sigterm_with_requests_in_flight_exits_0_within_5s_and_scrapes_never_hang() -> None:
    jobs = ["ftjob-s1", "ftjob-s2", "ftjob-s3"]
    api = api_with_jobs(jobs)
    outcomes: list[tuple[str, float]] = []
    stop_scraping = threading.Event()

    def scrape_forever(url: str) -> None:
        with httpx.Client(timeout=4) as client:  # keep-alive: the connection outlives the request
            while not stop_scraping.is_set():
                started = time.monotonic()
                try:
                    outcome = str(client.get(url).status_code)
                except httpx.TimeoutException:
                    outcome = "hang"
                except httpx.TransportError:
                    outcome = "closed"
                outcomes.append((outcome, time.monotonic() - started))
                time.sleep(0.02)

    with FakeApiServer(api) as server:
        exporter = ExporterProcess(exporter_env(server, jobs, request_timeout_seconds=30))
        try:
            exporter.wait_ready()
            api.inject(None, Fault.hang(30), times=None, endpoint="checkpoints")
            assert wait_for(lambda: len(api.served()) >= 3, 5)  # every job has a request hanging
            scraper = threading.Thread(target=scrape_forever, args=(exporter.url + "/metrics",))
            scraper.start()
            assert wait_for(lambda: any(outcome == "200" for outcome, _ in outcomes), 10)
            started = time.monotonic()
            exporter.proc.send_signal(signal.SIGTERM)
            exporter.proc.wait(timeout=10)
            exited = time.monotonic() - started
            time.sleep(0.5)
        finally:
            stop_scraping.set()
            output = exporter.stop()
            api.clear_faults()
    scraper.join(timeout=10)
    assert (exporter.proc.returncode, "Traceback" in output) == (0, False), output
    assert exited <= 5.5, exited
    kinds = {outcome for outcome, _ in outcomes}
    assert "200" in kinds and "closed" in kinds and "hang" not in kinds, outcomes
    assert max(seconds for _, seconds in outcomes) < 2.0, outcomes


def test_a_restart_exports_the_same_samples_within_one_poll() -> None:
    api = FakeApi(api_key=API_KEY)
    jobs = ["ftjob-a", "ftjob-b"]
    for n, job_id in enumerate(jobs):
        api.add_job(job_id, newest_first=n == 0)
        for step in (10, 20, 30):
            api.add_checkpoint(job_id, step, metrics_for(n, step))
    with FakeApiServer(api) as server:
        env = exporter_env(server, jobs, poll_interval_seconds=5)
        with running(env) as (_, scraper):
            before = checkpoint_samples(scraper.text(), jobs)
        assert before == expected_samples(api, jobs)
        api.reset_counts()
        with running(env) as (_, scraper):
            # Ready, with the samples, after one read of each job: the first poll, not the next.
            assert [api.count("checkpoints", job_id) for job_id in jobs] == [1, 1]
            assert checkpoint_samples(scraper.text(), jobs) == before
