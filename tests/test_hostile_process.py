"""Hostile answers against the real exporter process: what they do to job_up, readiness and the
rest of the data (issue 12, points 4, 5, 6 and 8).

The API is tests/hostile_api.HostileApi, its answers raw JSON text written here, valid or not. A
route left unset answers as the API would for a job nobody added: the listing is empty, the job 404.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers import parse_samples, wait_for
from tests.hostile_api import HostileApi, raw, raw_checkpoint, raw_job, raw_page
from tests.hostile_run import exporter_for

pytestmark = pytest.mark.integration


def by_job(text: str, name: str) -> dict[str, float]:
    return {dict(labels)["job_id"]: value for (_, labels), value in parse_samples(text, name).items()}


def errors(text: str) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["job_id"], dict(labels)["reason"]): value
        for (_, labels), value in parse_samples(text, "ckpt_exporter_api_errors_total").items()
    }


def test_values_no_float_or_utf8_can_hold_are_counted_and_the_rest_of_the_job_is_exported() -> None:
    """Point 4: an integer beyond float range, a lone surrogate, a cursor too long for a URL, a
    poisoned document in the listing."""
    huge, surrogate = "1" + "0" * 400, '"\\ud800"'
    api = HostileApi()
    # ftjob-c's entry in the listing has trained_tokens beyond any float: skipped, the rest kept.
    poisoned = raw_job("ftjob-c").replace('"created_at": 1', f'"trained_tokens": {huge}, "created_at": 1')
    api.answers[("jobs", "")] = raw_page(raw_job("ftjob-a"), poisoned, raw_job("ftjob-b"))
    api.answers[("job", "ftjob-c")] = raw(raw_job("ftjob-c"))
    api.answers[("checkpoints", "ftjob-a")] = raw_page(
        raw_checkpoint("ftjob-a", 10),
        raw_checkpoint("ftjob-a", 20).replace('"step_number": 20', f'"step_number": {huge}'),
        raw_checkpoint("ftjob-a", 30).replace('"ftckpt-ftjob-a-30"', surrogate),
    )
    # ftjob-b: a first page whose cursor would make the next page's URL too long to send: over
    # MAX_STRING_LENGTH, it is refused before any URL is built (string_too_long).
    api.answers[("checkpoints", "ftjob-b")] = raw_page(
        raw_checkpoint("ftjob-b", 1, checkpoint_id="c" * 70_000), has_more=True
    )
    api.answers[("checkpoints", "ftjob-c")] = raw_page(raw_checkpoint("ftjob-c", 5))
    for job_id in ("ftjob-a", "ftjob-b", "ftjob-c"):
        api.answers[("events", job_id)] = raw_page()
    with exporter_for(
        api, ["ftjob-a", "ftjob-b", "ftjob-c"], poll_interval_seconds="3600", max_retries="0"
    ) as process:
        process.wait_ready()
        expected = (
            {"ftjob-a": 1.0, "ftjob-b": 0.0, "ftjob-c": 1.0},
            {("ftjob-a", "invalid_checkpoint"): 2.0, ("ftjob-b", "string_too_long"): 1.0},
            {("ftjob-a", "10"), ("ftjob-c", "5")},
            {"ftjob-a", "ftjob-b", "ftjob-c"},
        )

        def state() -> tuple[object, ...]:
            text = process.metrics()
            train_loss = parse_samples(text, "openai_fine_tuning_checkpoint_train_loss")
            return (
                by_job(text, "ckpt_exporter_job_up"),
                errors(text),
                {(dict(labels)["job_id"], dict(labels)["step"]) for (_, labels) in train_loss},
                set(by_job(text, "openai_fine_tuning_job_status")),
            )

        assert wait_for(lambda: state() == expected, 10), state()
    output = process.output
    assert "Traceback" not in output, output
    assert "c" * 1000 not in output
    assert (
        "jobs listing: ignored an invalid job (trained_tokens: Input should be less than or equal to"
        in output
    )


def test_a_queued_job_whose_checkpoints_read_failed_is_up_once_its_status_reads_succeed() -> None:
    """Point 5: job_up is 1 for a queued job whose status reads succeed, whatever came before."""
    api = HostileApi()
    api.answers[("job", "ftjob-q")] = raw(raw_job("ftjob-q", status="queued"))
    api.answers[("checkpoints", "ftjob-q")] = raw('{"error": {"message": "down"}}', status=500)
    with exporter_for(api, ["ftjob-q"], poll_interval_seconds="0.3", max_retries="0") as process:
        process.wait_ready()
        # The first tick reads the checkpoints before the status says queued: that read fails.
        assert wait_for(lambda: api.count("job", "ftjob-q") >= 3, 10)
        text = process.metrics()
        assert by_job(text, "ckpt_exporter_job_up") == {"ftjob-q": 1.0}
        assert by_job(text, "ckpt_exporter_job_held") == {"ftjob-q": 0.0}
        assert errors(text) == {("ftjob-q", "http_500"): 1.0}
        assert api.count("checkpoints", "ftjob-q") == 1  # queued: never read again


def test_a_429_holds_every_job_of_the_account_shown_as_held_and_nothing_is_sent_meanwhile() -> None:
    """Points 5 and 8: the account's hold, its cap, its log line; job_held 1 and job_up 0."""
    api = HostileApi()
    api.answers[("jobs", "")] = raw_page(raw_job("ftjob-a"), raw_job("ftjob-b"))
    limited = '{"error": {"message": "Rate limit reached for requests"}}'
    api.answers[("checkpoints", "ftjob-a")] = raw(limited, status=429, **{"Retry-After": "1e9"})
    api.answers[("events", "ftjob-a")] = raw_page()
    api.answers[("checkpoints", "ftjob-b")] = raw_page(raw_checkpoint("ftjob-b", 1))
    api.answers[("events", "ftjob-b")] = raw_page()
    with exporter_for(api, ["ftjob-a", "ftjob-b"], poll_interval_seconds="0.3", max_retries="0") as process:
        process.wait_ready()
        held = {"ftjob-a": 1.0, "ftjob-b": 1.0}
        assert wait_for(lambda: by_job(process.metrics(), "ckpt_exporter_job_held") == held, 10)
        sent = api.total()
        time.sleep(2)  # six ticks
        text = process.metrics()
        assert by_job(text, "ckpt_exporter_job_up") == {"ftjob-a": 0.0, "ftjob-b": 0.0}
        assert by_job(text, "ckpt_exporter_job_held") == held
        assert errors(text) == {("ftjob-a", "http_429"): 1.0}
        assert api.total() == sent
    output = process.output
    lines = [line for line in output.splitlines() if "holding every request" in line]
    assert len(lines) == 1, output
    assert lines[0].endswith(
        "account default: HTTP 429 asked to wait 1e+09s: holding every request of the account for 600s"
    )


@pytest.mark.parametrize("listing_status", [403, 500])
def test_ready_once_the_configured_job_and_discovery_are_attempted_whatever_the_listing_says(
    listing_status: int,
) -> None:
    """Point 6: a listing that answers 403 or 500 does not keep the pod from being Ready."""
    api = HostileApi()
    api.answers[("jobs", "")] = raw('{"error": {"message": "no"}}', status=listing_status)
    api.answers[("job", "ftjob-a")] = raw(raw_job("ftjob-a"))
    api.answers[("checkpoints", "ftjob-a")] = raw_page(raw_checkpoint("ftjob-a", 1))
    api.answers[("events", "ftjob-a")] = raw_page()
    with exporter_for(
        api, ["ftjob-a"], poll_interval_seconds="0.5", discover="true", max_retries="0"
    ) as process:
        process.wait_ready()
        assert api.count("jobs") >= 1
        assert by_job(process.metrics(), "ckpt_exporter_job_up") == {"ftjob-a": 1.0}


def test_a_job_document_that_carries_another_id_is_not_applied() -> None:
    """Point 7: a single-job document must be about the job asked for; counted at every poll,
    logged once while it recurs."""
    api = HostileApi()
    api.answers[("job", "ftjob-a")] = raw(raw_job("ftjob-other", status="succeeded"))
    api.answers[("checkpoints", "ftjob-a")] = raw_page(raw_checkpoint("ftjob-a", 1))
    with exporter_for(api, ["ftjob-a"], poll_interval_seconds="0.2", max_retries="0") as process:
        process.wait_ready()
        assert wait_for(lambda: errors(process.metrics()).get(("ftjob-a", "wrong_job"), 0) >= 3, 10)
        assert parse_samples(process.metrics(), "openai_fine_tuning_job_status") == {}
    output = process.output
    line = (
        "job ftjob-a: ignored its job document (wrong_job): the API answered with another job's "
        "document ('ftjob-other') (counted; logged once while it recurs)"
    )
    assert output.count(line) == 1, output


def test_a_job_whose_refresh_waits_out_the_account_s_rate_limit_pause_is_shown_held() -> None:
    """Point 5: during an x-ratelimit pause the job is held, not a healthy 1 for up to an hour."""
    api = HostileApi()
    api.answers[("job", "ftjob-a")] = raw(raw_job("ftjob-a"))
    limits = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1h"}
    api.answers[("checkpoints", "ftjob-a")] = raw_page(raw_checkpoint("ftjob-a", 1), **limits)
    api.answers[("events", "ftjob-a")] = raw_page()
    with exporter_for(api, ["ftjob-a"], poll_interval_seconds="0.3", max_retries="0") as process:
        process.wait_ready()
        state = ({"ftjob-a": 0.0}, {"ftjob-a": 1.0})

        def seen() -> tuple[dict[str, float], dict[str, float]]:
            text = process.metrics()
            return by_job(text, "ckpt_exporter_job_up"), by_job(text, "ckpt_exporter_job_held")

        assert wait_for(lambda: seen() == state, 10), seen()
        assert errors(process.metrics()) == {}
    output = process.output
    assert "pausing requests for 3.6e+03s" in output
