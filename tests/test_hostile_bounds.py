"""Issue 12 points 2 and 3, against the real exporter process and tests/hostile_api.py: the decoded body
is bounded whatever the encoding layers; lists that never end, cursor cycles, too many levels and
over-long strings are bounded; each bound hit is a reason counted and logged once, and the valid
data stays exported.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import DrainedExporterProcess, wait_for
from tests.hostile_api import (
    CREATED_AT,
    HostileApi,
    checkpoint,
    cursor_cycle,
    endless,
    event,
    gzip_bomb_answer,
)
from tests.hostile_run import (
    RSS_LIMIT_MB,
    by_job,
    error_reasons,
    exporter_for,
    log_lines,
    peak_rss_mb,
    try_samples,
)

pytestmark = pytest.mark.integration


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
            checkpoints_job,
            n + 1,
            id=f"ftckpt-endless-{n}",
            fine_tuned_model_checkpoint=long_model(checkpoints_job, n + 1),
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
