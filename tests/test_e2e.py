"""End to end: the real exporter process against the fake API on loopback, scraped over HTTP."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer
from ckpt_exporter.models import METRIC_FIELDS
from tests.helpers import API_KEY, ExporterProcess, Samples, parse_samples, require_tool, wait_for

pytestmark = pytest.mark.integration

POLL = 0.5
ALL_METRICS = {
    "train_loss": 0.5,
    "train_mean_token_accuracy": 0.81,
    "valid_loss": 0.625,
    "valid_mean_token_accuracy": 0.79,
    "full_valid_loss": 0.6,
    "full_valid_mean_token_accuracy": 0.8,
}


def metrics_for(step: int) -> dict[str, Any]:
    # Distinct, exactly representable-enough values per step, so that a mixed-up sample shows.
    return {name: round(value + step / 10_000, 6) for name, value in ALL_METRICS.items()}


def populate(api: FakeApi, newest_first: bool) -> None:
    """The six jobs of the acceptance criteria."""
    for job_id in (
        "ftjob-zero",
        "ftjob-one",
        "ftjob-three",
        "ftjob-twelve",
        "ftjob-fullvalid",
        "ftjob-nullvalid",
    ):
        api.add_job(job_id, newest_first=newest_first)
    api.add_checkpoint("ftjob-one", 10, metrics_for(10))
    for step in (100, 200, 300):
        api.add_checkpoint("ftjob-three", step, metrics_for(step))
    for n in range(1, 13):
        api.add_checkpoint("ftjob-twelve", n * 7, metrics_for(n * 7))
    for step in (50, 100, 150):
        full = metrics_for(step)
        api.add_checkpoint(
            "ftjob-fullvalid",
            step,
            {
                "full_valid_loss": full["full_valid_loss"],
                "full_valid_mean_token_accuracy": full["full_valid_mean_token_accuracy"],
            },
        )
    for step in (20, 40, 60):
        api.add_checkpoint(
            "ftjob-nullvalid",
            step,
            {**metrics_for(step), "valid_loss": None, "valid_mean_token_accuracy": None},
        )


def expected_checkpoint_samples(api: FakeApi) -> Samples:
    """What /metrics must hold for the fake API's checkpoints, derived from the API's own data."""
    expected: Samples = {}
    for job in api.jobs.values():
        for checkpoint in job.checkpoints:
            labels = {"job_id": job.id, "step": str(checkpoint["step_number"])}
            key = frozenset(labels.items())
            for name in METRIC_FIELDS:
                value = checkpoint["metrics"].get(name)
                if value is not None:
                    expected[(f"openai_fine_tuning_checkpoint_{name}", key)] = value
            expected[("openai_fine_tuning_checkpoint_created_timestamp_seconds", key)] = checkpoint[
                "created_at"
            ]
            info = {
                **labels,
                "checkpoint_id": checkpoint["id"],
                "model": checkpoint["fine_tuned_model_checkpoint"],
            }
            expected[("openai_fine_tuning_checkpoint_info", frozenset(info.items()))] = 1.0
        if job.checkpoints:
            expected[("openai_fine_tuning_job_latest_step", frozenset({("job_id", job.id)}))] = max(
                c["step_number"] for c in job.checkpoints
            )
        document = job.document()
        expected[
            ("openai_fine_tuning_job_status", frozenset({("job_id", job.id), ("status", job.status)}))
        ] = 1.0
        info = {
            "job_id": job.id,
            "model": document["model"],
            "fine_tuned_model": document["fine_tuned_model"] or "",
            "suffix": document["user_provided_suffix"] or "",
            "account": "default",
        }
        expected[("openai_fine_tuning_job_info", frozenset(info.items()))] = 1.0
    return expected


def exported(exporter: ExporterProcess) -> Samples:
    """Checkpoint and job samples (the event counters are tested in test_events)."""
    text = exporter.metrics()
    samples = {
        **parse_samples(text, "openai_fine_tuning_checkpoint_"),
        **parse_samples(text, "openai_fine_tuning_job_"),
    }
    return {key: value for key, value in samples.items() if key[0] != "openai_fine_tuning_job_events_total"}


def poll_cycles(exporter: ExporterProcess) -> tuple[float, float]:
    """Poll cycles so far: all of them, and those that took at most half the interval (a bucket
    bound of ckpt_exporter_poll_duration_seconds)."""
    samples = parse_samples(exporter.metrics(), "ckpt_exporter_poll_duration_seconds_")
    count = samples[("ckpt_exporter_poll_duration_seconds_count", frozenset())]
    quick = samples[("ckpt_exporter_poll_duration_seconds_bucket", frozenset({("le", str(POLL / 2))}))]
    return count, quick


def poll_count(exporter: ExporterProcess) -> float:
    return poll_cycles(exporter)[0]


def steady_state_window(exporter: ExporterProcess, api: FakeApi, polls: int) -> tuple[float, dict[str, int]]:
    """The polls of a window of at least `polls` cycles and each job's checkpoints requests in it.

    A cycle that outlasts the interval (a stall of this shared machine) makes the next tick skip
    the jobs still in flight, and the window then shows fewer requests than polls for a reason
    that is not the exporter's: such a window is measured again, up to three times.
    """
    for _ in range(3):
        before, quick_before = poll_cycles(exporter)
        api.reset_counts()
        target = before + polls
        assert wait_for(lambda: poll_count(exporter) >= target, 4 * polls * POLL)  # noqa: B023
        after, quick_after = poll_cycles(exporter)
        counts = {job_id: api.count("checkpoints", job_id) for job_id in api.jobs}
        if after - before == quick_after - quick_before:
            return after - before, counts
    raise AssertionError("every window had a poll cycle longer than half the poll interval")


def exporter_for(server: FakeApiServer, api: FakeApi, **env: str) -> ExporterProcess:
    """The exporter process watching every job of the fake API."""
    return ExporterProcess(
        {
            "CKPT_EXPORTER_API_BASE_URL": server.base_url,
            "CKPT_EXPORTER_API_KEY": API_KEY,
            "CKPT_EXPORTER_JOBS": ",".join(api.jobs),
            "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": str(POLL),
            # Polls every 0.5 s make 26 requests a second here: above the default budget of 10.
            "CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "1000",
            **env,
        }
    )


@pytest.mark.parametrize("newest_first", [True, False], ids=["newest-first", "oldest-first"])
def test_six_jobs_exact_samples_new_checkpoint_and_steady_state_cost(newest_first: bool) -> None:
    api = FakeApi(api_key=API_KEY)
    populate(api, newest_first)
    with FakeApiServer(api) as server:
        exporter = exporter_for(server, api, CKPT_EXPORTER_PAGE_SIZE="5")
        try:
            exporter.wait_ready()
            assert exporter.get("/healthz").status_code == 200

            # Every sample exact; absent and null fields have no sample. (The body is rebuilt in the
            # background a moment after the polls that /readyz waited for.)
            expected = expected_checkpoint_samples(api)
            assert wait_for(lambda: exported(exporter) == expected, 2), exported(exporter)
            text = exporter.metrics()
            up = parse_samples(text, "ckpt_exporter_job_up")
            assert up == {("ckpt_exporter_job_up", frozenset({("job_id", j)})): 1.0 for j in api.jobs}
            # The first read of 12 checkpoints at page_size 5 walks 3 pages.
            assert api.count("checkpoints", "ftjob-twelve") >= 3
            first_reads = [r for r in api.requests if r.path.endswith("/checkpoints")][:6]
            assert [r.query.get("limit") for r in first_reads] == ["5"] * 6

            # A checkpoint added to the API shows within the poll interval + 2 s.
            added = api.add_checkpoint("ftjob-three", 400, metrics_for(400))
            start = time.monotonic()
            assert wait_for(lambda: exported(exporter) == expected_checkpoint_samples(api), POLL + 2)
            assert time.monotonic() - start <= POLL + 2
            labels = frozenset({("job_id", "ftjob-three"), ("step", "400")})
            assert (
                exported(exporter)[("openai_fine_tuning_checkpoint_train_loss", labels)]
                == (added["metrics"]["train_loss"])
            )
            discovered = parse_samples(exporter.metrics(), "ckpt_exporter_checkpoints_discovered_total")
            assert (
                discovered[
                    ("ckpt_exporter_checkpoints_discovered_total", frozenset({("job_id", "ftjob-three")}))
                ]
                == 1.0
            )

            # Steady state with nothing new: one checkpoints request per job per poll, over enough
            # polls to include a reconciling full read (every 10th poll by default).
            assert wait_for(lambda: poll_count(exporter) >= 3, 5)
            polls, counts = steady_state_window(exporter, api, polls=12)
            for job_id, count in counts.items():
                # +1: a poll may have been in flight at either end of the window.
                assert polls - 1 <= count <= polls + 1, (job_id, count, polls)
            # The statuses of all six jobs: one listing request per poll.
            assert polls - 1 <= api.count("jobs", "") <= polls + 1
            assert exported(exporter) == expected_checkpoint_samples(api)
        finally:
            output = exporter.stop()
    assert exporter.proc.returncode == 0, output
    assert API_KEY not in output


def test_populated_metrics_pass_promtool(tmp_path: Any) -> None:
    promtool = require_tool("promtool")
    api = FakeApi(api_key=API_KEY)
    populate(api, newest_first=True)
    with FakeApiServer(api) as server:
        exporter = exporter_for(server, api)
        try:
            exporter.wait_ready()
            text = exporter.metrics()
        finally:
            exporter.stop()
    assert "openai_fine_tuning_checkpoint_train_loss{" in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_job_removed_from_config_file_loses_its_series(tmp_path: Any) -> None:
    api = FakeApi(api_key=API_KEY)
    populate(api, newest_first=True)
    config = tmp_path / "config.yaml"
    config.write_text("jobs: [ftjob-one, ftjob-three]\n")
    with FakeApiServer(api) as server:
        exporter = ExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": server.base_url,
                "CKPT_EXPORTER_API_KEY": API_KEY,
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": str(POLL),
            },
            ["--config", str(config)],
        )
        try:
            exporter.wait_ready()
            jobs = {dict(labels)["job_id"] for _, labels in exported(exporter)}
            assert jobs == {"ftjob-one", "ftjob-three"}
            config.write_text("jobs: [ftjob-three]\n")
            assert wait_for(
                lambda: {dict(lb)["job_id"] for _, lb in exported(exporter)} == {"ftjob-three"}, 5
            )
            assert 'job_id="ftjob-one"' not in exporter.metrics()
        finally:
            exporter.stop()
