"""Hostile input from the API (issue 12): the real exporter process against tests/hostile.py.

Whatever the API sends, /metrics stays valid (promtool, both prometheus_client parsers, a real
Prometheus keeps the target up), the process's memory stays bounded (stacked gzip bombs, lists
that never end), every walk of a list ends (cursor cycles), and each bound that is hit is counted
under a bounded reason and logged once per job, with the job's valid data still exported.
"""

from __future__ import annotations

import random
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.helpers import DrainedExporterProcess, PrometheusProcess, require_tool, wait_for
from tests.hostile import (
    CREATED_AT,
    HOSTILE_CHARS,
    Answer,
    HostileApi,
    HostileServer,
    Query,
    Route,
    checkpoint,
    cursor_cycle,
    endless,
    event,
    gzip_bomb_answer,
    hostile_text,
    job_document,
    json_answer,
    peak_rss_mb,
)

pytestmark = pytest.mark.integration

API_KEY = "sk-hostile-test-key-0123456789"
POLL = "0.3"
RSS_LIMIT_MB = 150
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
Labelled = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextmanager
def exporter_for(api: HostileApi, jobs: list[str], **settings: str) -> Iterator[DrainedExporterProcess]:
    """The real exporter polling the hostile API every 0.3 s, its request budget lifted (the key is
    API_KEY unless `api_key_file` is given)."""
    with HostileServer(api) as server:
        env = {
            "CKPT_EXPORTER_API_BASE_URL": server.base_url,
            **({} if "api_key_file" in settings else {"CKPT_EXPORTER_API_KEY": API_KEY}),
            "CKPT_EXPORTER_JOBS": ",".join(jobs),
            "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": POLL,
            "CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "1000",
            **{f"CKPT_EXPORTER_{name.upper()}": value for name, value in settings.items()},
        }
        exporter = DrainedExporterProcess(env)
        try:
            yield exporter
        finally:
            output = exporter.stop()
            assert API_KEY not in output


def samples(families: Any, names: tuple[str, ...]) -> Labelled:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
        if sample.name in names
    }


def try_samples(exporter: DrainedExporterProcess, names: tuple[str, ...]) -> Labelled:
    """The samples of /metrics (text format), or {} while it does not answer or does not parse."""
    try:
        return samples(parse_text(exporter.metrics()), names)
    except (httpx.TransportError, ValueError):
        return {}


def by_job(found: Labelled, name: str) -> dict[str, float]:
    return {dict(labels)["job_id"]: value for (n, labels), value in found.items() if n == name}


def error_reasons(exporter: DrainedExporterProcess, job_id: str) -> dict[str, float]:
    found = try_samples(exporter, ("ckpt_exporter_api_errors_total",))
    return {
        dict(labels)["reason"]: value
        for (_, labels), value in found.items()
        if dict(labels)["job_id"] == job_id
    }


def log_lines(exporter: DrainedExporterProcess, needle: str) -> list[str]:
    return [line for line in exporter.output_so_far().split("\n") if needle in line]


# -- 1. the exposition is valid whatever the API sends --------------------------------------------


HOSTILE_JOB = "ftjob-hostile"
DISCOVERED = hostile_text("ftjob-discovered")
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
    }
    expected[("openai_fine_tuning_job_info", frozenset(info.items()))] = 1.0
    status = {"job_id": HOSTILE_JOB, "status": document["status"]}
    expected[("openai_fine_tuning_job_status", frozenset(status.items()))] = 1.0
    for level in ("info", "warn", "error", hostile_text("level")):
        labels = {"job_id": HOSTILE_JOB, "level": level}
        value = 1.0 if level == hostile_text("level") else 0.0
        expected[("openai_fine_tuning_job_events_total", frozenset(labels.items()))] = value
    discovered = {"job_id": DISCOVERED, "model": api.jobs[DISCOVERED].document["model"]}
    discovered |= {"fine_tuned_model": "", "suffix": "", "account": "default"}
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
    binary = require_tool("prometheus")
    api = HostileApi()
    job_id = "ftjob-cr-hash"
    forged = "ftckpt-1\r# HELP forged x\r# TYPE forged gauge\rforged 1\r"
    api.add_job(job_id).checkpoints.extend([checkpoint(job_id, 1, id=forged), checkpoint(job_id, 2)])
    with exporter_for(api, [job_id]) as exporter:
        exporter.wait_ready()
        prometheus = PrometheusProcess(binary, tmp_path, exporter.port, job_name="hostile")
        try:
            assert wait_for(prometheus.ready, 30, 0.2), "prometheus did not become ready"
            # Ten scrapes or more, and the target was up at every one of them.
            assert wait_for(lambda: sum(prometheus.vector("count_over_time(up[1m])").values()) >= 10, 60, 0.5)
            target = frozenset({("job", "hostile"), ("instance", f"127.0.0.1:{exporter.port}")})
            assert prometheus.vector("min_over_time(up[1m])") == {target: 1.0}
            info = prometheus.vector(f'openai_fine_tuning_checkpoint_info{{job_id="{job_id}"}}')
            assert {dict(labels)["checkpoint_id"] for labels in info} == {forged, f"ftckpt-{job_id}-2"}
        finally:
            prometheus.stop()


# -- 2. the decoded body is bounded whatever the encoding layers ----------------------------------


HEALTHY = "ftjob-healthy"


def healthy_job(api: HostileApi) -> None:
    job = api.add_job(HEALTHY)
    job.checkpoints.extend(checkpoint(HEALTHY, step) for step in (1, 2, 3))
    job.events.append(event(1))


def healthy_exported(exporter: DrainedExporterProcess) -> bool:
    found = try_samples(exporter, ("openai_fine_tuning_job_latest_step", "ckpt_exporter_job_up"))
    return (
        by_job(found, "openai_fine_tuning_job_latest_step").get(HEALTHY) == 3.0
        and by_job(found, "ckpt_exporter_job_up").get(HEALTHY) == 1.0
    )


def test_gzip_bombs_keep_memory_bounded() -> None:
    """1 GiB of zeros in two gzip layers (under 3 KB on the wire) and in one (1 MB)."""
    api = HostileApi()
    healthy_job(api)
    for job_id in ("ftjob-bomb-stacked", "ftjob-bomb-events", "ftjob-bomb-single"):
        api.add_job(job_id).checkpoints.append(checkpoint(job_id, 1))
    api.answers[("checkpoints", "ftjob-bomb-stacked")] = gzip_bomb_answer(1 << 30, layers=2)
    api.answers[("events", "ftjob-bomb-events")] = gzip_bomb_answer(1 << 30, layers=2)
    api.answers[("checkpoints", "ftjob-bomb-single")] = gzip_bomb_answer(1 << 30, layers=1)
    jobs = [HEALTHY, "ftjob-bomb-stacked", "ftjob-bomb-events", "ftjob-bomb-single"]
    with exporter_for(api, jobs) as exporter:
        wanted = {
            "ftjob-bomb-stacked": "checkpoints",
            "ftjob-bomb-events": "events",
            "ftjob-bomb-single": "checkpoints",
        }
        # Five polls of each bomb at least: a bound that held once holds every time.
        assert wait_for(lambda: all(api.count(e, j) >= 5 for j, e in wanted.items()), 60), (
            f"peak RSS {peak_rss_mb(exporter.proc.pid):.0f} MB",
            exporter.output_so_far()[-3000:],
        )
        peak = peak_rss_mb(exporter.proc.pid)
        assert peak < RSS_LIMIT_MB, f"peak RSS {peak:.0f} MB"
        assert wait_for(lambda: healthy_exported(exporter), 10)
        assert error_reasons(exporter, "ftjob-bomb-stacked").keys() == {"bad_encoding"}
        assert error_reasons(exporter, "ftjob-bomb-events").keys() == {"bad_encoding"}
        assert error_reasons(exporter, "ftjob-bomb-single").keys() == {"too_large"}
        up = by_job(try_samples(exporter, ("ckpt_exporter_job_up",)), "ckpt_exporter_job_up")
        assert up == {
            HEALTHY: 1.0,
            "ftjob-bomb-stacked": 0.0,
            "ftjob-bomb-events": 0.0,
            "ftjob-bomb-single": 0.0,
        }
        # The events bomb leaves the job's checkpoints exported.
        latest = try_samples(exporter, ("openai_fine_tuning_job_latest_step",))
        assert by_job(latest, "openai_fine_tuning_job_latest_step") == {
            HEALTHY: 3.0,
            "ftjob-bomb-events": 1.0,
        }
        for job_id, reason in (
            ("ftjob-bomb-stacked", "bad_encoding"),
            ("ftjob-bomb-single", "too_large"),
        ):
            assert len(log_lines(exporter, f"job {job_id}: poll failed ({reason})")) == 1, (
                exporter.output_so_far()
            )


# -- 3. bounds on what the API can make the exporter hold, and walks that end ---------------------


def long_model(job_id: str, step: int) -> str:
    return f"ft:gpt-4o-mini:org:{'x' * 160}:{job_id}:ckpt-step-{step}"


def test_endless_lists_are_bounded_and_the_valid_data_stays_exported() -> None:
    api = HostileApi()
    healthy_job(api)
    events_job, checkpoints_job = "ftjob-endless-events", "ftjob-endless-checkpoints"
    api.add_job(events_job).checkpoints.append(checkpoint(events_job, 1))
    api.add_job(checkpoints_job).events.append(event(1))
    # Oldest first, 1 KB each: a walk that kept them all would hold a gigabyte in 10,000 pages.
    api.answers[("events", events_job)] = endless(lambda n: event(n, message="m" * 1000))
    api.answers[("checkpoints", checkpoints_job)] = endless(
        lambda n: checkpoint(
            checkpoints_job, n + 1, fine_tuned_model_checkpoint=long_model(checkpoints_job, n + 1)
        )
    )
    jobs = [HEALTHY, events_job, checkpoints_job]
    expected_reasons = {events_job: {"too_many_pages"}, checkpoints_job: {"too_many_checkpoints"}}
    with exporter_for(api, jobs) as exporter:

        def bounded() -> bool:
            return all(error_reasons(exporter, j).keys() == r for j, r in expected_reasons.items())

        assert wait_for(bounded, 60), (peak_rss_mb(exporter.proc.pid), exporter.output_so_far()[-3000:])
        # Three more polls of each: the bounds hold every time, and are logged once.
        events_reads, checkpoints_reads = (
            api.count("events", events_job),
            api.count("checkpoints", checkpoints_job),
        )
        assert wait_for(
            lambda: (
                api.count("events", events_job) >= events_reads + 150
                and api.count("checkpoints", checkpoints_job) >= checkpoints_reads + 3
            ),
            60,
        )
        peak = peak_rss_mb(exporter.proc.pid)
        assert peak < RSS_LIMIT_MB, f"peak RSS {peak:.0f} MB"
        found = try_samples(exporter, ("openai_fine_tuning_job_latest_step", "ckpt_exporter_job_up"))
        assert by_job(found, "openai_fine_tuning_job_latest_step") == {
            HEALTHY: 3.0,
            events_job: 1.0,
            checkpoints_job: 1000.0,  # the first MAX_CHECKPOINTS of the list
        }
        assert by_job(found, "ckpt_exporter_job_up") == {HEALTHY: 1.0, events_job: 1.0, checkpoints_job: 1.0}
        assert all(error_reasons(exporter, j).keys() == r for j, r in expected_reasons.items())
        for job_id, reasons in expected_reasons.items():
            (reason,) = reasons
            logged = [line for line in log_lines(exporter, f"job {job_id}: ") if f"({reason})" in line]
            assert len(logged) == 1, exporter.output_so_far()[-3000:]


def cycle_job(api: HostileApi, job_id: str) -> dict[str, Any]:
    """A finished job that matches discovery's filter, with no checkpoints."""
    return api.add_job(job_id, status="succeeded", finished_at=CREATED_AT, metadata={"team": "ml"}).document


def test_a_cursor_cycle_ends_every_walk_of_the_jobs_listing() -> None:
    """A -> B -> A: the status refresh's walks and discovery's each stop at the cursor seen before."""
    api = HostileApi()
    for job_id in ("ftjob-status-1", "ftjob-status-2"):  # two jobs: their statuses come from the listing
        api.add_job(job_id).checkpoints.append(checkpoint(job_id, 1))
    first, second = cycle_job(api, "ftjob-cycle-a"), cycle_job(api, "ftjob-cycle-b")
    api.answers[("jobs", "")] = cursor_cycle([first], [second])
    jobs = ["ftjob-status-1", "ftjob-status-2"]
    with exporter_for(api, jobs, discover="true", discovery_metadata='{"team": "ml"}') as exporter:
        assert wait_for(lambda: len(api.listing_walks(filtered=False)) >= 4, 30), exporter.output_so_far()[
            -3000:
        ]
        assert wait_for(lambda: len(api.listing_walks(filtered=True)) >= 3, 30), exporter.output_so_far()[
            -3000:
        ]
        cycle = [None, "ftjob-cycle-a", "ftjob-cycle-b"]
        for filtered in (False, True):
            walks = api.listing_walks(filtered)
            assert walks[:-1] == [cycle] * (len(walks) - 1)  # the last may still be on its way
        # The jobs found before the loop are watched; the configured ones are read one by one.
        found = try_samples(exporter, ("openai_fine_tuning_job_latest_step", "ckpt_exporter_job_up"))
        expected_up = dict.fromkeys([*jobs, "ftjob-cycle-a", "ftjob-cycle-b"], 1.0)
        assert wait_for(
            lambda: (
                by_job(try_samples(exporter, ("ckpt_exporter_job_up",)), "ckpt_exporter_job_up")
                == expected_up
            ),
            10,
        )
        assert by_job(found, "openai_fine_tuning_job_latest_step") == {
            "ftjob-status-1": 1.0,
            "ftjob-status-2": 1.0,
        }
        assert len(log_lines(exporter, "jobs listing failed (pagination_loop)")) == 1, (
            exporter.output_so_far()
        )


def test_event_levels_beyond_the_bound_are_counted_not_exported() -> None:
    """Levels are label values: the three documented ones and MAX_EVENT_LEVELS - 3 others at most."""
    api = HostileApi()
    job_id = "ftjob-levels"
    job = api.add_job(job_id)
    job.checkpoints.append(checkpoint(job_id, 1))
    job.events.append(event(0))
    with exporter_for(api, [job_id]) as exporter:
        assert wait_for(lambda: api.count("events", job_id) >= 1, 20), exporter.output_so_far()
        reads = api.count("events", job_id)
        assert wait_for(lambda: api.count("events", job_id) > reads, 20)  # past the baseline read
        with api.lock:
            job.events.extend(event(n, level=f"level-{n:02d}") for n in range(1, 21))
        levels = {"info": 0.0, "warn": 0.0, "error": 0.0, **{f"level-{n:02d}": 1.0 for n in range(1, 6)}}

        def exported() -> dict[str, float]:
            found = try_samples(exporter, ("openai_fine_tuning_job_events_total",))
            return {dict(labels)["level"]: value for (_, labels), value in found.items()}

        assert wait_for(lambda: exported() == levels, 20), exported()
        assert error_reasons(exporter, job_id) == {"too_many_event_levels": 15.0}
        logged = [
            line for line in log_lines(exporter, f"job {job_id}: ") if "(too_many_event_levels)" in line
        ]
        assert len(logged) == 1, exporter.output_so_far()


def test_strings_beyond_the_bound_are_rejected_and_the_rest_exported() -> None:
    api = HostileApi()
    job_id = "ftjob-long"
    job = api.add_job(job_id)
    job.checkpoints.extend(
        [
            checkpoint(job_id, 1, id="ftckpt-" + "i" * 600),
            checkpoint(job_id, 2, fine_tuned_model_checkpoint="m" * 600),
            checkpoint(job_id, 3),
        ]
    )
    other = "ftjob-long-model"
    api.add_job(other, model="b" * 600).checkpoints.append(checkpoint(other, 1))
    with exporter_for(api, [job_id, other]) as exporter:

        def state() -> tuple[dict[str, float], dict[str, float]]:
            found = try_samples(
                exporter, ("openai_fine_tuning_job_latest_step", "openai_fine_tuning_job_status")
            )
            return by_job(found, "openai_fine_tuning_job_latest_step"), by_job(
                found, "openai_fine_tuning_job_status"
            )

        # The long checkpoints are left out; the job whose document is too long keeps polling
        # its checkpoints, its status unknown.
        assert wait_for(lambda: state() == ({job_id: 3.0, other: 1.0}, {job_id: 1.0}), 20), state()
        info = try_samples(exporter, ("openai_fine_tuning_checkpoint_info",))
        steps = {dict(labels)["step"] for (_, labels), _ in info.items() if dict(labels)["job_id"] == job_id}
        assert steps == {"3"}
        assert error_reasons(exporter, job_id).keys() == {"string_too_long"}
        assert error_reasons(exporter, other).keys() == {"string_too_long"}
        for job in (job_id, other):
            logged = [line for line in log_lines(exporter, f"job {job}: ") if "(string_too_long)" in line]
            assert len(logged) == 1, exporter.output_so_far()


# -- 10. the smaller points ------------------------------------------------------------------------


def test_line_breaks_in_api_strings_do_not_forge_log_lines() -> None:
    api = HostileApi()
    job_id = "ftjob-log"
    job = api.add_job(job_id)
    job.checkpoints.append(checkpoint(job_id, 1))
    job.events.append(event(0))
    message = "bad batch\n2026-01-01 00:00:00,000 ERROR ckpt_exporter: FORGED\rFORGED\u2028FORGED\x85FORGED"
    with exporter_for(api, [job_id]) as exporter:
        assert wait_for(lambda: api.count("events", job_id) >= 2, 20), exporter.output_so_far()
        with api.lock:
            job.events.append(event(1, level="warn", message=message))
        assert wait_for(lambda: log_lines(exporter, "warn event"), 20), exporter.output_so_far()
        [line] = log_lines(exporter, "warn event")
        output = exporter.output_so_far()
    escaped = (
        "bad batch\\n2026-01-01 00:00:00,000 ERROR ckpt_exporter: FORGED\\rFORGED\\u2028FORGED\\x85FORGED"
    )
    assert line.endswith(f"job {job_id}: warn event: {escaped}")
    # No line break of any kind is left in the log but the one that ends each record.
    assert [text for text in output.split("\n") if "FORGED" in text] == [line]
    assert not any(char in output for char in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def test_the_key_file_emptied_or_removed_while_running_is_logged_once(tmp_path: Path) -> None:
    api = HostileApi()
    job_id = "ftjob-key"
    api.add_job(job_id).checkpoints.append(checkpoint(job_id, 1))
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    with exporter_for(api, [job_id], api_key_file=str(key_file)) as exporter:

        def polls_after(count: int) -> bool:
            return api.count("checkpoints", job_id) >= count + 3

        assert wait_for(lambda: api.count("checkpoints", job_id) >= 1, 20), exporter.output_so_far()
        key_file.unlink()
        seen = api.count("checkpoints", job_id)
        assert wait_for(lambda: polls_after(seen), 20)
        key_file.write_text("")
        seen = api.count("checkpoints", job_id)
        assert wait_for(lambda: polls_after(seen), 20)
        key_file.write_text("sk-hostile-rotated-key-9876543210\n")
        assert wait_for(lambda: log_lines(exporter, "changed: using the new key"), 20), (
            exporter.output_so_far()
        )
        removed = log_lines(exporter, f"the API key file {key_file} cannot be read")
        emptied = log_lines(exporter, f"the API key file {key_file} is empty")
        output = exporter.output_so_far()
    assert len(removed) == 1, output
    assert removed[0].endswith("still using the key read before")
    assert len(emptied) == 1, output
    assert emptied[0].endswith("still using the key read before")
    assert "sk-hostile-rotated-key" not in output


# -- the soak --------------------------------------------------------------------------------------


def random_hostile_route(rng: random.Random, job_id: str, endpoint: str) -> Route:
    """Each request gets one of the hostile answers, drawn at random (seeded)."""

    def item(n: int) -> dict[str, Any]:
        if endpoint == "checkpoints":
            return checkpoint(job_id, n + 1, id=f"ftckpt-{hostile_text(str(n))}-{n}")
        return event(
            n, level=rng.choice(["info", "warn", hostile_text("level"), f"level-{n}"]), message="m" * 1000
        )

    routes: list[Route] = [
        gzip_bomb_answer(1 << 30, layers=2),
        gzip_bomb_answer(1 << 30, layers=1),
        endless(item),
        lambda query: json_answer(
            {"object": "list", "data": [item(rng.randrange(10**6))], "has_more": False}
        ),
        lambda query: Answer(200, b"\x00\xff{not json"),
        lambda query: json_answer({"error": {"message": "boom\r\n# HELP x"}}, 500),
    ]
    lock = threading.Lock()

    def route(query: Query) -> Answer:
        with lock:
            chosen = rng.choice(routes)
        return chosen(query)

    return route


@pytest.mark.slow
def test_soak_random_hostile_answers_memory_bounded_and_healthy_jobs_flow() -> None:
    rng = random.Random(20261201)
    api = HostileApi()
    healthy = [f"ftjob-soak-healthy-{i}" for i in range(4)]
    hostile = [f"ftjob-soak-hostile-{i}" for i in range(8)]
    for job_id in healthy:
        job = api.add_job(job_id)
        job.checkpoints.append(checkpoint(job_id, 1))
        job.events.append(event(0))
    for job_id in hostile:
        api.add_job(job_id).checkpoints.append(checkpoint(job_id, 1))
        for endpoint in ("checkpoints", "events", "job"):
            api.answers[(endpoint, job_id)] = random_hostile_route(rng, job_id, endpoint)
    first, second = job_document("ftjob-soak-cycle-a"), job_document("ftjob-soak-cycle-b")
    api.answers[("jobs", "")] = cursor_cycle([first], [second])
    with exporter_for(api, [*healthy, *hostile]) as exporter:
        for step in range(2, 22):  # a new checkpoint on every healthy job, 20 times over
            with api.lock:
                for job_id in healthy:
                    api.jobs[job_id].checkpoints.append(checkpoint(job_id, step))

            def flowing(step: int = step) -> bool:
                found = try_samples(exporter, ("openai_fine_tuning_job_latest_step",))
                latest = by_job(found, "openai_fine_tuning_job_latest_step")
                return all(latest.get(job_id) == float(step) for job_id in healthy)

            assert wait_for(flowing, 30), (step, exporter.output_so_far()[-3000:])
            assert exporter.proc.poll() is None
        peak = peak_rss_mb(exporter.proc.pid)
        up = by_job(try_samples(exporter, ("ckpt_exporter_job_up",)), "ckpt_exporter_job_up")
    assert peak < RSS_LIMIT_MB, f"peak RSS {peak:.0f} MB"
    assert {job_id: up[job_id] for job_id in healthy} == dict.fromkeys(healthy, 1.0)
