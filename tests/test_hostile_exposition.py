"""Issue 12 point 1: the exposition is valid whatever string the API sends, against the real
exporter process and tests/hostile_api.py: promtool, both prometheus_client parsers, a real Prometheus.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.helpers import require_tool, wait_for
from tests.hostile_api import (
    HOSTILE_CHARS,
    HostileApi,
    checkpoint,
    event,
    hostile_text,
)
from tests.hostile_run import (
    OPENMETRICS,
    Labelled,
    exporter_for,
    samples,
    try_samples,
)
from tests.promstack import running_prometheus

pytestmark = pytest.mark.integration


# -- 1. the exposition is valid whatever the API sends --------------------------------------------


HOSTILE_JOB = "ftjob-hostile"
DISCOVERED = hostile_text("ftjob-discovered")
SUPERVISED = {"method": "supervised", "reasoning_effort": "", "grader_type": ""}  # job_info's method labels
INFO_NAMES = (
    "openai_fine_tuning_checkpoint_info",
    "openai_fine_tuning_job_info",
    "openai_fine_tuning_job_status",
    "openai_fine_tuning_job_events_total",
    "ckpt_exporter_job_up",
)


def hostile_api() -> HostileApi:
    """A job whose every string the exposition shows is hostile, and a discovered job whose id is.

    One checkpoint holds every hostile character at once, and one more per character holds it alone.
    """
    api = HostileApi()
    job = api.add_job(
        HOSTILE_JOB,
        status=hostile_text("status"),
        model=hostile_text("model"),
        fine_tuned_model=hostile_text("fine_tuned_model"),
        user_provided_suffix=hostile_text("suffix"),
    )
    job.checkpoints.append(
        checkpoint(HOSTILE_JOB, 1, id=hostile_text("ftckpt"), fine_tuned_model_checkpoint=hostile_text("m"))
    )
    for step, char in enumerate(HOSTILE_CHARS, start=2):
        job.checkpoints.append(
            checkpoint(
                HOSTILE_JOB, step, id=f"ftckpt-{step}\r#{char}", fine_tuned_model_checkpoint=f"m{char}"
            )
        )
    job.events.append(event(1))
    api.add_job(DISCOVERED, listed=True, status="succeeded", finished_at=None)
    return api


def expected_hostile_samples(api: HostileApi) -> Labelled:
    job = api.jobs[HOSTILE_JOB]
    document = job.document
    expected: Labelled = {}
    for c in job.checkpoints:
        labels = {
            "job_id": HOSTILE_JOB,
            "step": str(c["step_number"]),
            "checkpoint_id": c["id"],
            "model": c["fine_tuned_model_checkpoint"],
        }
        expected[("openai_fine_tuning_checkpoint_info", frozenset(labels.items()))] = 1.0
    info = {
        "job_id": HOSTILE_JOB,
        "model": document["model"],
        "fine_tuned_model": document["fine_tuned_model"],
        "suffix": document["user_provided_suffix"],
        "account": "default",
        **SUPERVISED,
    }
    expected[("openai_fine_tuning_job_info", frozenset(info.items()))] = 1.0
    status = {"job_id": HOSTILE_JOB, "status": document["status"]}
    expected[("openai_fine_tuning_job_status", frozenset(status.items()))] = 1.0
    for level in ("info", "warn", "error", hostile_text("level")):
        labels = {"job_id": HOSTILE_JOB, "level": level}
        value = 1.0 if level == hostile_text("level") else 0.0
        expected[("openai_fine_tuning_job_events_total", frozenset(labels.items()))] = value
    discovered = {"job_id": DISCOVERED, "model": api.jobs[DISCOVERED].document["model"]}
    discovered |= {"fine_tuned_model": "", "suffix": "", "account": "default", **SUPERVISED}
    expected[("openai_fine_tuning_job_info", frozenset(discovered.items()))] = 1.0
    status = {"job_id": DISCOVERED, "status": "succeeded"}
    expected[("openai_fine_tuning_job_status", frozenset(status.items()))] = 1.0
    for job_id in (HOSTILE_JOB, DISCOVERED):
        expected[("ckpt_exporter_job_up", frozenset({("job_id", job_id)}))] = 1.0
    return expected


def test_every_line_break_and_control_char_in_every_label_keeps_metrics_valid() -> None:
    promtool = require_tool("promtool")
    api = hostile_api()
    with exporter_for(api, [HOSTILE_JOB], discover="true") as exporter:
        # The job's first events read sets the baseline; the event after it is counted.
        assert wait_for(lambda: api.count("events", HOSTILE_JOB) >= 1, 20), exporter.output_so_far()
        api.jobs[HOSTILE_JOB].events.append(event(2, level=hostile_text("level")))
        expected = expected_hostile_samples(api)
        assert wait_for(lambda: try_samples(exporter, INFO_NAMES) == expected, 20), (
            exporter.metrics()[-3000:],
            exporter.output_so_far()[-3000:],
        )
        text = exporter.metrics()
        openmetrics = exporter.get("/metrics", headers={"Accept": OPENMETRICS}).text
    assert samples(parse_text(text), INFO_NAMES) == expected
    assert samples(parse_openmetrics(openmetrics), INFO_NAMES) == expected
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_cr_hash_in_a_checkpoint_id_keeps_a_real_prometheus_target_up(tmp_path: Path) -> None:
    require_tool("prometheus")
    api = HostileApi()
    job_id = "ftjob-cr-hash"
    forged = "ftckpt-1\r# HELP forged x\r# TYPE forged gauge\rforged 1\r"
    api.add_job(job_id).checkpoints.extend([checkpoint(job_id, 1, id=forged), checkpoint(job_id, 2)])
    with exporter_for(api, [job_id]) as exporter:
        exporter.wait_ready()
        with running_prometheus(tmp_path, exporter.port) as prometheus:
            # Ten scrapes or more, and the target was up at every one of them.
            assert wait_for(lambda: sum(prometheus.series("count_over_time(up[1m])").values()) >= 10, 60, 0.5)
            target = frozenset({("job", "ckpt-exporter"), ("instance", f"127.0.0.1:{exporter.port}")})
            assert prometheus.series("min_over_time(up[1m])") == {target: 1.0}
            info = prometheus.series(f'openai_fine_tuning_checkpoint_info{{job_id="{job_id}"}}')
            assert {dict(labels)["checkpoint_id"] for labels in info} == {forged, f"ftckpt-{job_id}-2"}
