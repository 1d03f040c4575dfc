"""Issue 12 point 10 (the exporter's side of it), and the soak with random hostile answers, against the
real exporter process and tests/hostile_api.py.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.hostile_api import (
    Answer,
    HostileApi,
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
)
from tests.hostile_run import (
    API_KEY,
    RSS_LIMIT_MB,
    by_job,
    exporter_for,
    log_lines,
    peak_rss_mb,
    try_samples,
)

pytestmark = pytest.mark.integration


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
    # Memory is bounded by the exporter's own (about 60 MB) plus 8 MiB per body in flight: at most
    # max_concurrency of them (docs/operations.md, Bounds); four leave the bound well apart from 150 MB.
    with exporter_for(api, [*healthy, *hostile], max_concurrency="4") as exporter:
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
