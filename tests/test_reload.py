"""Reloads on the real process (SIGHUP, or the settings file changing): what they apply, what they
say about what they cannot apply, and readiness that stays once start-up is over."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer
from tests.helpers import API_KEY, DrainedExporterProcess, wait_for

pytestmark = pytest.mark.integration

REREAD = "INFO ckpt_exporter.app: SIGHUP: settings re-read"
# Long enough that no tick comes during a test after the first: what a reload does is its own.
POLL_SECONDS = 120


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, FakeApiServer]]:
    api = FakeApi(api_key=API_KEY)
    for job_id in ("ftjob-one", "ftjob-two"):
        api.add_job(job_id)
        api.add_checkpoint(job_id, 10, {"train_loss": 1.5})
    with FakeApiServer(api) as server:
        yield api, server


def start(server: FakeApiServer, config: Path) -> DrainedExporterProcess:
    exporter = DrainedExporterProcess(
        {"CKPT_EXPORTER_API_BASE_URL": server.base_url, "CKPT_EXPORTER_API_KEY": API_KEY},
        ["--config", str(config)],
    )
    exporter.wait_ready()
    return exporter


def reload_and_wait(exporter: DrainedExporterProcess, line: str) -> None:
    """SIGHUP, then wait until the exporter has logged `line` (one more time than before)."""
    count = exporter.output_so_far().count(line)
    exporter.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: exporter.output_so_far().count(line) > count, 10), exporter.output_so_far()


def test_a_job_added_by_sighup_leaves_readyz_at_200(
    api: tuple[FakeApi, FakeApiServer], tmp_path: Path
) -> None:
    _, server = api
    config = tmp_path / "c.yaml"
    config.write_text(f"jobs: [ftjob-one]\npoll_interval_seconds: {POLL_SECONDS}\n")
    exporter = start(server, config)
    try:
        config.write_text(f"jobs: [ftjob-one, ftjob-two]\npoll_interval_seconds: {POLL_SECONDS}\n")
        reload_and_wait(exporter, "settings reloaded: account default now lists 2 job(s)")
        # ftjob-two has not been polled yet (the next tick is minutes away): still ready.
        assert 'openai_fine_tuning_checkpoint_train_loss{job_id="ftjob-two"' not in exporter.metrics()
        assert (exporter.get("/readyz").status_code, exporter.get("/readyz").text) == (200, "ready\n")
        config.write_text(f"jobs: [ftjob-two]\npoll_interval_seconds: {POLL_SECONDS}\n")
        reload_and_wait(exporter, "settings reloaded: account default now lists 1 job(s)")
        assert exporter.get("/readyz").status_code == 200
        # (the exposition drops a removed job's series in the background, a moment later)
        assert wait_for(lambda: 'job_id="ftjob-one"' not in exporter.metrics(), 5)
    finally:
        exporter.stop()


def test_a_changed_setting_that_takes_a_restart_is_logged_once_naming_it(
    api: tuple[FakeApi, FakeApiServer], tmp_path: Path
) -> None:
    _, server = api
    config = tmp_path / "c.yaml"
    config.write_text(f"jobs: [ftjob-one]\npoll_interval_seconds: {POLL_SECONDS}\n")
    exporter = start(server, config)
    restart = "takes a restart to change: running on with the values of the start"
    try:
        config.write_text("jobs: [ftjob-one, ftjob-two]\npoll_interval_seconds: 5\n")
        reload_and_wait(exporter, "now lists 2 job(s)")
        reload_and_wait(exporter, REREAD)  # the same change again: nothing more is said
        config.write_text("jobs: [ftjob-one, ftjob-two]\npoll_interval_seconds: 5\npage_size: 7\n")
        reload_and_wait(exporter, "page_size 20 -> 7")
        config.write_text(f"jobs: [ftjob-one, ftjob-two]\npoll_interval_seconds: {POLL_SECONDS}\n")
        reload_and_wait(exporter, REREAD)  # back to the running values: nothing to say
        assert exporter.get("/readyz").status_code == 200
    finally:
        output = exporter.stop()
    lines = [line.split(" ", 2)[2] for line in output.splitlines() if "a restart to change" in line]
    assert lines == [
        f"WARNING ckpt_exporter.reloads: settings reloaded, but poll_interval_seconds {POLL_SECONDS:.1f} -> "
        f"5.0 {restart}",
        f"WARNING ckpt_exporter.reloads: settings reloaded, but page_size 20 -> 7 {restart}",
    ]


def test_log_level_is_applied_by_a_reload(api: tuple[FakeApi, FakeApiServer], tmp_path: Path) -> None:
    _, server = api
    config = tmp_path / "c.yaml"
    config.write_text(f"jobs: [ftjob-one]\npoll_interval_seconds: {POLL_SECONDS}\n")
    exporter = start(server, config)
    # The HTTP server's line for each request, at DEBUG.
    request_line = re.compile(r'DEBUG ckpt_exporter\.\w+: 127\.0\.0\.1 "GET /metrics HTTP/1\.1" 200')
    try:
        exporter.metrics()
        config.write_text(f"jobs: [ftjob-one]\npoll_interval_seconds: {POLL_SECONDS}\nlog_level: debug\n")
        reload_and_wait(exporter, "INFO ckpt_exporter.app: settings reloaded: log_level is now DEBUG")
        assert request_line.search(exporter.output_so_far()) is None  # the scrape before was not logged
        exporter.metrics()
        assert wait_for(lambda: request_line.search(exporter.output_so_far()) is not None, 10)
    finally:
        exporter.stop()


def sighup_ignored(pid: int) -> bool:
    """Whether the process ignores SIGHUP now (Linux: SigIgn in /proc/PID/status, a hex mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def test_a_sighup_during_start_up_neither_ends_the_process_nor_is_needed(
    api: tuple[FakeApi, FakeApiServer], tmp_path: Path
) -> None:
    """SIGHUP's default action ends a process; the reload handler comes only once start-up is done.
    From the moment our code runs, a SIGHUP before that handler is ignored, one after it reloads."""
    _, server = api
    config = tmp_path / "c.yaml"
    config.write_text(f"jobs: [ftjob-one]\npoll_interval_seconds: {POLL_SECONDS}\n")
    exporter = DrainedExporterProcess(
        {"CKPT_EXPORTER_API_BASE_URL": server.base_url, "CKPT_EXPORTER_API_KEY": API_KEY},
        ["--config", str(config)],
    )
    try:
        assert wait_for(lambda: exporter.proc.poll() is None and sighup_ignored(exporter.proc.pid), 10)

        def ready_after_a_sighup() -> bool:
            exporter.proc.send_signal(signal.SIGHUP)  # every 50 ms, all through start-up
            assert exporter.proc.poll() is None, exporter.output_so_far()
            if REREAD not in exporter.output_so_far():  # not yet the reload handler's
                return False
            try:
                return exporter.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(ready_after_a_sighup, 20), exporter.output_so_far()
        assert exporter.proc.poll() is None
    finally:
        exporter.stop()
