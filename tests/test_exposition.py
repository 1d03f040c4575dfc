"""Exposition: exact samples from snapshots, cached rendering, formats and compression."""

from __future__ import annotations

import gzip

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from pydantic import TypeAdapter

from ckpt_exporter.exposition import ExpositionCache, render
from ckpt_exporter.layout import build
from ckpt_exporter.models import Checkpoint
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.server import MetricsApp
from ckpt_exporter.snapshot import JobSnapshot
from tests.helpers import parse_samples


def checkpoint(job: str, step: int, **metrics: float | None) -> Checkpoint:
    return TypeAdapter(Checkpoint).validate_python(
        {
            "id": f"{job}-ckpt-{step}",
            "created_at": 1_712_211_699 + step,
            "fine_tuning_job_id": job,
            "fine_tuned_model_checkpoint": f"ft:gpt-4o-mini:org:sfx:abc:ckpt-step-{step}",
            "step_number": step,
            "metrics": {"step": step, **metrics},
        }
    )


JOB_A = JobSnapshot(
    "ftjob-a",
    (checkpoint("ftjob-a", 88, train_loss=0.478, valid_loss=None, full_valid_loss=0.567),),
    polled=True,
    up=True,
    last_success=1_712_300_000.5,
    discovered_total=2,
    errors=(("http_500", 3),),
)
JOB_B = JobSnapshot("ftjob-b", polled=True, up=False)


def by_labels(job: str, step: str) -> frozenset[tuple[str, str]]:
    return frozenset({("job_id", job), ("step", step)})


def test_samples_are_exact_and_absent_fields_have_none() -> None:
    jobs = ExpositionCache()
    jobs.update(JOB_A)
    jobs.update(JOB_B)
    samples = parse_samples(jobs.body(False).decode())
    a88 = by_labels("ftjob-a", "88")
    assert samples == {
        ("openai_fine_tuning_checkpoint_train_loss", a88): 0.478,
        ("openai_fine_tuning_checkpoint_full_valid_loss", a88): 0.567,
        ("openai_fine_tuning_checkpoint_created_timestamp_seconds", a88): 1_712_211_787.0,
        (
            "openai_fine_tuning_checkpoint_info",
            a88
            | {("checkpoint_id", "ftjob-a-ckpt-88"), ("model", "ft:gpt-4o-mini:org:sfx:abc:ckpt-step-88")},
        ): 1.0,
        ("openai_fine_tuning_job_latest_step", frozenset({("job_id", "ftjob-a")})): 88.0,
        (
            "openai_fine_tuning_job_best_checkpoint_step",
            frozenset(
                {
                    ("job_id", "ftjob-a"),
                    ("metric", "full_valid_loss"),
                    ("model", "ft:gpt-4o-mini:org:sfx:abc:ckpt-step-88"),
                }
            ),
        ): 88.0,
        ("ckpt_exporter_job_up", frozenset({("job_id", "ftjob-a")})): 1.0,
        ("ckpt_exporter_job_up", frozenset({("job_id", "ftjob-b")})): 0.0,
        ("ckpt_exporter_job_held", frozenset({("job_id", "ftjob-a")})): 0.0,
        ("ckpt_exporter_job_held", frozenset({("job_id", "ftjob-b")})): 0.0,
        (
            "ckpt_exporter_job_last_success_timestamp_seconds",
            frozenset({("job_id", "ftjob-a")}),
        ): 1_712_300_000.5,
        ("ckpt_exporter_checkpoints_discovered_total", frozenset({("job_id", "ftjob-a")})): 2.0,
        ("ckpt_exporter_checkpoints_discovered_total", frozenset({("job_id", "ftjob-b")})): 0.0,
        ("ckpt_exporter_api_errors_total", frozenset({("job_id", "ftjob-a"), ("reason", "http_500")})): 3.0,
    }


def test_cached_body_equals_rendering_everything_at_once() -> None:
    jobs = ExpositionCache()
    snapshots = [JOB_B, JOB_A]
    for snapshot in snapshots:
        jobs.update(snapshot)
    jobs_in_order = sorted(snapshots, key=lambda s: s.job_id)
    for openmetrics in (False, True):
        whole = render(lambda: [metric for _, metric in build(jobs_in_order)], openmetrics)
        # The whole rendering lists every family header; the cache only families with samples.
        kept = [line for line in whole.decode().splitlines(keepends=True) if line != "# EOF\n"]
        body = jobs.body(openmetrics).decode()
        assert [line for line in kept if not line.startswith("#")] == [
            line for line in body.splitlines(keepends=True) if not line.startswith("#")
        ]


def test_update_remove_and_unchanged_snapshot() -> None:
    jobs = ExpositionCache()
    jobs.update(JOB_A)
    first, version = jobs.body(False), jobs.version
    jobs.update(JobSnapshot(**{**JOB_A.__dict__}))  # equal snapshot: nothing re-rendered
    assert (jobs.body(False), jobs.version) == (first, version)
    jobs.update(JOB_B)
    jobs.remove("ftjob-a")
    assert 'job_id="ftjob-a"' not in jobs.body(False).decode()
    assert list(jobs.snapshots()) == ["ftjob-b"]


def test_metrics_response_formats_and_gzip() -> None:
    jobs = ExpositionCache()
    jobs.update(JOB_A)
    metrics = SelfMetrics()
    app = MetricsApp(jobs, metrics, ready=lambda: True)

    body, headers = app.metrics_response("", "")
    assert headers == {
        "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
        "Vary": "Accept, Accept-Encoding",
    }
    text = body.decode()
    assert 'ckpt_exporter_build_info{version="' in text
    assert "openai_fine_tuning_checkpoint_train_loss" in text

    zipped, headers = app.metrics_response("", "gzip, deflate")
    assert headers["Content-Encoding"] == "gzip"
    unzipped = gzip.decompress(zipped).decode()
    # Identical but for the per-scrape process metrics, which move between two renderings.
    strip = ("process_", "python_gc_")
    assert [line for line in unzipped.splitlines() if not line.startswith(strip)] == [
        line for line in text.splitlines() if not line.startswith(strip)
    ]

    om, headers = app.metrics_response("application/openmetrics-text; version=1.0.0", "")
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in parse_openmetrics(om.decode())}  # raises unless valid OpenMetrics
    assert om.decode().endswith("# EOF\n") and om.decode().count("# EOF") == 1
    assert families["openai_fine_tuning_checkpoint"].type == "info"
    assert families["ckpt_exporter_checkpoints_discovered"].type == "counter"


def test_gzip_body_is_reused_until_the_next_change() -> None:
    jobs = ExpositionCache()
    jobs.update(JOB_A)
    one = gzip.decompress(jobs.gzip_body(False, b"tail 1\n"))
    two = gzip.decompress(jobs.gzip_body(False, b"tail 2\n"))
    assert one == jobs.body(False) + b"tail 1\n"
    assert two == jobs.body(False) + b"tail 2\n"
    jobs.update(JOB_B)
    assert gzip.decompress(jobs.gzip_body(False, b"")) == jobs.body(False)
    assert b'job_id="ftjob-b"' in jobs.body(False)


def test_a_poll_state_change_rerenders_only_what_changed_and_stays_exact() -> None:
    from dataclasses import replace

    jobs = ExpositionCache()
    jobs.update(JOB_A)
    polled = replace(JOB_A, up=False, last_success=1_712_300_060.0, errors=(("http_500", 4),))
    jobs.update(polled)
    fresh = ExpositionCache()
    fresh.update(polled)
    for openmetrics in (False, True):
        assert jobs.body(openmetrics) == fresh.body(openmetrics)
    samples = parse_samples(jobs.body(False).decode())
    assert samples[("ckpt_exporter_job_up", frozenset({("job_id", "ftjob-a")}))] == 0.0
    assert samples[("openai_fine_tuning_checkpoint_train_loss", by_labels("ftjob-a", "88"))] == 0.478


def test_background_rebuilds_follow_changes() -> None:
    from tests.helpers import wait_for

    jobs = ExpositionCache()
    jobs.update(JOB_A)
    jobs.start(debounce=0.01)
    try:
        assert b'job_id="ftjob-b"' not in jobs.body(False)  # served once: now rebuilt ahead
        jobs.update(JOB_B)
        assert wait_for(lambda: b'job_id="ftjob-b"' in jobs.body(False), 5)
        assert gzip.decompress(jobs.gzip_body(False, b"")) == jobs.body(False)
        jobs.remove("ftjob-a")
        assert wait_for(lambda: b'job_id="ftjob-a"' not in jobs.body(False), 5)
    finally:
        jobs.stop()


def test_the_stable_prefix_is_reused_after_volatile_changes_and_every_body_stays_exact() -> None:
    from dataclasses import replace

    from ckpt_exporter.models import FineTuningJob, MetricsEventData

    job_doc = TypeAdapter(FineTuningJob).validate_python(
        {"id": "ftjob-a", "status": "running", "created_at": 1_712_211_000, "model": "gpt-4o-mini"}
    )
    live = TypeAdapter(MetricsEventData).validate_python({"step": 90, "total_steps": 300, "train_loss": 0.4})
    running = replace(JOB_A, job=job_doc, live=live, event_counts=(("info", 3),))
    jobs = ExpositionCache()
    current = {"ftjob-a": running, "ftjob-b": JOB_B}

    def check(stable_prefix_kept: bool) -> None:
        builds = {f: jobs.stable_prefix_builds(f) for f in (False, True)}
        fresh = ExpositionCache()
        for snapshot in current.values():
            fresh.update(snapshot)
        for openmetrics in (False, True):
            assert (
                gzip.decompress(jobs.gzip_body(openmetrics, b"tail\n")) == fresh.body(openmetrics) + b"tail\n"
            )
            assert jobs.body(openmetrics) == fresh.body(openmetrics)
            kept = jobs.stable_prefix_builds(openmetrics) == builds[openmetrics]
            assert kept == (stable_prefix_kept and builds[openmetrics] > 0)

    def publish(snapshot: JobSnapshot, *, stable_prefix_kept: bool) -> None:
        current[snapshot.job_id] = snapshot
        jobs.update(snapshot)
        check(stable_prefix_kept)

    for snapshot in current.values():
        jobs.update(snapshot)
    check(stable_prefix_kept=False)
    running = replace(running, last_success=1_712_300_060.0, up=False, errors=(("http_429", 1),))
    publish(running, stable_prefix_kept=True)  # poll state
    live = replace(live, step=91, train_loss=0.39)
    running = replace(running, live=live, event_counts=(("info", 4), ("warn", 1)))
    publish(running, stable_prefix_kept=True)  # live metrics and event counts
    running = replace(running, checkpoints=(*running.checkpoints, checkpoint("ftjob-a", 100, train_loss=0.3)))
    publish(running, stable_prefix_kept=False)  # a new checkpoint
    running = replace(running, job=replace(job_doc, status="succeeded"))
    publish(running, stable_prefix_kept=False)  # a status
    del current["ftjob-b"]
    jobs.remove("ftjob-b")
    check(stable_prefix_kept=False)


def test_stop_ends_the_background_thread_at_once_even_while_it_waits_for_a_pause() -> None:
    import time

    jobs = ExpositionCache()
    jobs.update(JOB_A)
    jobs.start(debounce=2.0)
    jobs.body(False)  # served: the thread rebuilds this format after changes
    jobs.update(JOB_B)
    time.sleep(0.1)  # the thread now waits for a pause in the changes
    assert jobs.rebuilding
    started = time.monotonic()
    jobs.stop()
    assert time.monotonic() - started < 1.0
    assert not jobs.rebuilding
